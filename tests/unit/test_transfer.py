"""The transfer matrix: which scores fill which cell, and what a bad scorer gets."""

import numpy as np
import pytest

from deepprune.judges.transfer import IN_DISTRIBUTION, TRANSFER, UNTRAINED, transfer_matrix
from deepprune.metrics import judge_metrics

LABELS = {"a": np.array([1, 0, 1, 0, 1]), "b": np.array([0, 1, 1, 0])}
OOF = {"a": {"head": np.array([0.9, 0.2, 0.7, 0.4, 0.6]), "cos": np.array([0.5, 0.6, 0.7, 0.1, 0.9])},
       "b": {"head": np.array([0.3, 0.8, 0.6, 0.1]), "cos": np.array([0.2, 0.4, 0.9, 0.3])}}


def test_diagonal_is_out_of_fold_off_diagonal_is_the_other_corpus_judge_untrained_is_its_own_scores():
    calls = []

    def score(train, variant, test):
        calls.append((train, variant, test))
        return 1.0 - OOF[test][variant]  # a judge that transfers badly: every ranking reversed

    cells = transfer_matrix(["a", "b"], {"head": True, "cos": False}, LABELS, OOF, score, 0.2, 0.5)
    assert sorted(calls) == [("a", "head", "b"), ("b", "head", "a")]  # only a trained judge off the diagonal
    by = {(c.train, c.test, c.variant): c for c in cells}
    assert len(cells) == 2 * 2 * 2
    for corpus in ("a", "b"):
        cell = by[(corpus, corpus, "head")]
        assert cell.kind == IN_DISTRIBUTION and cell.metrics == judge_metrics(LABELS[corpus], OOF[corpus]["head"], 0.2, 0.5)
    flipped = by[("a", "b", "head")]
    assert flipped.kind == TRANSFER and flipped.name == "a__b"
    assert flipped.metrics["auroc"] == pytest.approx(1 - by[("b", "b", "head")].metrics["auroc"])
    untrained = by[("a", "b", "cos")]
    assert untrained.kind == UNTRAINED and untrained.metrics == by[("b", "b", "cos")].metrics


def test_a_scorer_that_returns_the_wrong_number_of_scores_is_named():
    with pytest.raises(ValueError, match=r"transfer a__b/head: 3 scores for 4 pairs"):
        transfer_matrix(["a", "b"], {"head": True}, LABELS, OOF, lambda *_: np.zeros(3), 0.2, 0.5)
