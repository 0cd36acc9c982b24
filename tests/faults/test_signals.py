"""Every kind of stage killed at a random point, then rerun (issue 12): recorded replay (prune@math), live sampling
(sample@live), training (judge_lm@math, which checkpoints) and online pruning (online@live), each ended by SIGKILL,
SIGTERM and SIGINT, then `dvc repro` again.

One tiny copy of the project (as tests/integration/test_dvc_repro.py builds) runs every stage once, unbroken: its
outputs are the reference. Each kind then empties the stage's checkpoints, runs `dvc repro --force --single-item`
of the stage, waits until the stage is working (its MLflow run is open, and for a checkpointing stage its first
checkpoint is written) plus a random delay drawn from a seeded generator (printed: `pytest -s` shows it), sends the
signal to the stage process (dvc's python child); the three signals end three runs in a row, each resuming what the
ones before it checkpointed; then `dvc repro --force --single-item <stage>` runs to the end. Then:
- no process of the case is left (a shared Prefect server, started here like `make prefect-ui`, is not the case's);
- no temporary file is left in the project (`*.partial`, `*.replaced`, `*.tmp*`) outside git's and DVC's own folders;
- every output equals the unbroken run's, byte for byte (no output holds a timing), but for the live sampler's
  resumed/generated counts (documented as what a run resumed), which are checked against the checkpoints instead;
- what was checkpointed before the signal is not done again: the checkpoint files are the same files, untouched,
  and the live sampler counts them as resumed;
- `dvc status` of the stages is clean, and no MLflow run of the stage is left RUNNING.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from deepprune.paths import stage_outputs
from tests.conftest import commit_copy, copy_project, loopback_prefect, tiny_params

pytestmark = pytest.mark.slow

SEED = 20251009  # the delays' generator: each case draws from Random(f"{SEED}:{kind}:{signal}"), so any subset reruns alike
TEMP_NAME = re.compile(r"\.(partial|replaced|tmp)(\d*)$")  # staged folders, asides, atomic writes, checkpoint writes
NOT_SCANNED = {".git", ".dvc"}  # git's and DVC's own folders (DVC keeps its locks and temp files in .dvc/tmp)


@dataclasses.dataclass(frozen=True)
class Kind:
    stage: str                   # the DVC stage, `name@corpus`
    checkpoints: str | None      # the folder where the stage keeps finished work across runs
    max_delay_s: float           # the random delay after the stage is working is drawn from [0, max_delay_s]


KINDS = {
    "replay": Kind("prune@math", None, 4.0),
    "live": Kind("sample@live", ".cache/sample/live", 1.5),
    "training": Kind("judge_lm@math", ".cache/judge_lm/math", 1.0),
    "online": Kind("online@live", ".cache/online/live", 3.0),
}
JUDGE_LM_STEPS = 4  # per fold, each checkpointed: a few states to resume from
STAGES = [kind.stage for kind in KINDS.values()]


# ---- comparing outputs ------------------------------------------------------------------------------------------


def comparable(path: Path) -> str:
    """What of an output file must not change from run to run: its bytes (no output holds a timing,
    docs/DECISIONS.md "Timings are measurements"), and of the live sampler's metrics all but what a run resumed."""
    if path.name == "sample_live.json":
        return json.dumps({k: v for k, v in json.loads(path.read_text()).items() if k not in LIVE_COUNTS}, sort_keys=True)
    return hashlib.sha256(path.read_bytes()).hexdigest()


LIVE_COUNTS = ("sample/resumed_problems", "sample/generated_tokens")  # what a run resumed (DECISIONS.md): checked apart


def snapshot(repo: Path, stage: str) -> dict[str, str]:
    """Every output file of a DVC stage (its outs and metrics, deepprune.paths) -> its comparable content."""
    name, corpus = stage.split("@")
    outs, metrics = stage_outputs(name, corpus)
    found = {}
    for out in [*outs, *metrics]:
        path = repo / out
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            found[str(file.relative_to(repo))] = comparable(file)
    return found


# ---- the project copy -------------------------------------------------------------------------------------------


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: int = 900) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout + proc.stderr


def _dvc(*args: str) -> list[str]:
    return [sys.executable, "-m", "dvc", *args]


