"""The stages whose cells fan out (sweep, ablate), on each task runner of params `cluster`, side by side: threads of
the stage process, a running Dask cluster (a scheduler and two single-threaded worker processes, as
`make dask-cluster` starts) and a running Ray head with two worker slots (`make ray-cluster`).

    python -m benchmarks.bench_cluster [--corpus date] [--stages sweep ablate] [--rounds 2] [--runners threads dask ray]

Each round runs every stage once per runner, the runners in a rotated order; it prints each runner's median wall
time per stage, its ratio to threads, and whether its outputs are the same bytes as threads' (they must be). The
stages read the project's labelled pairs and embeddings (run `make run` first) in a temporary workspace with its
own params, Prefect server and MLflow store; the project's outputs and stores are not touched. On one 2-core machine
no runner can beat threads: the figures show what a cluster costs in scheduling and in reading inputs once per
worker process, not a speed-up.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from deepprune import paths  # noqa: E402
from deepprune.config import read_params  # noqa: E402
from deepprune.services import free_port, service, stop_process  # noqa: E402

OUTPUTS = {"sweep": lambda c: [paths.sweep_results(c), paths.metrics("sweep", c)],
           "ablate": lambda c: [paths.ablate_results(c), paths.metrics("ablate", c)]}


def _workspace(corpus: str) -> Path:
    """A temporary project layout holding the corpus's labels and embeddings (copies) and the project's params."""
    ws = Path(tempfile.mkdtemp(prefix="deepprune-bench-cluster-"))
    for rel in (paths.pairs(corpus), paths.prefixes(corpus), paths.embeddings(corpus)):
        src = ROOT / rel
        if not src.exists():
            raise SystemExit(f"{src} is missing: run `make run` (or dvc repro embed@{corpus}) first")
        (ws / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, ws / rel)
    shutil.copy2(ROOT / "params.yaml", ws / "params.yaml")
    return ws


def _set_cluster(ws: Path, runner: str, address: str | None) -> None:
    params = read_params(ws / "params.yaml")
    params["cluster"] = {**params["cluster"], "task_runner": runner, "address": address}
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@contextlib.contextmanager
def _dask(ws: Path, env: dict[str, str]) -> Iterator[str]:
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    bin_dir = Path(sys.executable).parent
    log = ws / "dask.log"
    scheduler = [str(bin_dir / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"]
    with service(scheduler, lambda: _answers(port), 120, "the Dask scheduler", log, env):
        workers = subprocess.Popen([str(bin_dir / "dask"), "worker", address, "--nworkers", "2", "--nthreads", "1",
                                    "--no-dashboard", "--host", "127.0.0.1"], cwd=ws, env=env,
                                   stdout=open(ws / "dask-workers.log", "w"), stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            from distributed import Client

            with Client(address, timeout=120) as client:
                client.wait_for_workers(2, timeout=180)
            yield address
        finally:
            stop_process(workers, 30, group=True)


@contextlib.contextmanager
def _ray(ws: Path, env: dict[str, str]) -> Iterator[str]:
    port = free_port()
    session = tempfile.mkdtemp(prefix="ray-")
    cmd = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--port", str(port), "--num-cpus", "2",
           "--include-dashboard=false", "--disable-usage-stats", "--temp-dir", session, "--block"]
    log = ws / "ray.log"
    try:
        with service(cmd, lambda: "Ray runtime started" in log.read_text(errors="replace"), 180, "the Ray head", log,
                     env, grace_s=60):
            yield f"127.0.0.1:{port}"
    finally:
        shutil.rmtree(session, ignore_errors=True)


def _answers(port: int) -> bool:
    import socket

    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def _run(ws: Path, env: dict[str, str], stage: str, corpus: str) -> tuple[float, dict[str, bytes]]:
    for rel in OUTPUTS[stage](corpus):
        (ws / rel).unlink(missing_ok=True)
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", f"flows.{stage}", corpus], cwd=ws, env=env, capture_output=True,
                          text=True, timeout=3600)
    seconds = time.perf_counter() - started
    if proc.returncode:
        raise SystemExit(f"{stage}@{corpus} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return seconds, {rel: (ws / rel).read_bytes() for rel in OUTPUTS[stage](corpus)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", default="date")
    parser.add_argument("--stages", nargs="+", default=["sweep", "ablate"], choices=sorted(OUTPUTS))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--runners", nargs="+", default=["threads", "dask", "ray"], choices=["threads", "dask", "ray"])
    args = parser.parse_args(argv)
    ws = _workspace(args.corpus)
    env = {**os.environ, "PREFECT_HOME": str(ws / ".prefect"), "MLFLOW_TRACKING_URI": f"sqlite:///{ws / 'mlflow.db'}",
           "DEEPPRUNE_MLFLOW_ARTIFACTS": str(ws / "mlartifacts"), "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    env.pop("DEEPPRUNE_PARENT_RUN_ID", None)
    worker_env = {k: v for k, v in env.items() if k not in ("MLFLOW_TRACKING_URI", "DEEPPRUNE_MLFLOW_ARTIFACTS")}
    prefect_port = free_port()
    api = f"http://127.0.0.1:{prefect_port}/api"
    env["PREFECT_API_URL"] = worker_env["PREFECT_API_URL"] = api
    from flows.server import healthy

    times: dict[tuple[str, str], list[float]] = {}
    bytes_of: dict[tuple[str, str], dict[str, bytes]] = {}
    server = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(prefect_port)]
    try:
        with service(server, lambda: healthy(api), 180, "the Prefect server", ws / "prefect.log", env), \
                contextlib.ExitStack() as stack:
            addresses: dict[str, str | None] = {"threads": None}
            if "dask" in args.runners:
                addresses["dask"] = stack.enter_context(_dask(ws, worker_env))
            if "ray" in args.runners:
                addresses["ray"] = stack.enter_context(_ray(ws, worker_env))
            for round_ in range(args.rounds):
                order = args.runners[round_ % len(args.runners):] + args.runners[:round_ % len(args.runners)]
                for runner in order:
                    _set_cluster(ws, runner, addresses[runner])
                    for stage in args.stages:
                        seconds, outputs = _run(ws, env, stage, args.corpus)
                        times.setdefault((runner, stage), []).append(seconds)
                        bytes_of.setdefault((runner, stage), outputs)
                        print(f"round {round_ + 1}: {stage}@{args.corpus} on {runner}: {seconds:.1f} s", flush=True)
    finally:
        shutil.rmtree(ws, ignore_errors=True)
    print(f"\n{args.corpus}, {args.rounds} round(s), median wall seconds of the stage process (ratio to threads):")
    print(f"| stage | {' | '.join(args.runners)} | same bytes as threads |")
    print("|---|" + "---:|" * len(args.runners) + "---|")
    for stage in args.stages:
        base = statistics.median(times[("threads", stage)]) if "threads" in args.runners else None
        cells = []
        for runner in args.runners:
            med = statistics.median(times[(runner, stage)])
            cells.append(f"{med:.1f}" + (f" ({med / base:.2f}x)" if base else ""))
        same = all(bytes_of[(r, stage)] == bytes_of[(args.runners[0], stage)] for r in args.runners)
        print(f"| {stage} | {' | '.join(cells)} | {'yes' if same else 'NO'} |")


if __name__ == "__main__":
    main()
