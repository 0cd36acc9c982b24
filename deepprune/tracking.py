"""MLflow mirroring: the only module that imports mlflow. Runs always end: FAILED on errors, KILLED on signals."""

from __future__ import annotations

import contextlib
import math
import os
import signal
import socket
import tempfile
import threading
import urllib.parse
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deepprune.services import require_answer

if TYPE_CHECKING:
    from deepprune.config import TrackingConfig


# Sweep points log from worker threads; SQLite stores reject concurrent writers ("database is locked"), so every
# write to such a store goes through this lock (each is a few milliseconds). A tracking server (MLflow on
# PostgreSQL) takes concurrent writers: there, threads write at once.
_LOCK = threading.RLock()


def _write_lock() -> contextlib.AbstractContextManager[Any]:
    """The lock a write to the current tracking store takes: _LOCK for a database or folder this process opens,
    none for a tracking server over HTTP."""
    scheme = urllib.parse.urlsplit(_mlflow().get_tracking_uri()).scheme
    return contextlib.nullcontext() if scheme in ("http", "https") else _LOCK


def _mlflow():
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow

    return mlflow


def require_store(tracking: TrackingConfig) -> None:
    """Bound MLflow's HTTP retries by params `tracking`, a variable the environment sets winning (MLflow's own
    default gives up on a closed port after 4 min 21 s), and fail now, naming the server, when MLFLOW_TRACKING_URI
    is an HTTP server that does not answer: a stage finds out before it computes, not after. Call it before the
    process's first MLflow call; it reads the URI from the environment, as MLflow does, without importing MLflow."""
    bounds = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": tracking.retries, "MLFLOW_HTTP_REQUEST_TIMEOUT": tracking.timeout_s,
              "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": tracking.backoff_factor}
    for name, value in bounds.items():
        os.environ.setdefault(name, str(value))
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if urllib.parse.urlsplit(uri).scheme in ("http", "https"):
        require_answer(uri, float(os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"]), f"the MLflow tracking server at {uri}",
                       "unset MLFLOW_TRACKING_URI to log to the project's own SQLite store (.mlflow/mlflow.db)")


def flatten(tree: Mapping[str, Any], prefix: str = "", sep: str = ".") -> dict[str, Any]:
    """Nested mapping -> flat {'a.b.c': value}."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(flatten(value, name, sep))
        else:
            out[name] = value
    return out


# MLflow's own setting for what an experiment holds (its demo sets "genai_development" the same way). MLflow 3.17's
# UI also has a GenAI / Model training switch at the top of its sidebar that wins over the tag: README, "In the UI".
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
DEFAULT_EXPERIMENT_ID = "0"
_REPAIRED: set[tuple[str, str]] = set()


def _inside(location: str, root: Path) -> bool:
    """Whether an artifact location (a path or a file: URI) lies under root."""
    parts = urllib.parse.urlsplit(location)
    if parts.scheme not in ("", "file"):
        return False
    return Path(urllib.parse.unquote(parts.path)).resolve().is_relative_to(root)


_SQL_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")  # MLflow's database stores (a '+driver' may follow)


def _sql_store(uri: str) -> bool:
    """Whether a tracking URI names a database this process opens itself (not a server, not a folder)."""
    return urllib.parse.urlsplit(uri).scheme.split("+")[0] in _SQL_SCHEMES


def keep_default_experiment(artifact_root: str | os.PathLike) -> str | None:
    """Tag the `Default` experiment (id 0, which MLflow creates with the store, its artifacts under `./mlruns` of
    whichever process made the database) with EXPERIMENT_KIND, and point it at `<artifact_root>/Default` when it
    lies elsewhere, so that no experiment of the project's own store keeps artifacts outside it. MLflow has no
    call that moves an experiment's artifact location, so this writes the column in the project's SQL store
    itself; a tracking server keeps its own root and is left alone. Runs keep the artifact URI they were created
    with. Returns the new location, if it moved."""
    if not _sql_store(_mlflow().get_tracking_uri()):
        return None  # before the imports below: MLflow's SQL layer costs a process that logs over HTTP 1.2 s
    from mlflow.store.tracking.dbmodels.models import SqlExperiment
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    from mlflow.tracking import MlflowClient
    from sqlalchemy.orm import Session

    root = Path(artifact_root).resolve()
    client = MlflowClient()
    store = client._tracking_client.store
    if not isinstance(store, SqlAlchemyStore):
        return None
    default = client.get_experiment(DEFAULT_EXPERIMENT_ID)
    _keep_kind(client, default)
    if _inside(default.artifact_location, root):
        return None
    location = (root / default.name).as_uri()
    with Session(store.engine) as session, session.begin():
        session.query(SqlExperiment).filter(SqlExperiment.experiment_id == int(DEFAULT_EXPERIMENT_ID)).update(
            {SqlExperiment.artifact_location: location})
    return location


def ensure_experiment(name: str, artifact_root: str | os.PathLike | None) -> str:
    """Experiment id for name, created with its artifacts under artifact_root (an absolute path) and tagged as a
    model-development experiment (also when it already exists); `Default` is kept under artifact_root too."""
    mlflow = _mlflow()
    client = mlflow.MlflowClient()
    if artifact_root and (key := (mlflow.get_tracking_uri(), str(artifact_root))) not in _REPAIRED:
        keep_default_experiment(artifact_root)
        _REPAIRED.add(key)
    found = client.get_experiment_by_name(name)
    if found is None:
        location = Path(artifact_root, name.replace("/", "_")).resolve().as_uri() if artifact_root else None
        return client.create_experiment(name, artifact_location=location, tags=dict([EXPERIMENT_KIND]))
    _keep_kind(client, found)
    return found.experiment_id


def _keep_kind(client: Any, experiment: Any) -> None:
    tag, kind = EXPERIMENT_KIND
    if experiment.tags.get(tag) != kind:
        client.set_experiment_tag(experiment.experiment_id, tag, kind)


class Run:
    """A thin handle on the active MLflow run: batch logging, NaN-safe metrics."""

    def __init__(self, run: Any, experiment: str, name: str, tags: Mapping[str, str]) -> None:
        self._run = run
        self.run_id: str = run.info.run_id
        self.experiment, self.name, self.tags = experiment, name, dict(tags)

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log nested params flattened ('judge.train.epochs'); values are stringified, 500 chars at most."""
        flat = {k: ("null" if v is None else str(v))[:500] for k, v in flatten(params).items()}
        mlflow = _mlflow()
        items = sorted(flat.items())
        with _write_lock():
            for start in range(0, len(items), 100):
                mlflow.log_params(dict(items[start:start + 100]))

    def log_metrics(self, metrics: Mapping[str, float | int | None], step: int | None = None) -> None:
        """Log finite numeric metrics in one batch (MLflow key charset: '/' is fine)."""
        clean = {k: float(v) for k, v in metrics.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))}
        if clean:
            with _write_lock():
                _mlflow().log_metrics(clean, step=step)

    def log_artifact(self, path: str | os.PathLike, folder: str | None = None) -> None:
        """Attach a file or directory to the run."""
        mlflow = _mlflow()
        with _write_lock():
            if Path(path).is_dir():
                mlflow.log_artifacts(str(path), artifact_path=folder)
            else:
                mlflow.log_artifact(str(path), artifact_path=folder)

    def log_texts(self, files: Mapping[str, str]) -> None:
        """Attach small text files ({name: content}) at the root of the run's artifacts, where MLflow's compare view
        looks for the files runs share. They are written to a temporary folder first, never beside any output."""
        from mlflow.tracking import MlflowClient

        with tempfile.TemporaryDirectory(prefix="deepprune-artifacts-") as tmp:
            for name, text in files.items():
                Path(tmp, name).write_text(text, encoding="utf-8")
            with _write_lock():
                MlflowClient().log_artifacts(self.run_id, tmp)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        with _write_lock():
            _mlflow().set_tags(dict(tags))


