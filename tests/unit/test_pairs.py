"""Pair building, grouped folds, oversampling, redundancy statistics."""

from collections import Counter

import numpy as np

from deepprune.answers import AnswerSpec
from deepprune.data.schema import Trace
from deepprune.pairs import (assign_folds, build_pairs, cap_per_problem, oversample_minority, redundancy_stats,
                             with_folds)

SPEC = AnswerSpec("boxed_math")


def _trace(pid, tid, answer, gold="1"):
    return Trace(problem_id=pid, dataset="t", model="m", trace_id=tid, text="", n_tokens=5, tokenizer="qwen",
                 answer=answer, gold=gold, correct=answer is not None and answer == gold)


def test_all_pairs_with_equivalence_labels():
    problems = {"p": [_trace("p", "a", "1"), _trace("p", "b", r"\frac{2}{2}"), _trace("p", "c", "2"),
                      _trace("p", "d", None)]}
    pairs = build_pairs(problems, SPEC)
    assert len(pairs) == 6  # C(4, 2)
    labels = {(p.trace_a, p.trace_b): p.label for p in pairs}
    assert labels == {("a", "b"): 1, ("a", "c"): 0, ("a", "d"): 0, ("b", "c"): 0, ("b", "d"): 0, ("c", "d"): 0}


def test_pairs_never_cross_problems():
    problems = {"p": [_trace("p", str(i), "1") for i in range(3)], "q": [_trace("q", str(i), "1") for i in range(5)]}
    pairs = build_pairs(problems, SPEC)
    assert Counter(p.problem_id for p in pairs) == {"p": 3, "q": 10}


def test_folds_are_grouped_and_spread_disagreements():
    problems = {f"p{i}": [_trace(f"p{i}", "a", "1"), _trace(f"p{i}", "b", "1" if i >= 5 else "2")] for i in range(20)}
    pairs = build_pairs(problems, SPEC)
    folds = assign_folds(pairs, 5, seed=3)
    assert set(folds.values()) == set(range(5))
    mixed = [folds[f"p{i}"] for i in range(5)]  # the 5 problems with a disagreement
    assert sorted(mixed) == [0, 1, 2, 3, 4]
    assert folds == assign_folds(pairs, 5, seed=3)  # seeded
    for pair in with_folds(pairs, folds):
        assert pair.fold == folds[pair.problem_id]


def test_oversampling_reaches_the_ratio_and_keeps_everything():
    labels = np.array([1] * 90 + [0] * 10)
    idx = oversample_minority(labels, 1.0, np.random.default_rng(0))
    counts = Counter(labels[idx].tolist())
    assert counts[0] == counts[1] == 90
    assert set(range(100)) <= set(idx.tolist())
    half = oversample_minority(labels, 0.5, np.random.default_rng(0))
    assert Counter(labels[half].tolist())[0] == 45
    assert len(oversample_minority(labels, 0.05, np.random.default_rng(0))) == 100


def test_redundancy_stats():
    problems = {"p": [_trace("p", "a", "1"), _trace("p", "b", "1"), _trace("p", "c", "2")],
                "q": [_trace("q", "a", "1"), _trace("q", "b", "1")]}
    stats = redundancy_stats(problems, build_pairs(problems, SPEC), SPEC)
    assert stats["label/n_pairs"] == 4
    assert stats["label/same_answer_share"] == 0.5
    assert stats["label/problems_with_disagreement"] == 1
    assert stats["label/majority_vote_accuracy"] == 1.0


def test_training_pairs_are_capped_per_problem_at_random_and_reproducibly():
    problems = np.array(["p"] * 780 + ["q"] * 28 + ["r"] * 45, dtype=object)  # 40, 8 and 10 traces
    rows = np.arange(len(problems))
    kept = cap_per_problem(rows, problems, 40, seed=7)
    assert Counter(problems[kept].tolist()) == {"p": 40, "q": 28, "r": 40}  # a problem under the cap keeps all
    assert np.all(np.diff(kept) > 0)  # ascending, no row twice
    np.testing.assert_array_equal(kept, cap_per_problem(rows, problems, 40, seed=7))
    assert not np.array_equal(kept, cap_per_problem(rows, problems, 40, seed=8))
    p_rows = kept[problems[kept] == "p"]
    assert p_rows.max() > 390  # drawn from the whole problem, not its first 40 pairs
    np.testing.assert_array_equal(cap_per_problem(rows, problems, None, seed=7), rows)
    subset = rows[rows % 2 == 0]  # a training fold: only its own rows come back
    assert set(cap_per_problem(subset, problems, 10, seed=1).tolist()) <= set(subset.tolist())
