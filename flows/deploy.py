"""The pipeline as deployments on a Prefect process work pool, for a team's Prefect server (`make server`).

    python -m flows.deploy [--pool deepprune] [--limit 1]
    python -m flows.deploy --serve 4200                # and the server and a worker, until Ctrl-C (make server)
    python -m flows.deploy --ready pipeline/pipeline   # wait until a run can start (make run-on-pool)

Creates (or updates) the process work pool with a concurrency limit, and deploys the pipeline flow from this
checkout: `pipeline/pipeline` (every stage; parameters `targets`, `force`, `set_params`) and one deployment per
DVC stage, `pipeline/<stage>` (the pipeline with that stage as its target). A stage deployment is the pipeline
aimed at the stage, not the stage's flow called alone: DVC still decides what reruns and records it in dvc.lock,
and the stage flow runs appear under the pipeline run (tag `pipeline:<its name>`). A worker
(`prefect worker start --pool <pool>`) runs each flow run as a process in this checkout. `make serve` (one
process serving the pipeline, no pool) stays the single-user way.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from flows import ROOT

POOL = "deepprune"
ENTRYPOINT = "flows/pipeline.py:pipeline_flow"


def stage_names(dvc_yaml: Path = ROOT / "dvc.yaml") -> list[str]:
    """The stages of dvc.yaml, in its order (a foreach stage by its group name: `judge` runs judge@<every corpus>)."""
    return list(yaml.safe_load(dvc_yaml.read_text(encoding="utf-8"))["stages"])


def _wait_for_api(seconds: float = 120.0) -> None:
    """The server answers (`make server` deploys right after starting it)."""
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + seconds
    while True:
        try:
            with get_client(sync_client=True) as client:
                client.api_healthcheck()
                client.read_work_pools()
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def ensure_pool(pool: str, limit: int | None) -> None:
    """A process work pool named `pool` whose concurrency limit is `limit` (None: no limit)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            found = client.read_work_pool(pool)
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(name=pool, type="process", concurrency_limit=limit))
            return
        if found.type != "process":
            raise SystemExit(f"deploy: work pool {pool!r} exists with type {found.type!r}; the pipeline runs on a "
                             f"'process' pool: choose another --pool")
        client.update_work_pool(pool, WorkPoolUpdate(concurrency_limit=limit))


def deploy(pool: str = POOL, limit: int | None = 1) -> list[str]:
    """The pool, then `pipeline/pipeline` and `pipeline/<stage>` for every stage; returns the deployment names."""
    from flows.pipeline import pipeline_flow

    _wait_for_api()
    ensure_pool(pool, limit)
    source = pipeline_flow.from_source(source=str(ROOT), entrypoint=ENTRYPOINT)
    names = []
    for name, parameters in [("pipeline", {}), *((stage, {"targets": [stage]}) for stage in stage_names())]:
        source.deploy(name=name, work_pool_name=pool, parameters=parameters, build=False, push=False,
                      tags=["deepprune", f"stage:{name}"], print_next_steps=False, ignore_warnings=True,
                      description=f"dvc repro {name}" if parameters else "dvc repro: every stage")
        names.append(f"pipeline/{name}")
    return names


def _engines_answer(deployment: str) -> list[str]:
    """What a run of `deployment` needs and does not have yet (empty: it can start): the deployment, an online worker
    of its pool, the MLflow tracking server MLFLOW_TRACKING_URI names, the cluster params `cluster` names."""
    import os
    import socket
    import urllib.parse

    from prefect.client.orchestration import get_client

    from deepprune.config import load_params
    from deepprune.services import http_status

    missing = []
    try:
        with get_client(sync_client=True) as client:
            found = client.read_deployment_by_name(deployment)
            if not _online_workers(client, found.work_pool_name):
                missing.append(f"a worker of pool {found.work_pool_name!r}")
    except Exception:
        missing.append(f"deployment {deployment} on the Prefect server")
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if urllib.parse.urlsplit(uri).scheme in ("http", "https"):
        try:
            healthy = http_status(f"{uri.rstrip('/')}/health", timeout_s=2) == 200
        except (OSError, ValueError):  # nothing answers, or a malformed URL
            healthy = False
        if not healthy:
            missing.append(f"the MLflow server {uri}")
    cluster = load_params(ROOT / "params.yaml").cluster
    where = urllib.parse.urlsplit(cluster.address if "://" in (cluster.address or "") else f"//{cluster.address}")
    try:
        host, port = where.hostname, where.port
    except ValueError:  # not host:port (Ray's `auto`): the task runner says what it cannot reach
        host = port = None
    if cluster.address and host and port:
        try:
            socket.create_connection((host, port), timeout=2).close()
        except OSError:
            missing.append(f"the {cluster.task_runner} cluster at {cluster.address}")
    return missing


