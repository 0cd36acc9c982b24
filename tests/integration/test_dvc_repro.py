"""`dvc repro` for real on a tiny params file, in a temporary copy of the repository."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.conftest import ROOT, mlflow_runs, tiny_params

pytestmark = pytest.mark.slow


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: int = 2400) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def repo_copy(tmp_path_factory, tiny_lm):
    """The tracked files of this repository (plus the work tree's edits), as a fresh git + DVC repo."""
    dest = tmp_path_factory.mktemp("repo")
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    for rel in filter(None, files):
        src = ROOT / rel
        if src.is_file() and not rel.startswith(("reports/metrics/", "dvc.lock")):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    params = tiny_params(limit=6)
    params["judge_lm"]["model_path"] = str(tiny_lm)
    params["sample"]["model_path"] = str(tiny_lm)
    (dest / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PREFECT_HOME": str(dest / ".prefect"), "MLFLOW_TRACKING_URI": f"sqlite:///{dest / 'mlflow.db'}",
           "DEEPPRUNE_MLFLOW_ARTIFACTS": str(dest / "mlartifacts"), "PYTHONPATH": str(dest)}
    env.pop("DEEPPRUNE_PARENT_RUN_ID", None)
    git = ["git", "-c", "user.name=ci", "-c", "user.email=ci@localhost"]
    _run(["git", "init", "-q"], dest, env)
    _run([*git, "add", "-A"], dest, env)
    _run([*git, "commit", "-qm", "copy"], dest, env)
    # One Prefect server for the module on 127.0.0.1 (as `make prefect-ui` runs one): every stage's flow reports
    # to it, instead of each process starting a temporary server of its own (about 10 s each).
    port = _free_port()
    env["PREFECT_API_URL"] = f"http://127.0.0.1:{port}/api"
    log = open(dest / "prefect-server.log", "w")
    server = subprocess.Popen([str(Path(sys.executable).parent / "prefect"), "server", "start", "--host", "127.0.0.1",
                               "--port", str(port)], cwd=dest, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_for(f"http://127.0.0.1:{port}/api/health")
        yield dest, env
    finally:
        _stop(server)
        log.close()


def _wait_for(url: str, seconds: float = 240) -> None:
    import time
    import urllib.request

    deadline = time.time() + seconds
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            assert time.time() < deadline, f"{url} did not answer"
            time.sleep(1)


def _stop(proc: subprocess.Popen | None) -> None:
    if proc is None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_dvc_repro_builds_everything_then_reruns_nothing(repo_copy):
    repo, env = repo_copy
    _run([sys.executable, "-m", "dvc", "repro"], repo, env)
    for corpus in ("math", "date"):
        assert (repo / f"data/traces/{corpus}.jsonl").exists()
        assert (repo / f"data/labels/{corpus}/pairs.jsonl").exists()
        assert (repo / f"data/judge/{corpus}/models/encoder_focal_oversample.safetensors").exists()
        label = json.loads((repo / f"reports/metrics/label_{corpus}.json").read_text())
        judge = json.loads((repo / f"reports/metrics/judge_{corpus}.json").read_text())
        assert 0 < label["label/same_answer_share"] <= 1
        for variant in ("sbert_cosine", "encoder_focal_oversample"):
            assert {f"judge/{variant}/auroc", f"judge/{variant}/auroc_std", f"judge/{variant}/tnr_at_fnr_0.2"} <= set(judge)
        prune = json.loads((repo / f"reports/metrics/prune_{corpus}.json").read_text())
        assert prune["prune/cons/token_reduction"] == 0
        assert prune["prune/oracle/tokens"] <= prune["prune/cons/tokens"]
        assert "prune/deepprune_tau0.5/accuracy_lo" in prune
        assert (repo / f"data/embeddings/{corpus}.npz").exists()
        lm = json.loads((repo / f"reports/metrics/judge_lm_{corpus}.json").read_text())
        assert "judge_lm/causal_lm/auroc_std" in lm and "judge_lm/causal_lm_zeroshot/auroc" in lm
        assert json.loads((repo / f"reports/metrics/sweep_{corpus}.json").read_text())["sweep/points"] == 2
        assert "ablate/tokens_32/encoder_focal_oversample/auroc" in json.loads(
            (repo / f"reports/metrics/ablate_{corpus}.json").read_text())
    live = [json.loads(line) for line in (repo / "data/traces/live.jsonl").read_text().splitlines()]
    assert len(live) == 12 and all(t["tokenizer"] == "engine" for t in live)
    assert json.loads((repo / "data/traces/live.meta.json").read_text())["engine"]["engine"] == "transformers"
    online = json.loads((repo / "reports/metrics/online_live.json").read_text())
    assert online["online/deepprune_tau0.01/tokens"] < online["online/cons/tokens"]  # real generation, stopped early
    page = (repo / "reports/index.html").read_text()
    assert "Online pruning" in page and "Truncation ablation" in page and "with real generation" in page

    again = _run([sys.executable, "-m", "dvc", "repro"], repo, env)
    assert "Running stage" not in again and "up to date" in again

    shown = _run([sys.executable, "-m", "dvc", "metrics", "show", "--json"], repo, env)
    assert "label/same_answer_share" in shown

    runs = mlflow_runs(env["MLFLOW_TRACKING_URI"], "deepprune/judge")
    stage_runs = [r for r in runs if r.data.tags.get("dvc_stage", "").startswith("judge@")
                  and "variant" not in r.data.tags]
    assert {r.data.tags["dvc_stage"] for r in stage_runs} == {"judge@math", "judge@date", "judge@live"}
    commit = _run(["git", "rev-parse", "HEAD"], repo, env).strip()
    assert all(r.data.tags["git_commit"].startswith(commit) for r in stage_runs)
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    for run in stage_runs:
        assert "models" in {a.path for a in client.list_artifacts(run.info.run_id)}


def test_changing_a_judge_param_reruns_only_what_reads_it(repo_copy):
    repo, env = repo_copy
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["judge"]["train"]["epochs"] = 2
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    out = _run([sys.executable, "-m", "dvc", "repro"], repo, env)
    ran = {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}
    # the causal-LM judge (slow) and the embeddings do not read judge.train: they stay cached; the online stage
    # loads the retrained math judge, so it reruns
    assert ran == {f"{stage}@{corpus}" for stage in ("judge", "sweep", "ablate", "prune")
                   for corpus in ("math", "date", "live")} | {"online@live", "report"}


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_pipeline_deployment_runs_from_a_prefect_server(repo_copy):
    """The documented `serve` path: a real Prefect server on 127.0.0.1, the pipeline served as a deployment,
    a run started through the API with parameters, as the UI's Run button does."""
    repo, env = repo_copy
    served = subprocess.Popen([sys.executable, "-m", "flows.pipeline", "--serve"], cwd=repo, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        script = ("import sys, time\n"
                  "from prefect.deployments import run_deployment\n"
                  "for _ in range(60):\n"
                  "    try:\n"
                  "        run = run_deployment('pipeline/deepprune-pipeline', parameters={'targets': ['report']},"
                  " timeout=600)\n"
                  "        break\n"
                  "    except Exception:  # the deployment registers a moment after `serve` starts\n"
                  "        time.sleep(2)\n"
                  "print('STATE', run.state.type.value)\n")
        out = _run([sys.executable, "-c", script], repo, env, timeout=900)
        assert "STATE COMPLETED" in out
    finally:
        _stop(served)
