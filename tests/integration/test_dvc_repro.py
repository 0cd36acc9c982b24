"""`dvc repro` for real on a tiny params file, in a temporary copy of the repository."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from deepprune import paths
from deepprune.config import load_params, read_params
from deepprune.metric_names import split_timings
from tests.conftest import mlflow_runs
from tests.integration.conftest import run as _run, stop as _stop

pytestmark = pytest.mark.slow


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

    _assert_no_timings_in_outputs(repo)

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


def _assert_no_timings_in_outputs(repo: Path) -> None:
    """No DVC output carries a timing key (docs/DECISIONS.md): outputs are a function of the inputs."""
    files = [*repo.glob("reports/metrics/*.json"), *repo.glob("data/*/*/results.json"), *repo.glob("data/*/*.json"),
             *repo.glob("data/online/*/outcomes.jsonl")]
    assert len(files) > 20
    for path in files:
        docs = [json.loads(line) for line in path.read_text().splitlines()] if path.suffix == ".jsonl" \
            else [json.loads(path.read_text())]
        for doc in docs:
            assert split_timings(doc)[1] is None, f"{path} holds timing keys: {split_timings(doc)[1]}"
    assert "wall s" not in (repo / "data/online/live/comparison.md").read_text()


def test_pipeline_ends_with_where_the_time_went(repo_copy):
    """`python -m flows.pipeline` (what `make run` runs) prints the table of wall time per stage and the share
    spent outside the stages' own work, saves it (reports/timings.md), and every stage process it ran left its
    timings file: the timing keys its outputs no longer carry, and the phases of its process."""
    repo, env = repo_copy
    lock = (repo / "dvc.lock").read_text()
    # forced: with its outputs deleted and its deps unchanged, DVC checks prune@math out of its cache, not runs it
    out = _run([sys.executable, "-m", "flows.pipeline", "--force", "prune@math"], repo, env)
    assert "| prune@math |" in out and "| sample@math |" in out and "| **total** (" in out
    assert "| prune@math |" in (repo / "reports/timings.md").read_text()
    timings = json.loads((repo / "reports/timings/prune_math.json").read_text())
    measured = timings["measured"]["reports/metrics/prune_math.json"]
    assert measured["prune/judge_cost/score_seconds_per_pair"] > 0 and measured["prune/cons/seconds"] > 0
    assert timings["measured"]["data/prune/math/results.json"]["summary"]["cons"]["seconds"] > 0
    assert 0 < timings["work_seconds"] < timings["wall_seconds"]
    assert sum(timings["phases"].values()) == pytest.approx(timings["wall_seconds"])
    assert timings["warm"] is True and "starting cold" not in out  # run by the pipeline's warm server (flows/warm.py)
    _assert_no_timings_in_outputs(repo)
    assert (repo / "dvc.lock").read_text() == lock  # the rerun wrote the same bytes


def test_changing_a_judge_param_reruns_only_what_reads_it(repo_copy):
    repo, env = repo_copy
    params = read_params(repo / "params.yaml")
    params["judge"]["train"]["epochs"] = 2
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    out = _run([sys.executable, "-m", "dvc", "repro"], repo, env)
    ran = {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}
    # the causal-LM judge (slow) and the embeddings do not read judge.train: they stay cached; the online stage
    # loads the retrained math judge, so it reruns
    assert ran == {f"{stage}@{corpus}" for stage in ("judge", "sweep", "ablate", "prune")
                   for corpus in ("math", "date", "live")} | {"online@live", "transfer", "report"}


def _experiments(repo: Path, env: dict[str, str]) -> list[dict]:
    """`dvc exp show --json`: every experiment in the repository, with its params and metrics."""
    cmd = [sys.executable, "-m", "dvc", "exp", "show", "--json"]
    proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stderr[-4000:]}"
    return [exp for commit in json.loads(proc.stdout) for exp in commit.get("experiments") or []]


def _exp_params(exp: dict) -> dict:
    revs = exp.get("revs") or []
    return revs[0]["data"]["params"]["params.yaml"]["data"] if revs and revs[0].get("data") else {}


def test_dvc_exp_run_with_a_param_override_keeps_params_yaml_valid_and_untouched(repo_copy):
    """`dvc exp run --temp -S key=value` (the README's sweep command): DVC rewrites the params in the experiment's
    copy with its own YAML writer; the stage must still read them, rerun with the override, and leave the
    workspace's params.yaml as it was."""
    repo, env = repo_copy
    before = (repo / "params.yaml").read_text()
    out = _run([sys.executable, "-m", "dvc", "exp", "run", "--temp", "-S", "prune.repetitions=3", "prune@math"],
               repo, env)
    assert "Running stage 'prune@math'" in out
    assert (repo / "params.yaml").read_text() == before
    load_params(repo / "params.yaml")
    exps = [e for e in _experiments(repo, env) if _exp_params(e).get("prune", {}).get("repetitions") == 3]
    assert exps, "the experiment with prune.repetitions=3 is not in `dvc exp show`"
    data = exps[0]["revs"][0]["data"]
    prefix = "prune/deepprune_tau0.5/"
    assert prefix + "accuracy" in str(data["metrics"])  # its results are recorded in the experiment
    bad = subprocess.run([sys.executable, "-m", "dvc", "exp", "run", "--temp", "-S", "prune.repetitions=0",
                          "prune@math"], cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert bad.returncode != 0 and "prune.repetitions" in bad.stdout + bad.stderr
    assert (repo / "params.yaml").read_text() == before  # a failed experiment leaves the workspace as it was


def test_pipeline_deployment_runs_from_a_prefect_server(repo_copy):
    """The documented `serve` path: a real Prefect server on 127.0.0.1, the pipeline served as a deployment, runs
    started through the API with parameters, as the UI's Run button does: `set_params` runs a DVC experiment in a
    temporary copy (the workspace's params.yaml stays as it was), and a bad override fails before any stage runs."""
    repo, env = repo_copy
    before = (repo / "params.yaml").read_text()
    served = subprocess.Popen([sys.executable, "-m", "flows.pipeline", "--serve"], cwd=repo, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        script = ("import sys, time\n"
                  "from prefect.deployments import run_deployment\n"
                  "def start(parameters):\n"
                  "    for _ in range(60):\n"
                  "        try:\n"
                  "            return run_deployment('pipeline/deepprune-pipeline', parameters=parameters, timeout=600)\n"
                  "        except Exception:  # the deployment registers a moment after `serve` starts\n"
                  "            time.sleep(2)\n"
                  "good = start({'targets': ['prune@date'], 'set_params': ['prune.repetitions=4']})\n"
                  "print('GOOD', good.state.type.value)\n"
                  "bad = start({'targets': ['prune@date'], 'set_params': ['prune.repetitionz=4']})\n"
                  "print('BAD', bad.state.type.value)\n")
        out = _run([sys.executable, "-c", script], repo, env, timeout=900)
        assert "GOOD COMPLETED" in out and "BAD FAILED" in out
    finally:
        _stop(served)
    assert (repo / "params.yaml").read_text() == before
    assert any(_exp_params(e).get("prune", {}).get("repetitions") == 4 for e in _experiments(repo, env))


def _make(repo: Path, env: dict[str, str], *args: str) -> str:
    """A target of the project's Makefile, with the test's interpreter as the virtual environment (already set up)."""
    venv = Path(sys.executable).parent.parent
    return _run(["make", "--no-print-directory", f"VENV={venv}", "-o", f"{venv}/.installed", "-o",
                 f"{venv}/.team-installed", *args], repo, env, timeout=900)


def test_a_teammates_clone_pulls_every_output_and_reruns_nothing(repo_copy, tmp_path):
    """README "Team scale", with a local DVC remote and a bare git repository as the team's: `make remote`,
    `make push` and `make push-exps` here; a teammate's `git clone` then `make pull` gets every output in under a
    minute, `dvc status` is clean and `dvc repro` reruns nothing; `make pull-exps` brings the experiments."""
    repo, env = repo_copy
    _run([sys.executable, "-m", "dvc", "repro"], repo, env)  # whatever earlier tests changed, rebuilt
    _run([sys.executable, "-m", "dvc", "exp", "run", "--temp", "-S", "prune.repetitions=2", "prune@date"], repo, env)
    origin, store = tmp_path / "origin.git", tmp_path / "dvc-remote"
    _run(["git", "init", "-q", "--bare", str(origin)], tmp_path, env)
    _run(["git", "remote", "add", "origin", str(origin)], repo, env)
    _make(repo, env, "remote", f"DVC_REMOTE={store}")
    _run(["git", "add", "-A"], repo, env)
    _run(["git", "commit", "-qm", "outputs of the tiny run"], repo, env)
    _run(["git", "push", "-q", "origin", "HEAD:refs/heads/main"], repo, env)
    _make(repo, env, "push")
    _make(repo, env, "push-exps")
    assert any(store.rglob("*")), "nothing reached the DVC remote"

    mate = tmp_path / "teammate"
    _run(["git", "clone", "-q", "-b", "main", str(origin), str(mate)], tmp_path, env)
    assert not (mate / paths.judge_model("math", "encoder_focal_oversample")).exists()
    start = time.monotonic()
    pulled = _make(mate, env, "pull")
    took = time.monotonic() - start
    assert "Data and pipelines are up to date" in pulled, pulled
    assert took < 60, f"make pull took {took:.0f} s"
    for path in (paths.judge_model("math", "encoder_focal_oversample"), paths.embeddings("date"),
                 paths.traces("live")):
        assert (mate / path).read_bytes() == (repo / path).read_bytes()
    again = _run([sys.executable, "-m", "dvc", "repro"], mate, env)
    assert "Running stage" not in again

    _make(mate, env, "pull-exps")
    listed = _run([sys.executable, "-m", "dvc", "exp", "list", "--all-commits", "--name-only"], mate, env).split()
    mine = _run([sys.executable, "-m", "dvc", "exp", "list", "--all-commits", "--name-only"], repo, env).split()
    assert mine and sorted(listed) == sorted(mine)


def test_deployments_on_a_process_work_pool_run_on_its_worker_one_at_a_time(repo_copy):
    """`make server`'s parts: flows.deploy makes the pool (limit 1) and the deployments, a real `prefect worker`
    runs the flow runs started through the API (as the UI's Run button does), one at a time, and each pipeline run's
    stage flow run is tagged with it."""
    repo, env = repo_copy
    out = _run([sys.executable, "-m", "flows.deploy", "--pool", "tiny", "--limit", "1"], repo, env)
    assert "work pool 'tiny' (process, concurrency limit 1)" in out and "pipeline/prune" in out
    worker = subprocess.Popen([str(Path(sys.executable).parent / "prefect"), "worker", "start", "--pool", "tiny",
                               "--type", "process"], cwd=repo, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        script = ("import json\n"
                  "from prefect.client.orchestration import get_client\n"
                  "from prefect.deployments import run_deployment\n"
                  "forced = {'targets': ['prune@date'], 'force': True}\n"
                  "ids = [run_deployment('pipeline/pipeline', parameters=forced, timeout=0).id,\n"
                  "       run_deployment('pipeline/prune', parameters={'targets': ['prune@date']}, timeout=0).id]\n"
                  "import time\n"
                  "with get_client(sync_client=True) as client:\n"
                  "    deadline = time.time() + 900\n"
                  "    while True:\n"
                  "        runs = [client.read_flow_run(i) for i in ids]\n"
                  "        if all(r.state.is_final() for r in runs) or time.time() > deadline:\n"
                  "            break\n"
                  "        time.sleep(2)\n"
                  "    names = [d.name for d in client.read_deployments()]\n"
                  "    stages = [r for r in client.read_flow_runs() if r.name == 'prune@date']\n"
                  "print(json.dumps({'states': [r.state.type.value for r in runs], 'names': names,\n"
                  "                  'spans': [[r.start_time.timestamp(), r.end_time.timestamp()] for r in runs],\n"
                  "                  'pipelines': [r.name for r in runs], 'stage_tags': [s.tags for s in stages]}))\n")
        result = json.loads(_run([sys.executable, "-c", script], repo, env, timeout=1200).strip().splitlines()[-1])
    finally:
        _stop(worker)
    assert result["states"] == ["COMPLETED", "COMPLETED"]
    assert {"pipeline", "prune", "judge", "report"} <= set(result["names"])
    (_, end1), (start2, _) = sorted(result["spans"])
    assert end1 <= start2  # the pool's limit of 1: the second waited for the first
    # the forced run reran prune@date, a flow run of its own linked to that pipeline run; the second found it done
    assert any(f"pipeline:{result['pipelines'][0]}" in tags for tags in result["stage_tags"])
