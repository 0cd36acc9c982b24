"""The Prefect server a run reports to: one per pipeline (or per stage run outside a pipeline), on 127.0.0.1.

Prefect starts a temporary server of its own in every flow process that has no PREFECT_API_URL; a `kill -9` of
that process leaves the server running, and Ctrl-C reaches the server before the flow (one process group), which
then retries a dead API for minutes. This module starts the server itself instead:
- in its own session, so Ctrl-C in the terminal reaches the flow, which reports its state, and only then the
  server is stopped;
- with the kernel's parent-death signal (Linux PR_SET_PDEATHSIG), so it dies with the process that started it,
  however that process ends;
- stopped on exit, and reused by every stage a pipeline starts (they inherit PREFECT_API_URL).

Every server, ours or the user's, keeps its flow runs in a database that outlives it (ours: the project's, under
PREFECT_HOME, `.prefect/`), so a flow run whose process a `kill -9` ended stays RUNNING there for good unless a
later run marks it (crash_abandoned_flow_runs).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deepprune.services import free_port, http_status, require_answer, service
from deepprune.tracking import abandoned, process_tags
from flows import ROOT

if TYPE_CHECKING:
    from deepprune.config import TrackingConfig

API_ENV = "PREFECT_API_URL"
STARTUP_TIMEOUT_S = 120.0


def healthy(base_url: str) -> bool:
    """Whether `{base_url}/health` answers 200 now (the Prefect API and the MLflow server both serve it)."""
    try:
        return http_status(f"{base_url}/health", 2) == 200
    except OSError:
        return False


def _client_bounds(tracking: TrackingConfig) -> dict[Any, str]:
    """Prefect's client settings that params `tracking` bounds (Prefect's own default retries a silent API for
    minutes), a variable the environment sets winning. Exported for the processes this one starts; this process
    read its settings when it imported Prefect, so they also have to be applied as settings."""
    from prefect.settings import PREFECT_API_REQUEST_TIMEOUT, PREFECT_CLIENT_MAX_RETRIES

    bounds = {PREFECT_CLIENT_MAX_RETRIES: tracking.retries, PREFECT_API_REQUEST_TIMEOUT: tracking.timeout_s}
    return {setting: os.environ.setdefault(setting.name, str(value)) for setting, value in bounds.items()}


@contextlib.contextmanager
def prefect_server(tracking: TrackingConfig, startup_timeout_s: float = STARTUP_TIMEOUT_S) -> Iterator[str]:
    """The API URL to report to: PREFECT_API_URL when set (a pipeline's server, or the user's) and it answers, else
    a server started here for the duration of the block and stopped after it, whatever ends the block. An API that
    does not answer is an error naming it at once; one lost later fails a request after params `tracking` retries."""
    from prefect.settings import PREFECT_API_REQUEST_TIMEOUT, PREFECT_API_URL, temporary_settings

    bounds = _client_bounds(tracking)
    if os.environ.get(API_ENV):
        api_url = os.environ[API_ENV]
        require_answer(f"{api_url}/health", float(bounds[PREFECT_API_REQUEST_TIMEOUT]), f"the Prefect API at {api_url}",
                       "unset PREFECT_API_URL to report to a local Prefect server that the run starts and stops")
        with temporary_settings(updates=bounds):
            yield api_url
        return
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    home = Path(os.environ.get("PREFECT_HOME", ROOT / ".prefect"))
    env = {**os.environ, "PREFECT_UI_API_URL": api_url, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    cmd = [str(Path(sys.executable).parent / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    with service(cmd, lambda: healthy(api_url), startup_timeout_s, "the Prefect server", home / "server.log", env,
                 grace_s=10.0):
        # Prefect read its settings when it was imported: the environment (for child processes) is not enough,
        # this process's settings must point at the server too, or its flows start a temporary server of their own
        os.environ[API_ENV] = api_url
        try:
            with temporary_settings(updates={**bounds, PREFECT_API_URL: api_url}):
                try:
                    yield api_url
                finally:  # send the run's last log lines while the server still listens
                    drain_prefect_workers(events=False)
        finally:
            os.environ.pop(API_ENV, None)


def drain_prefect_workers(timeout_s: float = 5.0, events: bool = True) -> None:
    """Send what Prefect's log (and event) workers still hold, waiting up to timeout_s. Inside a running event
    loop Prefect only starts the drain and hands back a coroutine to await; it is closed unawaited (a sync caller
    cannot wait on its own loop), the drain still runs in the workers' thread."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker) if events else (APILogWorker,):
        with contextlib.suppress(Exception):
            pending = worker.drain_all(timeout=timeout_s)
            if hasattr(pending, "close"):
                pending.close()


