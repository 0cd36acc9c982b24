"""Stage processes end cleanly whatever ends them: SIGKILL, SIGTERM, SIGINT, or their parent (dvc) killed.

Each case starts a real stage process (`run_stage`, as every DVC cmd does) that starts its own Prefect server on
127.0.0.1, opens its MLflow run and writes part of a folder output, then ends it from outside and checks what is
left: processes, runs, and files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from flows.server import healthy
from tests.conftest import ROOT, mlflow_runs

pytestmark = pytest.mark.slow

PROBE = """
import os, sys, time
from pathlib import Path
from prefect import flow
from deepprune import paths
from flows._stage import run_stage, stage_run

@flow(name="probe", flow_run_name="probe@{corpus}")  # as every stage flow is named
def probe(corpus: str) -> None:
    with stage_run("probe", corpus, {}):
        Path(paths.judge_dir(corpus), "scores.jsonl").write_text("half")  # half of a folder output
        from prefect.settings import get_current_settings  # where this flow run really reports
        sys.stdout.write(f"STARTED {get_current_settings().api.url} {os.environ['PREFECT_API_URL']} {os.getpid()}\\n")
        sys.stdout.flush()  # not print: flows route print() to the log (PREFECT_LOGGING_LOG_PRINTS)
        time.sleep(300)

run_stage("judge", probe, "x")  # a real stage's name: run_stage stages its folder output data/judge/x
"""


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    home = tmp_path_factory.mktemp("faults")
    env = {**os.environ, "PREFECT_HOME": str(home / "prefect"), "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}",
           "DEEPPRUNE_MLFLOW_ARTIFACTS": str(home / "artifacts"), "PYTHONPATH": str(ROOT)}
    for key in ("PREFECT_API_URL", "DEEPPRUNE_PARENT_RUN_ID", "DEEPPRUNE_PIPELINE_FLOW_RUN"):
        env.pop(key, None)
    subprocess.run([str(Path(sys.executable).parent / "prefect"), "server", "database", "upgrade", "-y"], env=env,
                   check=True, capture_output=True, timeout=300)
    (home / "workspace").mkdir()
    (home / "workspace" / "params.yaml").write_text((ROOT / "params.yaml").read_text())  # validated by run_stage
    env["WORKSPACE"] = str(home / "workspace")
    return env


def _start(env: dict[str, str], via_shell: bool = False) -> tuple[subprocess.Popen, str, int, str]:
    """The stage process, its Prefect API URL, its pid, and what it printed before its flow started."""
    cmd = [sys.executable, "-c", PROBE]
    if via_shell:  # a parent that can be killed on its own, as dvc is to a stage
        cmd = ["bash", "-c", f'"{sys.executable}" -c "$PROBE" & wait']
    proc = subprocess.Popen(cmd, cwd=env["WORKSPACE"], env={**env, "PROBE": PROBE}, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    deadline = time.time() + 240
    said = ""
    for line in proc.stdout:
        if line.startswith("STARTED"):
            _, url, exported, pid = line.split()
            assert url == exported  # the flow reports to the server run_stage started, not to a temporary one
            return proc, url, int(pid), said
        said += line
        assert time.time() < deadline
    raise AssertionError(f"the probe stage never started (exit {proc.wait()})")


def _left_behind(env: dict[str, str]) -> list[str]:
    """Every live process that runs with this test's PREFECT_HOME: the stage and any server it started, ours or one
    Prefect started on its own."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        try:
            if proc.info["status"] != psutil.STATUS_ZOMBIE and \
                    proc.environ().get("PREFECT_HOME") == env["PREFECT_HOME"]:
                found.append(f"{proc.info['pid']}: {' '.join(proc.info['cmdline'] or [])[:120]}")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def _gone(env: dict[str, str], url: str, seconds: float = 30) -> None:
    """No process of the stage's is left (the stage, the server it started) and the server does not answer."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        if not _left_behind(env) and not healthy(url):
            return
        time.sleep(0.5)
    raise AssertionError(f"left behind after {seconds:.0f} s: {_left_behind(env)}; server answers: {healthy(url)}")


def _judge_outputs(env: dict[str, str]) -> list[str]:
    """What is under the workspace's data/judge: the probe never finishes, so no folder may appear there."""
    folder = Path(env["WORKSPACE"], "data", "judge")
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def _statuses(env: dict[str, str]) -> list[str]:
    return sorted(r.info.status for r in mlflow_runs(env["MLFLOW_TRACKING_URI"], "deepprune/probe"))