def _params(tiny_lm: Path) -> dict:
    """The tiny params with the corpora and stages the four kinds need: math (recorded) and live (generated)."""
    params = tiny_params(limit=6)
    del params["corpora"]["date"]
    params["judge_lm"]["corpora"], params["online"]["corpora"] = ["math"], ["live"]
    params["judge_lm"]["model_path"] = params["sample"]["model_path"] = str(tiny_lm)
    params["judge_lm"]["train"].update(steps=JUDGE_LM_STEPS, checkpoint_every=1)  # a few checkpoints to resume from
    params["prune"]["repetitions"] = 40  # a few seconds of replay
    return params


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_lm):
    """A git + DVC copy of the project on tiny params, every stage of the four kinds built once, unbroken; with the
    reference outputs and the shared Prefect server's process."""
    repo = tmp_path_factory.mktemp("signals")
    copy_project(repo)
    (repo / "params.yaml").write_text(yaml.safe_dump(_params(tiny_lm)))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PREFECT_HOME": str(repo / ".prefect"), "MLFLOW_TRACKING_URI": f"sqlite:///{repo / 'mlflow.db'}",
           "DEEPPRUNE_MLFLOW_ARTIFACTS": str(repo / "mlartifacts"), "PYTHONPATH": str(repo),
           "DVC_NO_ANALYTICS": "1"}
    for key in ("DEEPPRUNE_PARENT_RUN_ID", "DEEPPRUNE_PIPELINE_FLOW_RUN"):
        env.pop(key, None)
    commit_copy(repo, env)
    with loopback_prefect(repo, env) as server:
        start = time.time()
        _run(_dvc("repro", *STAGES), repo, env, timeout=1800)
        print(f"\nreference run of {', '.join(STAGES)} and their upstream stages: {time.time() - start:.0f} s")
        reference = {stage: snapshot(repo, stage) for stage in STAGES}
        live = json.loads((repo / "reports/metrics/sample_live.json").read_text())
        yield repo, env, server, reference, live


# ---- one case ---------------------------------------------------------------------------------------------------


def _stage_process(dvc: subprocess.Popen, stage: str) -> psutil.Process | None:
    """dvc's child that runs the stage's flow (`python -m flows.<name> <corpus>`)."""
    name, corpus = stage.split("@")
    try:
        for child in psutil.Process(dvc.pid).children(recursive=True):
            cmd = child.cmdline()
            if f"flows.{name}" in cmd and corpus in cmd:
                return child
    except psutil.NoSuchProcess:
        pass
    return None


def _run_open(repo: Path, stage: str, before: set[str]) -> bool:
    """Whether a RUNNING MLflow run of the stage other than those in `before` is in the project's store: the run
    this process opened. (A run a SIGKILL left RUNNING stays so; telling runs apart by start time raced with it
    when the next run started within a second of the kill.)"""
    try:
        return bool(set(_running_runs(repo, stage)) - before)
    except sqlite3.Error:
        return False


def _running_runs(repo: Path, stage: str) -> list[str]:
    with sqlite3.connect(f"file:{repo / 'mlflow.db'}?mode=ro", uri=True, timeout=5) as db:
        return [r[0] for r in db.execute("SELECT r.run_uuid FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
                                         "WHERE t.key = 'dvc_stage' AND t.value = ? AND r.status = 'RUNNING'",
                                         (stage,))]


def _checkpoints(repo: Path, kind: Kind) -> dict[str, tuple[int, int]]:
    """The stage's checkpoint files -> (inode, mtime in ns): a rewritten file (atomic rename) changes both."""
    if kind.checkpoints is None or not (repo / kind.checkpoints).exists():
        return {}
    return {str(p.relative_to(repo)): (p.stat().st_ino, p.stat().st_mtime_ns)
            for p in sorted((repo / kind.checkpoints).rglob("*")) if p.is_file()}


def _finished(path: Path, kind: Kind) -> bool:
    """Whether a checkpoint file holds finished work: a sampled problem or an online outcome always does; a judge_lm
    fold's checkpoint (one file, rewritten every `checkpoint_every` steps) once its step is the last."""
    if kind.stage.startswith("judge_lm@"):
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            step = json.loads(handle.metadata()["state"])["step"]
        return step == JUDGE_LM_STEPS
    return True