MLFLOW_ENV = "MLFLOW_TRACKING_URI"


@contextlib.contextmanager
def mlflow_server(startup_timeout_s: float = STARTUP_TIMEOUT_S) -> Iterator[str]:
    """The MLflow tracking URI a pipeline's stages log to. A local SQLite store (the default) is served for the
    duration of the block by one `mlflow server` on 127.0.0.1, and the stages log to it over HTTP: a stage process
    then skips MLflow's SQLAlchemy store (its import and schema check cost each process seconds, measured by
    benchmarks/bench_stage_overhead.py), and concurrent sweep points no longer queue on the SQLite file. Any other
    URI (a server the user runs) is used as it is."""
    uri = os.environ.get(MLFLOW_ENV, "")
    if not uri.startswith("sqlite:"):
        yield uri
        return
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    artifacts = os.environ.get("DEEPPRUNE_MLFLOW_ARTIFACTS", str(ROOT / ".mlflow" / "artifacts"))
    cmd = [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", uri, "--host", "127.0.0.1",
           "--port", str(port), "--workers", "1", "--artifacts-destination", artifacts]
    log = Path(uri.removeprefix("sqlite:///")).parent / "server.log"  # beside the store it serves
    with service(cmd, lambda: healthy(url), startup_timeout_s, "the MLflow server", log, {**os.environ}, grace_s=10.0):
        os.environ[MLFLOW_ENV] = url
        try:
            yield url
        finally:
            os.environ[MLFLOW_ENV] = uri


def owner_tags() -> list[str]:
    """This process as flow-run tags (`host:`, `pid:`), as MLflow runs carry it (process_tags)."""
    return [f"{key}:{value}" for key, value in process_tags().items()]


def crash_abandoned_flow_runs(tags: Sequence[str]) -> list[str]:
    """Mark CRASHED every RUNNING flow run that carries all `tags` and whose process (its owner_tags) is gone from
    this host: a `kill -9` gives a flow run no chance to report its end. Returns the names it marked."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType,
                                                FlowRunFilterTags)
    from prefect.client.schemas.objects import StateType
    from prefect.states import Crashed

    running = FlowRunFilter(tags=FlowRunFilterTags(all_=list(tags)),
                            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING])))
    with get_client(sync_client=True) as client:
        runs = [run for run in client.read_flow_runs(flow_run_filter=running)
                if abandoned(dict(tag.split(":", 1) for tag in run.tags if ":" in tag))]
        for run in runs:
            client.set_flow_run_state(run.id, Crashed(message="its process is gone (killed hard); marked by the next "
                                                              "run of the same stage"), force=True)
    return [run.name for run in runs]


# Set in a warm stage child (flows/warm.py), whose parent is the warm server, not its command: it watches its
# command's connection instead.
PARENT_WATCHED_BY: str | None = None


def stop_with_parent(poll_s: float = 0.5, grace_s: float = 10.0) -> None:
    """When the process that started this one dies (`kill -9` of dvc), stop: SIGTERM to self, so flows and runs
    end as on Ctrl-C, then a hard exit if that has not ended the process within grace_s."""
    if PARENT_WATCHED_BY:
        return
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace_s)
        os._exit(128 + signal.SIGTERM)

    threading.Thread(target=watch, name="stop-with-parent", daemon=True).start()


def terminate_as_interrupt() -> None:
    """SIGTERM ends the process the way Ctrl-C does (KeyboardInterrupt): `finally` blocks run, the Prefect flow
    run and the MLflow run are closed, the server is stopped."""
    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)