def wait_until_ready(deployment: str, seconds: float) -> None:
    """Until every engine a run of `deployment` needs answers (`make run-on-pool`, right after the servers were
    started); saying what it waits for, and failing with what never came."""
    deadline = time.monotonic() + seconds
    said = None
    while True:
        missing = _engines_answer(deployment)
        if not missing:
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"deploy: after {seconds:.0f} s still no {', '.join(missing)}")
        if missing != said:
            print(f"waiting for {', '.join(missing)}", flush=True)
            said = missing
        time.sleep(2)


def _online_workers(client: Any, pool: str) -> list:
    """The workers of `pool` whose heartbeat the server has now."""
    from prefect.client.schemas.filters import WorkerFilter, WorkerFilterStatus

    return client.read_workers_for_work_pool(
        pool, worker_filter=WorkerFilter(status=WorkerFilterStatus(any_=["ONLINE"])))


def _worker_online(pool: str, name: str) -> bool:
    """Whether the worker `name` of `pool` has sent the server its heartbeat (another one's, a worker of an earlier
    `make server` still marked online, does not count)."""
    from prefect.client.orchestration import get_client

    try:
        with get_client(sync_client=True) as client:
            return any(worker.name == name for worker in _online_workers(client, pool))
    except Exception:
        return False


def serve(port: int, pool: str = POOL, limit: int | None = 1) -> None:
    """`make server`, in the foreground: the Prefect server on 127.0.0.1:port (its UI calling the API on that port),
    the pool and its deployments, and a worker of the pool. Ctrl-C or SIGTERM stops the worker first: SIGINT to it
    and to each flow run it started (Prefect starts them in sessions of their own, out of the worker's group), so
    they end as on Ctrl-C while the server still answers; whatever the runs started that is still running 30 s
    after the worker has gone is killed. Then the server; SIGKILL to whatever of the worker or the server is left
    after its grace. Each runs in a session of its own with the parent-death signal set, so a `kill -9` of this
    process stops them too. Both write to this terminal."""
    import os
    import socket

    from prefect.settings import PREFECT_API_URL, temporary_settings

    from deepprune.services import TERMINAL, descendants, kill_after, service, signal_groups
    from flows.server import prefect_server_spawn

    api, spawn = prefect_server_spawn(port, TERMINAL)
    prefect = spawn["cmd"][0]
    env = {**os.environ, "PREFECT_API_URL": api}
    runs: list = []
    with service(**spawn, timeout_s=180, grace_s=15.0) as server, temporary_settings(updates={PREFECT_API_URL: api}):
        names = deploy(pool, limit)
        print(f"work pool {pool!r} (process, concurrency limit {limit or 'none'}): {', '.join(names)}", flush=True)
        name = f"{pool}-{socket.gethostname()}-{os.getpid()}"
        try:
            with service([prefect, "worker", "start", "--pool", pool, "--type", "process", "--name", name],
                         lambda: _worker_online(pool, name), 180, f"the worker {name!r}", TERMINAL, env,
                         grace_s=30.0, stop_signal=signal.SIGINT) as worker:
                try:
                    print(f"Prefect UI on http://127.0.0.1:{port}; the worker {name!r} runs the flow runs of pool "
                          f"{pool!r} (Ctrl-C stops both)", flush=True)
                    while server.poll() is None and worker.poll() is None:
                        time.sleep(0.5)
                    what, ended = next((what, proc) for what, proc in (("the Prefect server", server),
                                                                       ("the worker", worker)) if proc.poll() is not None)
                    raise SystemExit(f"deploy: {what} exited with {ended.returncode}; stopping the rest")
                finally:  # Prefect starts each flow run in a session of its own: the worker's group misses them
                    runs = descendants(worker.pid)  # the flow runs and all they started, while they are known
                    signal_groups(descendants(worker.pid, recursive=False), signal.SIGINT)  # Ctrl-C to each run
        finally:  # the worker has gone (or was killed): what its runs started gets a grace, then SIGKILL
            kill_after(runs, grace_s=30.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.deploy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--pool", default=POOL)
    parser.add_argument("--limit", type=int, default=1, help="flow runs the pool runs at once (0: no limit)")
    parser.add_argument("--ready", metavar="DEPLOYMENT", help="deploy nothing: wait until a run of DEPLOYMENT can "
                        "start (the deployment, a worker, the MLflow server and the cluster answer)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds --ready waits")
    parser.add_argument("--serve", type=int, metavar="PORT", help="also start the Prefect server on 127.0.0.1:PORT "
                        "and a worker of the pool, in the foreground until Ctrl-C (make server)")
    args = parser.parse_args(argv)
    if args.serve is not None:
        from flows.server import terminate_as_interrupt

        terminate_as_interrupt()  # before anything starts: a Ctrl-C from here on stops what has started
        try:
            serve(args.serve, args.pool, args.limit or None)
        except KeyboardInterrupt:
            print("stopped the worker and the Prefect server", flush=True)
        return 0
    if args.ready:
        wait_until_ready(args.ready, args.timeout)
        return 0
    names = deploy(args.pool, args.limit or None)
    print(f"work pool {args.pool!r} (process, concurrency limit {args.limit or 'none'}): {', '.join(names)}")
    print(f"start a worker: prefect worker start --pool {args.pool}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