@contextlib.contextmanager
def start_run(experiment: str, run_name: str, tags: Mapping[str, str] | None = None,
              parent_run_id: str | None = None, nested: bool = False,
              artifact_root: str | os.PathLike | None = None) -> Iterator[Run]:
    """An MLflow run that ends FINISHED, FAILED (exception) or KILLED (SIGTERM/SIGINT), never left RUNNING."""
    mlflow = _mlflow()
    all_tags = dict(tags or {})
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    with _LOCK:  # get-or-create of the experiment: one thread at a time, on every store
        exp_id = ensure_experiment(experiment, artifact_root)
        active = mlflow.start_run(experiment_id=exp_id, run_name=run_name, tags=all_tags, nested=nested)
    previous: dict[int, Any] = {}
    received: list[int] = []

    def _killed(signum: int, frame: Any) -> None:
        received.append(signum)
        mlflow.end_run(status="KILLED")
        handler = previous.get(signum)
        if callable(handler):
            handler(signum, frame)
        raise SystemExit(128 + signum)

    if not nested:
        with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, _killed)
    try:
        yield Run(active, experiment, run_name, all_tags)
    except BaseException:
        with _write_lock():
            mlflow.end_run(status="FAILED")
        raise
    else:
        if received:
            # the handler ran, but its exception was lost: raised while Python ran a finalizer or weakref callback
            # (a garbage-collected SQLAlchemy class, say), it is printed as "Exception ignored" and the body goes
            # on. The signal still ends the run: not FINISHED, and the stage exits as signalled.
            with _write_lock():
                mlflow.end_run(status="KILLED")
            raise SystemExit(128 + received[0])
        with _write_lock():
            mlflow.end_run(status="FINISHED")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def process_tags() -> dict[str, str]:
    """Which process a run belongs to, so that a later run can tell a hard-killed one from a live one."""
    return {"host": socket.gethostname(), "pid": str(os.getpid())}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def abandoned(owner: Mapping[str, str]) -> bool:
    """Whether the process that `owner` (a run's process_tags) names is gone: it ran on this host and its pid is
    free. A run on another host, or with no such tags, is never taken for abandoned."""
    pid = owner.get("pid", "")
    return owner.get("host") == socket.gethostname() and pid.isdigit() and not _alive(int(pid))


def fail_abandoned_runs(experiment: str, tags: Mapping[str, str]) -> list[str]:
    """Mark FAILED every RUNNING run of the experiment with these tags whose process (process_tags) is gone on this
    host: a SIGKILL gives a run no chance to end itself. Returns the ids it marked."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    with _write_lock():
        found = client.get_experiment_by_name(experiment)
        if found is None:
            return []
        where = " and ".join([*(f"tags.{k} = '{v}'" for k, v in tags.items()), "attributes.status = 'RUNNING'"])
        runs = client.search_runs([found.experiment_id], filter_string=where, max_results=1000)
        marked = [run.info.run_id for run in runs if abandoned(run.data.tags)]
        for run_id in marked:
            client.set_terminated(run_id, status="FAILED")
    return marked


def register_model(run: Run, artifact_path: str, name: str, tags: Mapping[str, str] | None = None) -> str:
    """Register a run's artifact as a new version of model `name` (created on first use); returns the version."""
    mlflow = _mlflow()
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code):
            raise
    source = f"{mlflow.get_run(run.run_id).info.artifact_uri}/{artifact_path}"
    version = client.create_model_version(name, source=source, run_id=run.run_id, tags=dict(tags or {}))
    return str(version.version)
