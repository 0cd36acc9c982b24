"""Every stage flow for real, under prefect_test_harness, on a tiny workspace."""

from __future__ import annotations

import json

import pytest
from prefect.testing.utilities import prefect_test_harness

from deepprune.io import read_json
from tests.conftest import mlflow_runs

VARIANTS = ("sbert_cosine", "encoder_plain", "encoder_focal", "encoder_oversample", "encoder_focal_oversample")


@pytest.fixture(scope="module", autouse=True)
def prefect_harness():
    with prefect_test_harness(server_startup_timeout=120):
        yield


def test_stage_flows_end_to_end(workspace):
    from flows.embed import embed_flow
    from flows.judge import judge_flow
    from flows.label import label_flow
    from flows.prune import prune_flow
    from flows.report import report_flow
    from flows.sample import sample_flow

    for corpus in ("math", "date", "live"):
        sample_metrics = sample_flow(corpus)
        assert sample_metrics["sample/problems"] == (3 if corpus == "live" else 8)
        label_metrics = label_flow(corpus)
        assert 0 < label_metrics["label/same_answer_share"] <= 1 or corpus == "live"  # random weights: no answers
        assert embed_flow(corpus)["embed/prefix_sets"] == 3
    judge_metrics = judge_flow("date")
    for variant in VARIANTS:
        assert f"judge/{variant}/auroc" in judge_metrics
        assert (workspace / "data/judge/date/models" / f"{variant}.safetensors").exists() == (variant != "sbert_cosine")
    judge_flow("math")
    judge_flow("live")
    _judge_lm_sweep_and_ablation(workspace)
    for corpus in ("math", "date", "live"):
        prune_metrics = prune_flow(corpus)
        assert prune_metrics["prune/cons/token_reduction"] == 0
        assert prune_metrics["prune/deepprune_tau0.5/tokens"] <= prune_metrics["prune/cons/tokens"]
    _online(workspace)
    results = read_json(workspace / "data/prune/date/results.json")
    assert results["summary"]["deepconf_low_online"] == {"skipped": "needs logprobs"}
    page = report_flow()
    text = (workspace / page).read_text()
    assert "Inter-trace redundancy" in text and "Online pruning" in text
    assert "causal-LM judge" in text and "Focal-loss sweep" in text and "Table 1" in text
    assert "Online pruning with real generation" in text and "deepprune_tau0.01" in text
    from tasks.report import load_corpus_results

    res = load_corpus_results.fn("date", ["encoder_focal_oversample", "sbert_cosine"], 0.2, 0.5)
    for name in ("causal_lm", "causal_lm_zeroshot", "encoder_focal_oversample", "sbert_cosine"):
        assert res.judge_lm[f"judge_lm/{name}/n_pairs"] == 12  # every judge on the same held-out pairs

    live = [json.loads(line) for line in open(workspace / "data/traces/live.jsonl")]
    assert len(live) == 12 and all(t["tokenizer"] == "engine" and 0 < t["n_tokens"] <= 24 for t in live)
    assert {t["finish_reason"] for t in live} <= {"stop", "length"} and len({t["trace_id"] for t in live}) == 12
    assert len(list((workspace / ".cache/sample/live").rglob("*.jsonl"))) == 3  # one checkpoint per problem, here
    meta = read_json(workspace / "data/traces/live.meta.json")
    assert meta["engine"]["engine"] == "transformers" and meta["generation"]["max_tokens"] == 24 and meta["n"] == 4

    traces = [json.loads(line) for line in open(workspace / "data/traces/date.jsonl")]
    assert len(traces) == 80 and {t["dataset"] for t in traces} == {"date"}
    pairs = [json.loads(line) for line in open(workspace / "data/labels/date/pairs.jsonl")]
    assert len(pairs) == 8 * 45 and {p["fold"] for p in pairs} == {0, 1}
    assert read_json(workspace / "reports/metrics/label_date.json")["label/n_pairs"] == 360

    uri = f"sqlite:///{workspace / 'mlflow.db'}"
    runs = mlflow_runs(uri, "deepprune/judge")
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert {r.data.tags["dvc_stage"] for r in parents} == {"judge@date", "judge@math", "judge@live"}
    assert all(r.info.status == "FINISHED" for r in runs)
    assert all(r.data.tags["prefect_flow_run_id"] != "none" for r in parents)
    assert len(children) == 15
    date_children = [r for r in children if r.data.tags["corpus"] == "date"]
    assert {r.data.tags["variant"] for r in date_children} == set(VARIANTS)
    assert len({frozenset(r.data.metrics) for r in date_children}) == 1  # the compare view lines them up
    assert "auroc" in date_children[0].data.metrics
    parent_date = next(r for r in parents if r.data.tags["dvc_stage"] == "judge@date")
    assert parent_date.data.params["judge.train.focal.gamma"] == "2.0"
    assert "judge/encoder_focal_oversample/auroc" in parent_date.data.metrics


