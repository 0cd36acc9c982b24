"""Warm stage commands (flows/warm.py): a stage command handed to the pipeline's warm server writes what a cold
process writes, byte for byte; runs cold, saying why, when the server could not run it as a cold process would;
and ends as a cold stage ends when it is signalled or killed, leaving no process behind."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from deepprune import paths
from deepprune.config import load_params
from flows.server import prefect_server
from flows.warm import SOCKET_ENV, warm_stages
from tests.conftest import ROOT, make_workspace, mlflow_runs

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def api_url():
    """One Prefect server for the module, as the pipeline runs one for all its stages."""
    saved = os.environ.get("PREFECT_API_URL")
    with prefect_server(load_params(ROOT / "params.yaml").tracking) as url:
        yield url
    if saved is None:
        os.environ.pop("PREFECT_API_URL", None)


@pytest.fixture
def project(tmp_path, monkeypatch, tiny_lm, api_url):
    """A tiny workspace, and the environment its stage commands get (as `dvc repro` under the pipeline)."""
    path = make_workspace(tmp_path, monkeypatch, tiny_lm)
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setenv("PREFECT_API_URL", api_url)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    return path


def _stage(stage: str, corpus: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"flows.{stage}", corpus], capture_output=True, text=True,
                          timeout=600, **kw)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _timings(project: Path, stage: str, corpus: str) -> dict:
    return json.loads((project / paths.timings(stage, corpus)).read_text())


def test_a_warm_stage_writes_what_a_cold_one_writes(project):
    assert _stage("sample", "math").returncode == 0
    cold = _stage("label", "math")
    assert cold.returncode == 0, cold.stderr[-2000:]
    outputs = [project / paths.pairs("math"), project / paths.prefixes("math")]
    cold_digests = [_digest(p) for p in outputs]
    assert _timings(project, "label", "math")["warm"] is False
    for p in outputs:
        p.unlink()

    with warm_stages(project) as socket_path:
        assert socket_path and os.environ[SOCKET_ENV] == socket_path
        started = time.time()
        warm = _stage("label", "math")
    assert warm.returncode == 0, warm.stderr[-2000:]
    assert "starting cold" not in warm.stderr
    assert [_digest(p) for p in outputs] == cold_digests
    timings = _timings(project, "label", "math")
    assert timings["warm"] is True
    # the stage's time counts from its command's start, not from the fork: the saving is measured, not hidden
    # (a process's start time is the boot time, in whole seconds, plus its start in jiffies: up to 1 s early)
    assert started - 1.0 <= timings["clock"]["process_start"] < timings["clock"]["stage_start"]
    assert SOCKET_ENV not in os.environ and not Path(socket_path).parent.exists()


def test_a_command_the_server_cannot_run_as_cold_runs_cold_and_says_why(project):
    assert _stage("sample", "math").returncode == 0
    with warm_stages(project):
        other = _stage("label", "math", env={**os.environ, "HF_HUB_CACHE": str(project / "elsewhere")})
        elsewhere = project / "copy"
        elsewhere.mkdir()
        (elsewhere / "params.yaml").write_text((project / "params.yaml").read_text())
        (elsewhere / "data").mkdir()
        (elsewhere / "data" / "raw").symlink_to(ROOT / "data" / "raw")
        moved = _stage("sample", "math", cwd=elsewhere)
        edited = ROOT / "deepprune" / "pairs.py"  # code edited mid-run: a child would run the module imported before
        times = edited.stat()
        os.utime(edited, ns=(times.st_atime_ns, times.st_mtime_ns + 1_000_000_000))
        try:
            stale = _stage("label", "math")
        finally:
            os.utime(edited, ns=(times.st_atime_ns, times.st_mtime_ns))
    assert stale.returncode == 0, stale.stderr[-2000:]
    assert "starting cold (deepprune/pairs.py changed since the warm stage server imported it)" in stale.stderr
    assert other.returncode == 0, other.stderr[-2000:]
    assert "starting cold (the warm stage server was started with other values of HF_HUB_CACHE)" in other.stderr
    assert _timings(project, "label", "math")["warm"] is False
    assert moved.returncode == 0, moved.stderr[-2000:]
    assert f"the warm stage server serves {project}, not {elsewhere}" in moved.stderr
    assert (elsewhere / paths.traces("math")).exists()


def _slow_live_sampling(project: Path) -> None:
    """The live corpus with long traces: the tiny model writes until max_tokens, long enough to be signalled."""
    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["sample"]["generation"]["max_tokens"] = 4000
    raw["sample"]["batch_size"] = 1
    (project / "params.yaml").write_text(yaml.safe_dump(raw))


def _open_run(project: Path, seconds: float = 240) -> None:
    """Wait until the stage's MLflow run is open, reading the store's file (MLflow's client would migrate a store
    the stage is creating)."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            with contextlib.closing(sqlite3.connect(f"file:{project / 'mlflow.db'}?mode=ro", uri=True)) as db:
                if db.execute("select count(*) from runs where status = 'RUNNING'").fetchone()[0]:
                    return
        except sqlite3.Error:
            pass
        time.sleep(0.5)
    raise AssertionError("the stage never opened its MLflow run")


def _children(server_pid: int) -> list[psutil.Process]:
    return [c for c in psutil.Process(server_pid).children() if c.status() != psutil.STATUS_ZOMBIE]


# a cold stage's exit code on SIGTERM and SIGINT: 130, SIGTERM being handled as Ctrl-C (flows.server)
@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 130), (signal.SIGINT, 130), (signal.SIGKILL, -9)])
def test_a_signalled_or_killed_command_ends_its_warm_child(project, sig, code):
    _slow_live_sampling(project)
    with warm_stages(project):
        server = next(p for p in psutil.Process().children()
                      if "flows.warm" in " ".join(p.cmdline()))
        command = subprocess.Popen([sys.executable, "-m", "flows.sample", "live"], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True)
        _open_run(project)
        (child,) = _children(server.pid)
        os.kill(command.pid, sig)
        assert command.wait(timeout=60) == code
        child.wait(timeout=30)  # SIGKILL: the child sees its command's connection close, and stops as on SIGTERM
        assert _children(server.pid) == []
    statuses = {r.info.status for r in mlflow_runs(os.environ["MLFLOW_TRACKING_URI"], "deepprune/sample")}
    assert statuses == {"KILLED"}
    assert not psutil.pid_exists(server.pid) or psutil.Process(server.pid).status() == psutil.STATUS_ZOMBIE
