"""What the integration tests share: a fresh git + DVC copy of the repository on tiny params, with its own Prefect
server on 127.0.0.1 (module-scoped: each test module gets a copy of its own), and a command runner."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.conftest import commit_copy, copy_project, loopback_prefect, tiny_params


def run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: int = 2400) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def repo_copy(tmp_path_factory, tiny_lm):
    """The tracked files of this repository (plus the work tree's edits), as a fresh git + DVC repo."""
    dest = tmp_path_factory.mktemp("repo")
    copy_project(dest)
    params = tiny_params(limit=6)
    params["judge_lm"]["model_path"] = str(tiny_lm)
    params["sample"]["model_path"] = str(tiny_lm)
    (dest / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PREFECT_HOME": str(dest / ".prefect"), "MLFLOW_TRACKING_URI": f"sqlite:///{dest / 'mlflow.db'}",
           "DEEPPRUNE_MLFLOW_ARTIFACTS": str(dest / "mlartifacts"), "PYTHONPATH": str(dest)}
    env.pop("DEEPPRUNE_PARENT_RUN_ID", None)
    commit_copy(dest, env)
    with loopback_prefect(dest, env):
        yield dest, env


def stop(proc: subprocess.Popen | None) -> None:
    if proc is None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


@contextlib.contextmanager
def dask_cluster(cwd: Path, env: dict[str, str], workers: int = 2) -> Iterator[str]:
    """A real Dask cluster on 127.0.0.1 as `make dask-cluster` starts one: a scheduler process and a worker process
    with `workers` single-threaded worker processes, all stopped on exit (also when the test fails). Yields the
    scheduler's address."""
    pytest.importorskip("distributed", reason="the team extra is not installed: pip install -e '.[team]'")
    from deepprune.services import free_port

    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    bin_dir = Path(sys.executable).parent
    procs: list[subprocess.Popen] = []
    try:
        with open(cwd / "dask-scheduler.log", "w") as log:
            procs.append(subprocess.Popen([str(bin_dir / "dask"), "scheduler", "--host", "127.0.0.1", "--port",
                                           str(port), "--no-dashboard"], cwd=cwd, env=env, stdout=log,
                                          stderr=subprocess.STDOUT))
        with open(cwd / "dask-workers.log", "w") as log:
            procs.append(subprocess.Popen([str(bin_dir / "dask"), "worker", address, "--nworkers", str(workers),
                                           "--nthreads", "1", "--no-dashboard", "--host", "127.0.0.1"], cwd=cwd,
                                          env=env, stdout=log, stderr=subprocess.STDOUT))
        from distributed import Client

        with Client(address, timeout=120) as client:
            client.wait_for_workers(workers, timeout=180)
        yield address
    finally:
        for proc in reversed(procs):
            stop(proc)


@contextlib.contextmanager
def ray_cluster(cwd: Path, env: dict[str, str], cpus: int = 2) -> Iterator[str]:
    """A real Ray head as `make ray-cluster` starts one (`ray start --head --block`, `cpus` worker slots), in its own
    process group, stopped with everything it started on exit (also when the test fails). Yields the address a
    stage on this machine connects to. Ray's session files go to a short temporary folder: its socket paths must
    stay under the kernel's 107 characters, which pytest's folders exceed."""
    pytest.importorskip("prefect_ray", reason="the team extra is not installed: pip install -e '.[team]'")
    from deepprune.services import free_port, stop_process

    port = free_port()
    session = tempfile.mkdtemp(prefix="ray-")
    bin_dir = Path(sys.executable).parent
    with open(cwd / "ray-head.log", "w") as log:
        proc = subprocess.Popen([str(bin_dir / "ray"), "start", "--head", "--port", str(port), "--num-cpus", str(cpus),
                                 "--include-dashboard=false", "--disable-usage-stats", "--temp-dir", session,
                                 "--block"], cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while "Ray runtime started" not in (cwd / "ray-head.log").read_text(errors="replace"):
            assert proc.poll() is None and time.monotonic() < deadline, \
                f"the Ray head did not start:\n{(cwd / 'ray-head.log').read_text(errors='replace')[-3000:]}"
            time.sleep(1)
        yield f"127.0.0.1:{port}"
    finally:
        stop_process(proc, 60, group=True)  # Ray drains for up to 30 s on SIGTERM
        shutil.rmtree(session, ignore_errors=True)
