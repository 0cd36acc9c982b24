"""Where a stage's independent cells run (params `cluster`): threads of the stage process, or the workers of a Dask or
Ray cluster through Prefect's own integrations (prefect-dask, prefect-ray). The cells are sweep points, ablation
truncations and transfer (train, test) pairs. A cell is one `run_cell` task: it receives small things (names,
params, the stage's `Placement`) and reads its inputs by path on the worker (`read_once`), never large arrays
pickled per task; it calls `enter` first, so that a worker process computes and logs exactly as the stage process
would. A cell's function lives in an importable module (tasks/, or a flow module imported by name), so that a
worker imports it instead of unpickling a copy of a `__main__` module's globals."""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import socket
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from prefect import task
from prefect.task_runners import ThreadPoolTaskRunner

from deepprune.compute import fix_threads
from deepprune.config import ClusterConfig, TrackingConfig
from tasks import NO_CACHE

T = TypeVar("T")

_INTEGRATIONS = {"dask": ("prefect_dask", "DaskTaskRunner", "prefect-dask (pip install -e '.[team]')"),
                 "ray": ("prefect_ray", "RayTaskRunner", "prefect-ray (pip install -e '.[team]')")}


def make_task_runner(cfg: ClusterConfig) -> Any:
    """The Prefect task runner params `cluster` names: threads (default); a running Dask scheduler or Ray head at
    `address`; or, with no address, a local cluster of `max_workers` single-threaded processes for the stage."""
    if cfg.task_runner == "threads":
        return ThreadPoolTaskRunner(max_workers=cfg.max_workers)
    module, cls, package = _INTEGRATIONS[cfg.task_runner]
    if importlib.util.find_spec(module) is None:
        raise ImportError(f"params cluster.task_runner {cfg.task_runner!r} needs {package}, which is not installed "
                          f"(or set cluster.task_runner: threads)")
    runner = getattr(importlib.import_module(module), cls)
    if cfg.task_runner == "dask":
        if cfg.address:
            return runner(address=cfg.address)
        return runner(cluster_kwargs={"n_workers": cfg.max_workers, "threads_per_worker": 1, "processes": True,
                                      "dashboard_address": None})
    if cfg.address:
        return runner(address=cfg.address)
    return runner(init_kwargs={"num_cpus": cfg.max_workers, "include_dashboard": False})


@dataclass(frozen=True)
class Placement:
    """What a worker needs to run a stage's cell as the stage process would: the project root the stage reads its
    inputs under, the torch thread count (float results depend on it), and the MLflow store it logs to."""

    root: str
    threads: int
    tracking_uri: str
    tracking: TrackingConfig
    artifacts: str | None

    @classmethod
    def of_stage(cls, threads: int, tracking: TrackingConfig) -> "Placement":
        """The calling stage process's placement (its working directory is the project root)."""
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        import mlflow

        return cls(str(Path.cwd().resolve()), threads, mlflow.get_tracking_uri(), tracking,
                   os.environ.get("DEEPPRUNE_MLFLOW_ARTIFACTS"))

    def path(self, relative: str) -> Path:
        """A project path (deepprune.paths) as this worker reaches it."""
        return Path(self.root, relative)


def enter(placement: Placement) -> None:
    """Make this process compute and log as the stage's own: a no-op in the stage process (threads runner), the
    stage's settings in a cluster worker. A worker that cannot see the project fails the cell, naming itself."""
    if not Path(placement.root, "params.yaml").is_file():
        raise RuntimeError(f"cluster worker on {socket.gethostname()} (pid {os.getpid()}) cannot see the project at "
                           f"{placement.root}: run workers where the stage's project directory is reachable at the "
                           f"same path (the same machine, or a shared filesystem)")
    fix_threads(placement.threads)
    if placement.artifacts:
        os.environ["DEEPPRUNE_MLFLOW_ARTIFACTS"] = placement.artifacts
    if os.environ.get("MLFLOW_TRACKING_URI") != placement.tracking_uri:
        from deepprune.tracking import require_store

        os.environ["MLFLOW_TRACKING_URI"] = placement.tracking_uri
        require_store(placement.tracking)
        import mlflow

        mlflow.set_tracking_uri(placement.tracking_uri)


@task(cache_policy=NO_CACHE)
def run_cell(cell: Callable[..., T], placement: Placement, **kwargs: Any) -> T:
    """One independent cell of a stage (a sweep point, an ablation truncation, a transfer pair), where the task runner
    put it: `cell(placement=placement, **kwargs)` after `enter(placement)`."""
    enter(placement)
    return cell(placement=placement, **kwargs)


_READ: OrderedDict[str, tuple[Any, Any]] = OrderedDict()  # key -> (the files' stats when read, the value)
_KEY_LOCKS: dict[str, threading.Lock] = {}
_READ_LOCK = threading.Lock()  # guards the two dicts, never held while reading
_READ_KEEP = 8  # this many inputs at once (a transfer stage reads every corpus, and the encoder)


def read_once(placement: Placement, what: Sequence[Any], files: Sequence[str], read: Callable[[], T]) -> T:
    """`read()`, once per process for the same `what` (names and settings), again when one of the project `files`
    has changed since (size, times, inode: a long-lived worker never serves a rerun stale inputs, and holds one copy
    of each input, not one per rerun): the stage process in threads, each cluster worker once. Cells of one process
    wait for the first read of the same input instead of repeating it, not for other inputs; the last few inputs
    are kept."""
    stats = []
    for relative in files:
        path = placement.path(relative)
        if path.exists():
            stat = path.stat()
            stats.append((relative, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino))
    key = json.dumps([placement.root, list(what)], sort_keys=True, default=str)
    with _READ_LOCK:
        lock = _KEY_LOCKS.setdefault(key, threading.Lock())
    with lock:
        with _READ_LOCK:
            found = _READ.get(key)
        if found is not None and found[0] == stats:
            value = found[1]
        else:
            value = read()
        with _READ_LOCK:
            _READ[key] = (stats, value)
            _READ.move_to_end(key)
            while len(_READ) > _READ_KEEP:
                dropped, _ = _READ.popitem(last=False)
                _KEY_LOCKS.pop(dropped, None)
        return value
