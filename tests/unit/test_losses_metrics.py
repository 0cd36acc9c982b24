"""Focal loss against its formula; TNR at FNR against a hand-computed ROC; the small ROC a child run keeps."""

import math

import numpy as np
import pytest
import torch

from deepprune.judges.losses import cross_entropy, focal_loss
from deepprune.metrics import (accuracy_at_threshold, auroc, judge_metrics, rates_at_threshold, roc_points,
                               roc_table, summarize_folds, tnr_at_fnr, within_problem_auroc)
from deepprune.plots import roc_svg


def test_focal_loss_matches_formula():
    logits = torch.tensor([2.0, -1.0, 0.3, -0.2])
    targets = torch.tensor([1.0, 1.0, 0.0, 0.0])
    alpha, gamma = 0.25, 2.0
    expected = 0.0
    for z, y in zip(logits.tolist(), targets.tolist()):
        p = 1 / (1 + math.exp(-z))
        pt = p if y == 1 else 1 - p
        at = alpha if y == 1 else 1 - alpha
        expected += -at * (1 - pt) ** gamma * math.log(pt)
    assert focal_loss(logits, targets, alpha, gamma).item() == pytest.approx(expected / 4, rel=1e-6)


def test_focal_reduces_to_half_cross_entropy():
    logits = torch.randn(64, generator=torch.Generator().manual_seed(0))
    targets = (torch.rand(64, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    assert focal_loss(logits, targets, 0.5, 0.0).item() == pytest.approx(0.5 * cross_entropy(logits, targets).item(), rel=1e-6)


def test_focal_downweights_easy_examples():
    easy, hard = torch.tensor([4.0]), torch.tensor([-1.0])
    one = torch.tensor([1.0])
    ratio_focal = focal_loss(easy, one, 0.5, 2.0) / focal_loss(hard, one, 0.5, 2.0)
    ratio_ce = cross_entropy(easy, one) / cross_entropy(hard, one)
    assert ratio_focal < ratio_ce


def test_tnr_at_fnr_on_a_hand_computed_roc():
    # positives (same answer) score 0.9 0.8 0.7 0.35 0.2; negatives 0.6 0.4 0.3 0.1
    labels = [1, 1, 1, 1, 1, 0, 0, 0, 0]
    scores = [0.9, 0.8, 0.7, 0.35, 0.2, 0.6, 0.4, 0.3, 0.1]
    # FNR <= 0.2 needs TPR >= 0.8: threshold 0.35 keeps 4 of 5 positives; negatives below it: 0.3, 0.1 -> TNR 2/4
    assert tnr_at_fnr(labels, scores, 0.2) == pytest.approx(0.5)
    # FNR <= 0.4 (threshold 0.7): negatives below: all four -> TNR 1.0
    assert tnr_at_fnr(labels, scores, 0.4) == pytest.approx(1.0)
    # AUROC: of the 20 (positive, negative) pairs the positive ranks higher in 4 + 4 + 4 + 2 + 1
    assert auroc(labels, scores) == pytest.approx(15 / 20)
    assert rates_at_threshold(labels, scores, 0.5) == (pytest.approx(0.75), pytest.approx(0.6))
    # at 0.5: 3 of 5 positives called same, 3 of 4 negatives called different -> 6 of 9 right
    assert accuracy_at_threshold(labels, scores, 0.5) == pytest.approx(6 / 9)


def test_judge_metrics_keys_are_the_names_metric_names_builds():
    from deepprune.metric_names import judge_metric_names, summary_names

    one = judge_metrics([1, 0, 1, 0], [0.9, 0.2, 0.4, 0.6], 0.1, 0.4)
    assert tuple(one) == judge_metric_names(0.1, 0.4)
    assert {"tnr_at_fnr_0.1", "tnr_at_0.4", "tpr_at_0.4", "accuracy_at_0.4"} <= set(one)
    assert one["accuracy_at_0.4"] == pytest.approx(0.75)  # right: 0.9 and 0.4 (same, >= 0.4), 0.2; wrong: 0.6
    assert set(summarize_folds([one, one])) == set(summary_names(0.1, 0.4))


def test_within_problem_auroc_ignores_what_only_tells_problems_apart():
    """Scores that only know which problem is consistent (every pair of problem a above every pair of b) have a
    high pooled AUROC and, within each problem, none: 0.5. One-label problems are left out of the mean."""
    labels = [1, 1, 0, 1, 0, 0, 1, 1]
    problems = ["a", "a", "a", "b", "b", "b", "c", "c"]
    by_problem = [0.9, 0.9, 0.9, 0.2, 0.2, 0.2, 0.95, 0.95]
    assert auroc(labels, by_problem) > 0.7
    assert within_problem_auroc(labels, by_problem, problems) == (0.5, 2)
    ranked = [0.6, 0.7, 0.5, 0.3, 0.1, 0.2, 0.95, 0.95]  # inside each problem, the same pairs above the different
    assert within_problem_auroc(labels, ranked, problems) == (1.0, 2)
    value, counted = within_problem_auroc([1, 1], [0.3, 0.4], ["a", "a"])
    assert math.isnan(value) and counted == 0


def test_metrics_are_nan_with_one_class_and_folds_skip_nan():
    assert math.isnan(auroc([1, 1], [0.2, 0.3]))
    assert math.isnan(tnr_at_fnr([1, 1], [0.2, 0.3]))
    folds = [judge_metrics([1, 0, 1], [0.9, 0.1, 0.8], 0.2, 0.5), judge_metrics([1, 1], [0.5, 0.6], 0.2, 0.5),
             judge_metrics([1, 0], [0.4, 0.6], 0.2, 0.5)]
    summary = summarize_folds(folds)
    assert summary["auroc"] == pytest.approx(0.5)
    assert summary["auroc_folds"] == 2
    assert summary["n_pairs"] == 7
    assert summary["auroc_std"] == pytest.approx(np.std([1.0, 0.0], ddof=1))


def test_roc_table_is_small_keeps_both_ends_and_says_when_there_is_no_curve():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 3000)
    scores = rng.random(3000) + 0.5 * labels
    table = roc_table(labels, [*scores[:-1], float("nan")])  # a pair without a score is left out
    assert len(table["fpr"]) == len(table["tpr"]) == len(table["threshold"]) == 200
    assert (table["fpr"][0], table["tpr"][0], table["threshold"][0]) == (0.0, 0.0, None)  # above every score
    assert (table["fpr"][-1], table["tpr"][-1]) == (1.0, 1.0) and table["n_pairs"] == 2999
    assert table["fpr"] == sorted(table["fpr"]) and table["auroc"] == pytest.approx(auroc(labels[:-1], scores[:-1]))
    assert roc_table([1, 1], [0.2, 0.3]) == {"fpr": [], "tpr": [], "threshold": [], "auroc": None, "n_pairs": 2}
    svg = roc_svg({"a <b>": table, "one class": roc_table([1, 1], [0.2, 0.3])}, "t")
    assert svg.startswith("<svg") and "a &lt;b&gt; (AUROC" in svg and "one class: no curve" in svg and len(svg) < 10_000


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roc_points_and_auroc_equal_scikit_learns_with_ties(seed):
    """The project's ROC (numpy only: sklearn.metrics costs every stage ~4 s of imports) gives scikit-learn's points
    and area, tied scores included (rounded scores make many ties)."""
    from sklearn.metrics import roc_auc_score, roc_curve

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 300)
    scores = np.round(rng.random(300) * 0.6 + labels * 0.3, 1 + seed % 2)
    fpr, tpr, thr = roc_points(labels, scores)
    ref = roc_curve(labels, scores, drop_intermediate=False)
    for ours, theirs in zip((fpr, tpr, thr), ref):
        np.testing.assert_allclose(ours, theirs)
    assert auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