@pytest.mark.parametrize("sig, status", [(signal.SIGTERM, "KILLED"), (signal.SIGINT, "KILLED")])
def test_a_signalled_stage_closes_its_run_and_stops_its_server(env, sig, status):
    before = _statuses(env)
    proc, url, pid, _ = _start(env)
    os.kill(pid, sig)
    assert proc.wait(timeout=60) != 0
    _gone(env, url)
    assert _statuses(env) == sorted([*before, status])
    assert _judge_outputs(env) == []  # the half-written folder went with the stage


def test_a_sigkilled_stage_leaves_no_server_and_its_runs_are_ended_by_the_next_run(env):
    proc, url, pid, _ = _start(env)
    os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=60)
    _gone(env, url)  # the kernel's parent-death signal stopped the server
    assert _judge_outputs(env) == [".x.partial"]  # no cleanup runs on SIGKILL, but nothing under the real name
    running = [r for r in mlflow_runs(env["MLFLOW_TRACKING_URI"], "deepprune/probe") if r.info.status == "RUNNING"]
    assert len(running) == 1  # a SIGKILL gives a run no chance to end itself ...
    proc, url, pid, said = _start(env)  # ... so the next run of the same stage marks it FAILED
    # and its Prefect flow run, RUNNING in the project's database, CRASHED
    assert "judge: marked 1 flow run(s) CRASHED that a hard kill had left RUNNING (probe@x)" in said
    os.kill(pid, signal.SIGTERM)
    proc.wait(timeout=60)
    runs = {r.info.run_id: r.info.status for r in mlflow_runs(env["MLFLOW_TRACKING_URI"], "deepprune/probe")}
    assert runs[running[0].info.run_id] == "FAILED" and "RUNNING" not in runs.values()
    assert _judge_outputs(env) == []  # the next run deleted the killed run's staging folder


def test_a_stage_whose_parent_is_killed_stops_itself(env):
    proc, url, pid, _ = _start(env, via_shell=True)
    os.kill(proc.pid, signal.SIGKILL)  # the parent (as `kill -9` of dvc), not the stage
    proc.wait(timeout=60)
    _gone(env, url, seconds=40)


SWALLOWED = """
import signal, sys
from deepprune.tracking import start_run

class Finalized:
    def __del__(self):  # the handler's exception is raised here, where Python prints it and goes on
        signal.raise_signal(signal.SIGTERM)

with start_run("deepprune/swallowed", "swallowed"):
    Finalized()
    print("the body went on", flush=True)
print("the run ended as if finished", flush=True)
"""


def test_a_signal_whose_exception_a_finalizer_swallowed_still_ends_the_run_killed(tmp_path):
    """CI's fault suite once sent SIGTERM while the stage ran a weakref callback of SQLAlchemy's: the handler's
    exception was printed as "Exception ignored" and the stage finished with exit 0. The run still ends as
    signalled: KILLED in MLflow, exit 128 + SIGTERM, nothing after the run's block."""
    db = tmp_path / "mlflow.db"
    proc = subprocess.run([sys.executable, "-c", SWALLOWED], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{db}", "PYTHONPATH": str(ROOT)})
    assert "the body went on" in proc.stdout and "ended as if finished" not in proc.stdout, proc.stderr[-2000:]
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr[-2000:]
    assert [run.info.status for run in mlflow_runs(f"sqlite:///{db}", "deepprune/swallowed")] == ["KILLED"]
