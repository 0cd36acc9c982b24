"""Every stage flow for real, under prefect_test_harness, on a tiny workspace: the recorded corpora through every
stage that needs no model to generate or fine-tune (fast), and the live corpus, the causal-LM judge and the
online stage (slow)."""

from __future__ import annotations

import json
import urllib.parse
from collections import defaultdict
from pathlib import Path

import pytest
import yaml
from prefect.testing.utilities import prefect_test_harness

from deepprune import paths
from deepprune.config import read_params
from deepprune.io import read_json
from deepprune.metric_names import ablate_names
from tests.conftest import mlflow_runs, recorded_only, tiny_params

VARIANTS = tuple(tiny_params()["judge"]["variants"])  # every judge variant, each also ablated in the tiny run
RECORDED = ("math", "date")


@pytest.fixture(scope="module", autouse=True)
def prefect_harness():
    with prefect_test_harness(server_startup_timeout=120):
        yield


def _jsonl(path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def _sample_label_embed(workspace, corpus: str, problems: int) -> None:
    """sample, label and embed one corpus, each checked against what the files it wrote say."""
    from flows.embed import embed_flow
    from flows.label import label_flow
    from flows.sample import sample_flow

    sampled = sample_flow(corpus)
    traces = _jsonl(workspace / paths.traces(corpus))
    assert sampled["sample/problems"] == len({t["problem_id"] for t in traces}) == problems
    assert sampled["sample/total_tokens"] == sum(t["n_tokens"] for t in traces)
    labelled = label_flow(corpus)
    _check_labels(workspace, corpus, traces, labelled)
    assert embed_flow(corpus)["embed/prefix_sets"] == 3  # tokens_k [16, 32] and reasoning_words_k [5]


def _counts(traces: list[dict]) -> dict[str, int]:
    """Traces per problem."""
    counts: dict[str, int] = defaultdict(int)
    for t in traces:
        counts[t["problem_id"]] += 1
    return counts


def _check_labels(workspace, corpus: str, traces: list[dict], metrics: dict) -> None:
    """Every within-problem pair once; identical answers are 'same', a missing answer never is; for the regex
    corpora (exact-match answers) the labels are exactly answer equality."""
    answers = {(t["problem_id"], t["trace_id"]): t["answer"] for t in traces}
    pairs = _jsonl(workspace / paths.pairs(corpus))
    assert len(pairs) == metrics["label/n_pairs"] == sum(n * (n - 1) // 2 for n in _counts(traces).values())
    assert metrics["label/same_answer_share"] == pytest.approx(sum(p["label"] for p in pairs) / len(pairs))
    for p in pairs:
        a, b = answers[(p["problem_id"], p["trace_a"])], answers[(p["problem_id"], p["trace_b"])]
        if a is None or b is None:
            assert p["label"] == 0
        elif a == b or corpus != "math":  # math: equivalence goes beyond equal strings (math-verify)
            assert p["label"] == int(a == b)


def _check_prune(workspace, corpus: str, k: int) -> None:
    """cons@N runs every trace to its end; DeepPrune pays at least every trace's prefix and at most cons@N."""
    from flows.prune import prune_flow

    metrics = prune_flow(corpus)
    traces = _jsonl(workspace / paths.traces(corpus))
    assert metrics["prune/n"] == min(_counts(traces).values())  # prune.n null: every draw takes all of them
    assert metrics["prune/cons/tokens"] == sum(t["n_tokens"] for t in traces)
    floor = sum(min(t["n_tokens"], k) for t in traces)
    dp = metrics["prune/deepprune_tau0.5/tokens"]
    assert floor <= dp <= metrics["prune/cons/tokens"]
    assert metrics["prune/deepprune_tau0.5/token_reduction"] == pytest.approx(1 - dp / metrics["prune/cons/tokens"])
    assert metrics["prune/deepprune_tau0.5/judge_calls"] > 0
    deepconf = read_json(workspace / paths.prune_results(corpus))["summary"]["deepconf_low_online"]
    assert (deepconf == {"skipped": "needs logprobs"}) == (not all(t["logprobs"] for t in traces))


def test_recorded_corpora_through_every_fast_stage(workspace):
    from mlflow.tracking import MlflowClient

    from flows.judge import judge_flow
    from flows.report import report_flow

    recorded_only(workspace, metric="tnr_at_fnr_0.2")
    root = workspace / "mlartifacts"  # the project's artifact root (DEEPPRUNE_MLFLOW_ARTIFACTS)
    client = MlflowClient(tracking_uri=f"sqlite:///{workspace / 'mlflow.db'}")
    client.create_experiment("deepprune/judge", artifact_location=(root / "deepprune_judge").as_uri())  # untagged
    assert not _inside(client.get_experiment("0").artifact_location, root)  # MLflow's ./mlruns of the cwd
    for corpus in RECORDED:
        _sample_label_embed(workspace, corpus, problems=8)
    judge_metrics = judge_flow("date")
    for variant in VARIANTS:
        assert f"judge/{variant}/accuracy_at_0.5" in judge_metrics
        assert (workspace / paths.judge_model("date", variant)).exists() == (variant != "sbert_cosine")
    judge_flow("math")
    _sweep_by_tnr(workspace)
    _ablation_keys(workspace)
    for corpus in RECORDED:
        _check_prune(workspace, corpus, k=32)
    _check_transfer(workspace)
    text = (workspace / report_flow()).read_text()
    assert "Inter-trace redundancy" in text and "Online pruning" in text and "Table 1" in text
    assert "Transfer across corpora" in text and "0.7072" in text
    before = (workspace / paths.report_index()).read_bytes()
    alone = (workspace / report_flow("date")).read_text()  # one corpus alone, beside the pipeline's report
    assert (workspace / "reports/corpora/date/index.html").exists()
    assert "<h3>date</h3>" in alone and "<h3>math</h3>" not in alone  # its sections and its transfer cell only
    assert "<th>date</th>" in alone and "<th>math</th>" not in alone
    assert (workspace / paths.report_index()).read_bytes() == before
    assert "Focal-loss sweep" in text and "causal-LM judge" not in text  # judge_lm ran on no corpus
    _judge_runs_in_mlflow(workspace, {"judge@date", "judge@math"})
    _child_runs_carry_their_cell_and_roc(workspace, root)
    _prune_by_reasoning_words(workspace)


def _prune_by_reasoning_words(workspace) -> None:
    """A corpus truncated by reasoning words: its judges see the first 5 reasoning words, and the prune stage pays
    each trace what the label stage measured it had written when that prefix was complete (not k tokens); a trace
    with fewer reasoning words has finished and costs its length."""
    from flows.judge import judge_flow
    from flows.prune import prune_flow

    raw = read_params(workspace / "params.yaml")
    raw["corpora"]["date"]["truncation"] = {"strategy": "reasoning_words", "k": 5}
    (workspace / "params.yaml").write_text(yaml.safe_dump(raw))
    judge_flow("date")
    metrics = prune_flow("date")
    results = read_json(workspace / paths.prune_results("date"))
    assert results["strategy"] == "reasoning_words" and metrics["prune/k"] == 5
    traces = {(t["problem_id"], t["trace_id"]): t["n_tokens"] for t in _jsonl(workspace / paths.traces("date"))}
    costs = {(r["problem_id"], r["trace_id"]): r["prefix_tokens"]["reasoning_words_5"]
             for r in _jsonl(workspace / paths.prefixes("date"))}
    assert any(c is None for c in costs.values()) and any(c is not None for c in costs.values())
    assert all(c is None or 0 < c < traces[key] for key, c in costs.items())
    floor = sum(traces[key] if c is None else c for key, c in costs.items())  # every trace writes its prefix
    assert floor != sum(min(n, 5) for n in traces.values())
    assert floor <= metrics["prune/deepprune_tau0.5/tokens"] <= metrics["prune/cons/tokens"]
    assert floor <= metrics["prune/oracle/tokens"]
    label = read_json(workspace / paths.metrics("label", "date"))  # the report's table of what each prefix costs
    share = sum(c is not None for c in costs.values()) / len(costs)
    assert label["label/prefix/reasoning_words_5/complete_before_end"] == pytest.approx(share)
    assert "complete before the trace ends" in (workspace / paths.report_index()).read_text()


def _check_transfer(workspace) -> None:
    """The matrix's diagonal is the judge stage's pooled out-of-fold figure; an off-diagonal cell is the saved judge
    of one corpus scoring the other corpus's pairs; one MLflow child run per ordered pair of corpora."""
    import numpy as np

    from deepprune.judges.embeddings import load_table
    from deepprune.judges.encoder import load_encoder_judge
    from deepprune.metrics import auroc
    from deepprune.pairs import prefix_texts, read_pairs, read_prefixes
    from deepprune.judges.evaluate import pair_data
    from flows.transfer import transfer_flow

    primary = "encoder_focal_oversample"
    metrics = transfer_flow()
    assert set(metrics) == {f"transfer/{a}__{b}/{key}" for a in RECORDED for b in RECORDED
                            for key in ("auroc", "tnr_at_fnr_0.2", "n_pairs")}
    for corpus in RECORDED:
        judged = read_json(workspace / paths.metrics("judge", corpus))
        assert metrics[f"transfer/{corpus}__{corpus}/auroc"] == pytest.approx(judged[f"judge/{primary}/pooled_auroc"])
    pairs = read_pairs(workspace / paths.pairs("date"))
    texts = prefix_texts(read_prefixes(workspace / paths.prefixes("date")), "tokens_32", paths.prefixes("date"))
    data = pair_data(pairs, texts, load_table(workspace / paths.embeddings("date")).lookup("tokens_32"))
    judge = load_encoder_judge(workspace / paths.judge_model("math", primary))
    assert metrics["transfer/math__date/auroc"] == pytest.approx(auroc(data.labels, judge.score(data.emb_a, data.emb_b)))
    assert metrics["transfer/math__date/n_pairs"] == len(pairs)
    assert np.isfinite(metrics["transfer/date__math/auroc"])
    children = [r for r in mlflow_runs(f"sqlite:///{workspace / 'mlflow.db'}", "deepprune/transfer")
                if "mlflow.parentRunId" in r.data.tags]
    assert sorted((r.data.params["train_corpus"], r.data.params["test_corpus"]) for r in children) == sorted(
        (a, b) for a in RECORDED for b in RECORDED)
    assert len({frozenset(r.data.metrics) for r in children}) == 1 and "auroc" in children[0].data.metrics


def _sweep_by_tnr(workspace):
    from mlflow.tracking import MlflowClient

    from flows.sweep import run_sweep

    uri = f"sqlite:///{workspace / 'mlflow.db'}"
    sweep = run_sweep("date")
    assert sweep["sweep/points"] == 2
    results = read_json(workspace / paths.sweep_results("date"))
    scores = {p["name"]: p["summary"]["tnr_at_fnr_0.2"] for p in results["points"]}
    assert results["metric"] == "tnr_at_fnr_0.2" and scores[results["best"]] == max(scores.values())
    assert sweep["sweep/best/tnr_at_fnr_0.2"] == max(scores.values())
    points = [r for r in mlflow_runs(uri, "deepprune/sweep") if "mlflow.parentRunId" in r.data.tags]
    assert sorted(r.data.tags["variant"] for r in points) == ["ce", "focal_g2.0"]
    assert len({frozenset(r.data.metrics) for r in points}) == 1 and "tnr_at_fnr_0.2" in points[0].data.metrics
    versions = MlflowClient(tracking_uri=uri).search_model_versions("name='deepprune-judge-date'")
    assert [str(v.version) for v in versions] == ["1"] and results["registered"] == {"name": "deepprune-judge-date"}
    parent = next(r for r in mlflow_runs(uri, "deepprune/sweep") if "mlflow.parentRunId" not in r.data.tags)
    assert parent.data.tags["registered_version"] == "1"  # the store's count, kept out of the output
    assert versions[0].tags["point"] == results["best"]


def _ablation_keys(workspace):
    from flows.ablate import ablate_flow

    ablation = ablate_flow("date")
    truncations = ("tokens_16", "tokens_32", "reasoning_words_5")  # every prefix label built
    assert set(ablation) == {f"ablate/{t}/{v}/{key}" for t in truncations for v in VARIANTS
                             for key in ablate_names(0.2, 0.5)}
    assert {"auroc", "tnr_at_fnr_0.2", "tnr_at_0.5", "accuracy_at_0.5"} <= set(ablate_names(0.2, 0.5))
    rows = read_json(workspace / paths.ablate_results("date"))["rows"]
    for row in rows:  # the metrics file holds what the results file holds
        key = f"ablate/{row['strategy']}_{row['k']}/{row['variant']}/accuracy_at_0.5"
        assert ablation[key] == row["summary"]["accuracy_at_0.5"] and 0 <= ablation[key] <= 1
    children = [r for r in mlflow_runs(f"sqlite:///{workspace / 'mlflow.db'}", "deepprune/ablate")
                if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == len(truncations)


def _judge_runs_in_mlflow(workspace, stages: set[str]) -> None:
    runs = mlflow_runs(f"sqlite:///{workspace / 'mlflow.db'}", "deepprune/judge")
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert {r.data.tags["dvc_stage"] for r in parents} == stages
    assert all(r.info.status == "FINISHED" for r in runs)
    assert all(r.data.tags["prefect_flow_run_id"] != "none" for r in parents)
    assert len(children) == len(VARIANTS) * len(stages)
    date_children = [r for r in children if r.data.tags["corpus"] == "date"]
    assert {r.data.tags["variant"] for r in date_children} == set(VARIANTS)
    assert len({frozenset(r.data.metrics) for r in date_children}) == 1  # the compare view lines them up
    parent_date = next(r for r in parents if r.data.tags["dvc_stage"] == "judge@date")
    assert parent_date.data.params["judge.train.focal.gamma"] == "2.0"
    assert "judge/encoder_focal_oversample/auroc" in parent_date.data.metrics


def _child_runs_carry_their_cell_and_roc(workspace, root) -> None:
    """Every child run of judge@date, sweep@date and ablate@date, seen through MLflow's client, holds the params that
    define its cell and its own ROC points and figure under the same names (MLflow's compare view shows the files
    runs share); every experiment, `Default` and one that existed untagged included, is tagged as model
    development and keeps its artifacts under the project's artifact root; nothing is written beside the outputs."""
    from mlflow.tracking import MlflowClient

    from deepprune.config import load_params
    from flows._stage import ROC_FIGURE, ROC_POINTS

    client = MlflowClient(tracking_uri=f"sqlite:///{workspace / 'mlflow.db'}")
    experiments = client.search_experiments()
    assert {e.name for e in experiments} >= {"Default", "deepprune/judge", "deepprune/sweep", "deepprune/ablate"}
    for experiment in experiments:
        assert experiment.tags.get("mlflow.experimentKind") == "custom_model_development", experiment.name
        assert _inside(experiment.artifact_location, root), (experiment.name, experiment.artifact_location)
    params = load_params(workspace / "params.yaml")
    cells = {"judge": set(VARIANTS), "sweep": {"ce", "focal_g2.0"},
             "ablate": {"tokens_16", "tokens_32", "reasoning_words_5"}}
    for stage, names in cells.items():
        children = [r for r in mlflow_runs(client.tracking_uri, f"deepprune/{stage}")
                    if "mlflow.parentRunId" in r.data.tags and r.data.tags["corpus"] == "date"]
        assert {r.data.tags["variant"] for r in children} == names
        for run in children:
            p = run.data.params
            assert (p["seed"], p["corpus"], p["folds"]) == (str(params.seed), "date", str(params.label.folds))
            assert f"{p['truncation.strategy']}_{p['truncation.k']}" == (
                run.data.tags["variant"] if stage == "ablate" else "tokens_32")
            files = {f.path: f.file_size for f in client.list_artifacts(run.info.run_id)}
            assert set(files) == {ROC_POINTS, ROC_FIGURE} and all(0 < size < 50_000 for size in files.values())
            folder = Path(urllib.parse.urlsplit(run.info.artifact_uri).path)
            curves = json.loads((folder / ROC_POINTS).read_text())
            assert set(curves) == ({run.data.tags["variant"]} if stage != "ablate" else set(VARIANTS))
            for curve in curves.values():
                assert 2 <= len(curve["fpr"]) == len(curve["tpr"]) == len(curve["threshold"]) <= 200
                assert curve["n_pairs"] > 0 and 0 <= curve["auroc"] <= 1
            assert (folder / ROC_FIGURE).read_text().startswith("<svg")
    judge = {r.data.tags["variant"]: r.data.params for r in mlflow_runs(client.tracking_uri, "deepprune/judge")
             if "mlflow.parentRunId" in r.data.tags and r.data.tags["corpus"] == "date"}
    assert judge["encoder_focal_oversample"]["train.focal.gamma"] == str(params.judge.train.focal.gamma)
    assert judge["encoder_focal_oversample"]["train.oversample_ratio"] == str(params.judge.train.oversample_ratio)
    assert "train.focal.gamma" not in judge["encoder_plain"] and judge["encoder_plain"]["loss"] == "ce"
    assert not any(k.startswith("train.") for k in judge["sbert_cosine"])  # nothing trained
    stray = [p for p in workspace.rglob("*") if p.name in (ROC_POINTS, ROC_FIGURE) and root not in p.parents]
    assert stray == []


def _inside(location: str, root) -> bool:
    return Path(urllib.parse.unquote(urllib.parse.urlsplit(location).path)).resolve().is_relative_to(root.resolve())


@pytest.mark.slow  # generates and fine-tunes with a (tiny random) model
@pytest.mark.generation
def test_live_generation_causal_lm_judge_and_online_stage(workspace):
    from flows.judge import judge_flow
    from flows.judge_lm import judge_lm_flow
    from flows.report import report_flow
    from tasks.report import load_corpus_results

    for corpus, problems in (("math", 8), ("date", 8), ("live", 3)):
        _sample_label_embed(workspace, corpus, problems)
        judge_flow(corpus)
    live = _jsonl(workspace / paths.traces("live"))
    assert len(live) == 12 and all(t["tokenizer"] == "engine" and 0 < t["n_tokens"] <= 24 for t in live)
    assert {t["finish_reason"] for t in live} <= {"stop", "length"} and len({t["trace_id"] for t in live}) == 12
    assert len(list((workspace / paths.sample_cache("live")).rglob("*.jsonl"))) == 3  # one checkpoint a problem
    meta = read_json(workspace / paths.traces_meta("live"))
    assert meta["engine"]["engine"] == "transformers" and meta["generation"]["max_tokens"] == 24 and meta["n"] == 4

    lm = judge_lm_flow("date")
    for name in ("causal_lm", "causal_lm_zeroshot"):
        assert lm[f"judge_lm/{name}/n_pairs"] == 12  # 2 folds x 3 pairs per class, the same pairs for both
        assert lm[f"judge_lm/{name}/auroc_folds"] == 2
    assert lm["judge_lm/score_pairs_per_second"] > 0 and lm["judge_lm/train_pairs_per_second"] > 0
    assert (workspace / paths.judge_lm_model("date", 0)).exists()
    uri = f"sqlite:///{workspace / 'mlflow.db'}"
    children = [r for r in mlflow_runs(uri, "deepprune/judge_lm") if "mlflow.parentRunId" in r.data.tags]
    assert {r.data.tags["variant"] for r in children} == {"causal_lm", "causal_lm_zeroshot"}
    assert len({frozenset(r.data.metrics) for r in children}) == 1
    for run in children:  # the cell that defines it, and its ROC on the 12 held-out pairs
        assert run.data.params["seed"] and run.data.params["truncation.k"] == "16" and run.data.params["eval.folds"] == "2"
        assert ("train.steps" in run.data.params) == (run.data.tags["variant"] == "causal_lm")
        folder = Path(urllib.parse.urlsplit(run.info.artifact_uri).path)
        assert json.loads((folder / "roc_points.json").read_text())[run.data.tags["variant"]]["n_pairs"] == 12

    for corpus in ("math", "date", "live"):
        _check_prune(workspace, corpus, k=32)
    _online(workspace)
    raw = read_params(workspace / "params.yaml")  # this test ran the causal-LM judge on date only: params say so
    raw["judge_lm"]["corpora"] = ["date"]
    (workspace / "params.yaml").write_text(yaml.safe_dump(raw))
    text = (workspace / report_flow()).read_text()
    assert "causal-LM judge" in text and "Online pruning with real generation" in text and "deepprune_tau0.01" in text
    res = load_corpus_results.fn("date", ["encoder_focal_oversample", "sbert_cosine"], 0.2, 0.5, judge_lm=True,
                                 online=False)
    for name in ("causal_lm", "causal_lm_zeroshot", "encoder_focal_oversample", "sbert_cosine"):
        assert res.judge_lm[f"judge_lm/{name}/n_pairs"] == 12  # every judge on the same held-out pairs
    # params decide what the report reads: a metrics file left by a run under other params is not read
    (workspace / paths.metrics("judge_lm", "math")).write_text("{}")
    stale = load_corpus_results.fn("math", ["sbert_cosine"], 0.2, 0.5, judge_lm=False, online=False)
    assert stale.judge_lm is None and stale.online is None


def _online(workspace):
    from flows.online import online_flow

    metrics = online_flow("live")
    cons, merged = metrics["online/cons/tokens"], metrics["online/deepprune_tau0.01/tokens"]
    assert metrics["online/cons/token_reduction"] == 0 and metrics["online/cons/stopped_pruned"] == 0
    assert metrics["online/deepprune_tau0.01/stopped_pruned"] > 0 and merged < cons  # real generation, stopped early
    assert metrics["online/deepprune_tau0.01/token_reduction"] == pytest.approx(1 - merged / cons)
    rows = _jsonl(workspace / paths.online_outcomes("live"))
    assert len(rows) == 4 * 2 and {len(r["traces"]) for r in rows} == {4}  # 4 methods x 2 problems, N = 4 each
    assert all(t["stop_reason"] in ("finished", "pruned", "confidence_stop", "length") for r in rows for t in r["traces"])
    assert all(t["n_tokens"] <= 24 for r in rows for t in r["traces"])
    assert read_json(workspace / paths.online_meta("live"))["engine"]["engine"] == "transformers"
    assert len(list((workspace / paths.online_cache("live")).rglob("*.json"))) == 8
    assert online_flow("live") == metrics  # a rerun reads every (method, problem) back from its shard
    runs = mlflow_runs(f"sqlite:///{workspace / 'mlflow.db'}", "deepprune/online")
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert {r.data.tags["variant"] for r in children} == {"cons", "deepprune_tau0.5", "deepprune_tau0.01",
                                                         "deepconf_eta90"}
    assert len({frozenset(r.data.metrics) for r in children}) == 1  # the compare view lines them up


def test_failed_stage_marks_the_mlflow_run_failed(workspace):
    from flows.label import label_flow

    with pytest.raises(FileNotFoundError):
        label_flow("math")  # no traces sampled in this workspace
    runs = mlflow_runs(f"sqlite:///{workspace / 'mlflow.db'}", "deepprune/label")
    assert [r.info.status for r in runs] == ["FAILED"]