def _online(workspace):
    from flows.online import online_flow

    metrics = online_flow("live")
    cons, merged = metrics["online/cons/tokens"], metrics["online/deepprune_tau0.01/tokens"]
    assert metrics["online/cons/token_reduction"] == 0 and metrics["online/cons/stopped_pruned"] == 0
    assert metrics["online/deepprune_tau0.01/stopped_pruned"] > 0 and merged < cons  # real generation, stopped early
    assert metrics["online/deepprune_tau0.01/token_reduction"] == pytest.approx(1 - merged / cons)
    rows = [json.loads(line) for line in open(workspace / "data/online/live/outcomes.jsonl")]
    assert len(rows) == 4 * 2 and {len(r["traces"]) for r in rows} == {4}  # 4 methods x 2 problems, N = 4 each
    assert all(t["stop_reason"] in ("finished", "pruned", "confidence_stop", "length") for r in rows for t in r["traces"])
    assert all(t["n_tokens"] <= 24 for r in rows for t in r["traces"])
    assert read_json(workspace / "data/online/live/meta.json")["engine"]["engine"] == "transformers"
    shards = list((workspace / ".cache/online/live").rglob("*.json"))
    assert len(shards) == 8
    assert online_flow("live") == metrics  # a rerun reads every (method, problem) back from its shard
    runs = mlflow_runs(f"sqlite:///{workspace / 'mlflow.db'}", "deepprune/online")
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert {r.data.tags["variant"] for r in children} == {"cons", "deepprune_tau0.5", "deepprune_tau0.01",
                                                         "deepconf_eta90"}
    assert len({frozenset(r.data.metrics) for r in children}) == 1  # the compare view lines them up


def _judge_lm_sweep_and_ablation(workspace):
    from flows.ablate import ablate_flow
    from flows.judge_lm import judge_lm_flow
    from flows.sweep import run_sweep

    uri = f"sqlite:///{workspace / 'mlflow.db'}"
    lm = judge_lm_flow("date")
    for name in ("causal_lm", "causal_lm_zeroshot"):
        assert lm[f"judge_lm/{name}/n_pairs"] == 12  # 2 folds x 3 pairs per class, the same pairs for both
        assert lm[f"judge_lm/{name}/auroc_folds"] == 2
    assert lm["judge_lm/score_pairs_per_second"] > 0 and lm["judge_lm/train_pairs_per_second"] > 0
    assert (workspace / "data/judge_lm/date/models/fold0.safetensors").exists()
    children = [r for r in mlflow_runs(uri, "deepprune/judge_lm") if "mlflow.parentRunId" in r.data.tags]
    assert {r.data.tags["variant"] for r in children} == {"causal_lm", "causal_lm_zeroshot"}
    assert len({frozenset(r.data.metrics) for r in children}) == 1

    sweep = run_sweep("date")
    assert sweep["sweep/points"] == 2
    runs = mlflow_runs(uri, "deepprune/sweep")
    points = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert sorted(r.data.tags["variant"] for r in points) == ["ce", "focal_g2.0"]
    assert len({frozenset(r.data.metrics) for r in points}) == 1 and "auroc" in points[0].data.metrics
    assert all(r.info.status == "FINISHED" for r in runs)
    results = read_json(workspace / "data/sweep/date/results.json")
    from mlflow.tracking import MlflowClient

    versions = MlflowClient(tracking_uri=uri).search_model_versions("name='deepprune-judge-date'")
    assert [str(v.version) for v in versions] == [results["registered"]["version"]] == ["1"]
    assert versions[0].tags["point"] == results["best"]

    ablation = ablate_flow("date")
    rows = read_json(workspace / "data/ablate/date/results.json")["rows"]
    truncations = {(r["strategy"], r["k"]) for r in rows}
    assert truncations == {("tokens", 16), ("tokens", 32), ("reasoning_words", 5)}  # what label built
    assert len(rows) == len(truncations) * 5  # one result per (strategy, k) for each variant
    assert "ablate/tokens_32/encoder_focal_oversample/auroc" in ablation
    children = [r for r in mlflow_runs(uri, "deepprune/ablate") if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == len(truncations)


def test_failed_stage_marks_the_mlflow_run_failed(workspace):
    from flows.label import label_flow

    with pytest.raises(FileNotFoundError):
        label_flow("math")  # no traces sampled in this workspace
    runs = mlflow_runs(f"sqlite:///{workspace / 'mlflow.db'}", "deepprune/label")
    assert [r.info.status for r in runs] == ["FAILED"]