def _left_behind(repo: Path, env: dict[str, str], spared: set[int]) -> list[str]:
    """Live processes of this test's project (its PREFECT_HOME in their environment, or their cwd in it), except the
    shared Prefect server and its children."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        try:
            if proc.info["pid"] in spared or proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if proc.environ().get("PREFECT_HOME") == env["PREFECT_HOME"] or proc.cwd().startswith(str(repo)):
                found.append(f"{proc.info['pid']}: {' '.join(proc.info['cmdline'] or [])[:160]}")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def _temp_files(repo: Path) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(repo):
        if Path(dirpath) == repo:
            dirnames[:] = [d for d in dirnames if d not in NOT_SCANNED]
        found += [os.path.join(dirpath, n) for n in dirnames + filenames if TEMP_NAME.search(n)]
    return [str(Path(p).relative_to(repo)) for p in found]


SIGNALS = {"SIGKILL": signal.SIGKILL, "SIGTERM": signal.SIGTERM, "SIGINT": signal.SIGINT}


def _signalled_run(repo: Path, env: dict[str, str], log: Path, kind_name: str, signame: str) -> bool:
    """`dvc repro --force --single-item` of the kind's stage, signalled once it works (its MLflow run is open and,
    for a checkpointing stage's first run, it has checkpointed something) plus a seeded random delay; whether the
    signal found the stage still running. Later runs resume from those checkpoints, so they are signalled once their
    run is open: waiting for a new checkpoint there let a short training finish before its signal."""
    kind = KINDS[kind_name]
    delay = random.Random(f"{SEED}:{kind_name}:{signame}").uniform(0, kind.max_delay_s)
    before = _checkpoints(repo, kind)
    running_before = set(_running_runs(repo, kind.stage))
    with open(log, "w") as out:  # a file, not a pipe: nobody reads a pipe while the stage runs, and a full one blocks
        dvc = subprocess.Popen(_dvc("repro", "--force", "--single-item", kind.stage), cwd=repo, env=env, stdout=out,
                               stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    wait_checkpoint = kind.checkpoints is not None and signame == next(iter(SIGNALS))
    while not (_run_open(repo, kind.stage, running_before) and (not wait_checkpoint or
                                                          _checkpoints(repo, kind).items() - before.items())):
        if dvc.poll() is not None:
            break
        assert time.time() < deadline, f"{kind.stage} never started working"
        time.sleep(0.1)
    time.sleep(delay)
    stage = _stage_process(dvc, kind.stage)
    try:
        if stage is None:
            raise psutil.NoSuchProcess(0)
        stage.send_signal(SIGNALS[signame])
        sent = True
    except psutil.NoSuchProcess:
        sent = False
    print(f"{kind.stage}: {signame} {delay:.2f} s after it started working: "
          f"{'sent' if sent else 'not sent, the stage had finished'}")
    dvc.wait(timeout=120)
    assert (dvc.returncode != 0) == sent, f"dvc exited {dvc.returncode}:\n{log.read_text()[-3000:]}"
    return sent


def _none_left(repo: Path, env: dict[str, str], spared: set[int], seconds: float = 30) -> None:
    deadline = time.time() + seconds
    while (left := _left_behind(repo, env, spared)) and time.time() < deadline:
        time.sleep(0.5)
    assert not left, f"left running: {left}"


@pytest.mark.parametrize("kind_name", list(KINDS))
def test_a_stage_signalled_at_random_points_then_rerun_ends_as_an_unbroken_run(project, tmp_path, kind_name):
    """SIGKILL, SIGTERM and SIGINT, each ending one run of the stage at a random point, then a rerun to the end.
    The runs follow one another, as a user's would: each resumes what the runs before it checkpointed."""
    repo, env, server, reference, live_reference = project
    kind = KINDS[kind_name]
    spared = {server.pid, *(c.pid for c in psutil.Process(server.pid).children(recursive=True))}
    if kind.checkpoints:
        shutil.rmtree(repo / kind.checkpoints, ignore_errors=True)  # the first signalled run starts from nothing
    finished: dict[str, tuple[int, int]] = {}  # checkpoints of finished work, as they were when it was checkpointed
    for signame in SIGNALS:
        sent = _signalled_run(repo, env, tmp_path / f"{signame}.log", kind_name, signame)
        _none_left(repo, env, spared)
        left = _temp_files(repo)
        if signame == "SIGKILL" and sent:  # nothing runs on SIGKILL: the stage's staging folders stay, for its next run
            staged = {str(Path(o).parent / f".{Path(o).name}.partial") for o in stage_outputs(*kind.stage.split("@"))[0]}
            left = [p for p in left if p not in staged]
        assert not left, f"{signame} left temporary files: {left}"
        finished |= {path: stat for path, stat in _checkpoints(repo, kind).items()
                     if path not in finished and _finished(repo / path, kind)}

    resumed = _checkpoints(repo, kind)
    # forced, as the signalled runs: the outputs DVC cached from the reference run match dvc.lock, so a plain
    # `dvc repro` would check them out instead of running the stage (a user whose first run was killed has none)
    again = _run(_dvc("repro", "--force", "--single-item", kind.stage), repo, env)
    assert f"Running stage '{kind.stage}'" in again

    _none_left(repo, env, spared)
    assert not _temp_files(repo), f"temporary files left: {_temp_files(repo)}"
    assert snapshot(repo, kind.stage) == reference[kind.stage]
    after = _checkpoints(repo, kind)
    redone = [path for path, stat in finished.items() if after.get(path) != stat]
    assert not redone, f"{kind.stage} did again what it had checkpointed: {redone}"
    if kind_name == "live":
        metrics = json.loads((repo / "reports/metrics/sample_live.json").read_text())
        shards = [path for path in resumed if path.endswith(".jsonl")]  # beside them: engine.json, who generated them
        assert metrics["sample/resumed_problems"] == len(shards) > 0
        assert metrics["sample/generated_tokens"] < live_reference["sample/generated_tokens"]
    status = _run(_dvc("status", *STAGES), repo, env)
    assert "up to date" in status, status
    assert _running_runs(repo, kind.stage) == []
