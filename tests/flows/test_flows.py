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
    from flows.judge import judge_flow
    from flows.label import label_flow
    from flows.prune import prune_flow
    from flows.report import report_flow
    from flows.sample import sample_flow

    for corpus in ("math", "date"):
        sample_metrics = sample_flow(corpus)
        assert sample_metrics["sample/problems"] == 8
        label_metrics = label_flow(corpus)
        assert 0 < label_metrics["label/same_answer_share"] <= 1
    judge_metrics = judge_flow("date")
    for variant in VARIANTS:
        assert f"judge/{variant}/auroc" in judge_metrics
        assert (workspace / "data/judge/date/models" / f"{variant}.safetensors").exists() == (variant != "sbert_cosine")
    judge_flow("math")
    for corpus in ("math", "date"):
        prune_metrics = prune_flow(corpus)
        assert prune_metrics["prune/cons/token_reduction"] == 0
        assert prune_metrics["prune/deepprune_tau0.5/tokens"] <= prune_metrics["prune/cons/tokens"]
    results = read_json(workspace / "data/prune/date/results.json")
    assert results["summary"]["deepconf_low_online"] == {"skipped": "needs logprobs"}
    page = report_flow()
    text = (workspace / page).read_text()
    assert "Inter-trace redundancy" in text and "Online pruning" in text

    traces = [json.loads(line) for line in open(workspace / "data/traces/date.jsonl")]
    assert len(traces) == 80 and {t["dataset"] for t in traces} == {"date"}
    pairs = [json.loads(line) for line in open(workspace / "data/labels/date/pairs.jsonl")]
    assert len(pairs) == 8 * 45 and {p["fold"] for p in pairs} == {0, 1}
    assert read_json(workspace / "reports/metrics/label_date.json")["label/n_pairs"] == 360

    uri = f"sqlite:///{workspace / 'mlflow.db'}"
    runs = mlflow_runs(uri, "deepprune/judge")
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert {r.data.tags["dvc_stage"] for r in parents} == {"judge@date", "judge@math"}
    assert all(r.info.status == "FINISHED" for r in runs)
    assert all(r.data.tags["prefect_flow_run_id"] != "none" for r in parents)
    assert len(children) == 10
    date_children = [r for r in children if r.data.tags["corpus"] == "date"]
    assert {r.data.tags["variant"] for r in date_children} == set(VARIANTS)
    assert len({frozenset(r.data.metrics) for r in date_children}) == 1  # the compare view lines them up
    assert "auroc" in date_children[0].data.metrics
    parent_date = next(r for r in parents if r.data.tags["dvc_stage"] == "judge@date")
    assert parent_date.data.params["judge.train.focal.gamma"] == "2.0"
    assert "judge/encoder_focal_oversample/auroc" in parent_date.data.metrics


def test_failed_stage_marks_the_mlflow_run_failed(workspace):
    from flows.label import label_flow

    with pytest.raises(FileNotFoundError):
        label_flow("math")  # no traces sampled in this workspace
    runs = mlflow_runs(f"sqlite:///{workspace / 'mlflow.db'}", "deepprune/label")
    assert [r.info.status for r in runs] == ["FAILED"]
