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

from deepprune.services import free_port, http_status, require_answer, started
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
    with servers(tracking, mlflow=False, startup_timeout_s=startup_timeout_s) as (api_url, _):
        yield api_url


@contextlib.contextmanager
def mlflow_server(startup_timeout_s: float = STARTUP_TIMEOUT_S) -> Iterator[str]:
    """The MLflow tracking URI a pipeline's stages log to. A local SQLite store (the default) is served for the
    duration of the block by one `mlflow server` on 127.0.0.1, and the stages log to it over HTTP: a stage process
    then skips MLflow's SQLAlchemy store (its import and schema check cost each process seconds, measured by
    benchmarks/bench_stage_overhead.py), and concurrent sweep points no longer queue on the SQLite file. Any other
    URI (a server the user runs) is used as it is."""
    with servers(None, mlflow=True, startup_timeout_s=startup_timeout_s) as (_, uri):
        yield uri


@contextlib.contextmanager
def servers(tracking: TrackingConfig | None, mlflow: bool = True,
            startup_timeout_s: float = STARTUP_TIMEOUT_S) -> Iterator[tuple[str | None, str | None]]:
    """prefect_server (with `tracking`) and mlflow_server (with `mlflow`) as one block, yielding (Prefect API URL,
    MLflow tracking URI): the servers to start are started at once and then waited for, so a pipeline's start-up
    costs the slower of the two, not their sum (on 2 cores, about 5 s for Prefect and 7 s for MLflow alone)."""
    plans = ([_PrefectPlan(tracking)] if tracking is not None else []) + ([_MlflowPlan()] if mlflow else [])
    with contextlib.ExitStack() as stack:
        handles = [stack.enter_context(started(**plan.spawn, timeout_s=startup_timeout_s, grace_s=10.0))
                   for plan in plans if plan.spawn]  # stopped in the reverse order, after the uses below
        for handle in handles:
            handle.wait_ready()
        found = {type(plan): stack.enter_context(plan.use()) for plan in plans}
        yield found.get(_PrefectPlan), found.get(_MlflowPlan)


def prefect_server_spawn(port: int, log_path: str | os.PathLike) -> tuple[str, dict[str, Any]]:
    """A Prefect server on 127.0.0.1:port whose UI calls the API on that port (Prefect otherwise builds the UI's API
    URL from its default port): its API URL, and the arguments of services.started / services.service."""
    api_url = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_UI_API_URL": api_url, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    cmd = [str(Path(sys.executable).parent / "prefect"), "server", "start", "--host", "127.0.0.1", "--port",
           str(port)]
    return api_url, {"cmd": cmd, "ready": lambda: healthy(api_url), "name": "the Prefect server",
                     "log_path": log_path, "env": env}


class _PrefectPlan:
    """The Prefect API a block reports to: the one PREFECT_API_URL names (checked now), or a server to start
    (`spawn`: the arguments of services.started)."""

    def __init__(self, tracking: TrackingConfig) -> None:
        from prefect.settings import PREFECT_API_REQUEST_TIMEOUT

        self.bounds = _client_bounds(tracking)
        self.spawn: dict[str, Any] | None = None
        if os.environ.get(API_ENV):
            self.api_url = os.environ[API_ENV]
            require_answer(f"{self.api_url}/health", float(self.bounds[PREFECT_API_REQUEST_TIMEOUT]),
                           f"the Prefect API at {self.api_url}",
                           "unset PREFECT_API_URL to report to a local Prefect server that the run starts and stops")
            return
        home = Path(os.environ.get("PREFECT_HOME", ROOT / ".prefect"))
        self.api_url, self.spawn = prefect_server_spawn(free_port(), home / "server.log")

    @contextlib.contextmanager
    def use(self) -> Iterator[str]:
        from prefect.settings import PREFECT_API_URL, temporary_settings

        if not self.spawn:
            with temporary_settings(updates=self.bounds):
                yield self.api_url
            return
        # Prefect read its settings when it was imported: the environment (for child processes) is not enough,
        # this process's settings must point at the server too, or its flows start a temporary server of their own
        os.environ[API_ENV] = self.api_url
        try:
            with temporary_settings(updates={**self.bounds, PREFECT_API_URL: self.api_url}):
                try:
                    yield self.api_url
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


class _MlflowPlan:
    """The MLflow URI a block's stages log to: a local SQLite store is served by an `mlflow server` to start
    (`spawn`); any other URI (a server the user runs) is used as it is."""

    def __init__(self) -> None:
        self.uri = os.environ.get(MLFLOW_ENV, "")
        self.spawn: dict[str, Any] | None = None
        if not self.uri.startswith("sqlite:"):
            self.url = self.uri
            return
        port = free_port()
        self.url = url = f"http://127.0.0.1:{port}"
        artifacts = os.environ.get("DEEPPRUNE_MLFLOW_ARTIFACTS", str(ROOT / ".mlflow" / "artifacts"))
        cmd = [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", self.uri, "--host",
               "127.0.0.1", "--port", str(port), "--workers", "1", "--artifacts-destination", artifacts]
        log = Path(self.uri.removeprefix("sqlite:///")).parent / "server.log"  # beside the store it serves
        self.spawn = {"cmd": cmd, "ready": lambda: healthy(url), "name": "the MLflow server", "log_path": log,
                      "env": {**os.environ}}

    @contextlib.contextmanager
    def use(self) -> Iterator[str]:
        if not self.spawn:
            yield self.url
            return
        os.environ[MLFLOW_ENV] = self.url
        try:
            yield self.url
        finally:
            os.environ[MLFLOW_ENV] = self.uri


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
    run and the MLflow run are closed, the server is stopped. Ctrl-C does so too in a process that started with
    SIGINT ignored (a job started with `&` by a script, or by anything started that way, CI included): Python then
    leaves SIGINT ignored, and the processes this one starts would inherit that."""
    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, interrupt)
