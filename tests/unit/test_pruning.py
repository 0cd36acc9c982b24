"""Pruning methods and the replay simulator: invariants, accounting, thresholds, bounds."""

import numpy as np
import pytest

from deepprune.pruning import methods as m
from deepprune.pruning.methods import Problem
from deepprune.pruning.simulate import MethodSpec, simulate, summarize


def _problem(classes, lengths, correct_class=0, noise=0.0, seed=0, confidence=None):
    classes = np.array(classes)
    n = len(classes)
    same = (classes[:, None] == classes[None, :]).astype(float)
    rng = np.random.default_rng(seed)
    judge = np.clip(0.1 + 0.8 * same + noise * rng.normal(size=(n, n)), 0.01, 0.99)  # P(yes) is never 0 or 1
    judge = (judge + judge.T) / 2
    return Problem("p", classes, classes == correct_class, np.array(lengths), judge=judge, cosine=judge.copy(),
                   confidence=confidence)


def test_each_trace_in_exactly_one_cluster():
    rng = np.random.default_rng(0)
    sim = rng.random((12, 12))
    sim = (sim + sim.T) / 2
    order = list(rng.permutation(12))
    for tau in (0.0, 0.3, 0.5, 0.8, 1.0):
        for cap in (None, 2):
            clusters, calls = m.greedy_cluster(order, sim, tau, r=2, max_clusters=cap)
            assert sorted(i for c in clusters for i in c) == list(range(12))
            assert cap is None or len(clusters) <= cap
            assert calls <= 12 * max(len(clusters), 1) * 2


def test_tau_one_is_cons_at_n_and_tau_zero_is_one_cluster():
    p = _problem([0, 1, 0, 2, 0, 1], [100, 200, 300, 400, 500, 600])
    order = [5, 1, 0, 2, 3, 4]  # the minority answer arrives first
    cons = m.cons_at_n(p, order, k=50)
    full = m.deepprune(p, order, k=50, tau=1.0)
    assert (full.correct, full.tokens, full.completed) == (cons.correct, cons.tokens, cons.completed)
    one, _ = m.greedy_cluster(order, p.judge, tau=0.0)
    assert len(one) == 1 and m.deepprune(p, order, k=50, tau=0.0, q=2).completed == 3


def test_pruned_traces_never_count_as_complete():
    p = _problem([0, 0, 0, 1, 1], [100, 100, 100, 100, 100])
    out = m.deepprune(p, [0, 3, 1, 2, 4], k=10, tau=0.5, q=1)
    # clusters {0,1,2} and {3,4}: seeds 0 and 3 complete, the largest cluster resumes one member (1)
    assert out.completed == 3 and out.clusters == 2
    assert out.tokens == 3 * 100 + 2 * 10


def test_token_accounting_on_a_hand_built_case():
    p = _problem([0, 0, 1, 0], [300, 50, 200, 400])
    # order 0,1,2,3; perfect judge: clusters {0,1,3} and {2}; q = 0 resumes nobody
    out = m.deepprune(p, [0, 1, 2, 3], k=100, tau=0.5, q=0)
    # seeds 0 (300) and 2 (200) complete; 1 costs min(50, 100) = 50; 3 costs its 100-token prefix
    assert out.tokens == 300 + 200 + 50 + 100
    assert out.judge_calls == 0 + 1 + 1 + 2  # one comparison per existing cluster (r = 1)
    assert m.cons_at_n(p, [0, 1, 2, 3], k=100).tokens == 950


def test_vote_breaks_ties_by_earliest_finish_and_ignores_missing_answers():
    p = Problem("p", np.array([0, 1, -1, -2]), np.array([False, True, False, False]), np.array([500, 100, 10, 10]))
    assert m.vote(p, [0, 1, 2, 3]) == 1  # 0 and 1 tie; trace 1 finishes first
    assert m.vote(p, [2, 3]) == 2  # nothing but missing answers: the first


def test_oracle_is_a_lower_bound_for_pure_clusterings():
    rng = np.random.default_rng(1)
    for trial in range(20):
        classes = rng.integers(0, 3, size=10)
        p = _problem(classes, rng.integers(50, 500, size=10), correct_class=int(np.bincount(classes).argmax()))
        order = list(rng.permutation(10))
        oracle = m.oracle(p, order, k=40)
        assert oracle.correct == m.cons_at_n(p, order, k=40).correct
        assert oracle.tokens <= m.cons_at_n(p, order, k=40).tokens
        for q in (0, 1, 3):  # a perfect judge never mixes answers: it can only spend more than the oracle
            assert m.deepprune(p, order, k=40, tau=0.5, q=q).tokens >= oracle.tokens
        assert m.deepprune(p, order, k=40, tau=0.5, q=0).tokens == oracle.tokens


def test_deepconf_threshold_direction():
    scores = np.arange(1, 101, dtype=float)
    low, high = m.deepconf_threshold(scores, 10), m.deepconf_threshold(scores, 90)
    assert np.mean(scores >= low) == pytest.approx(0.10, abs=0.01)  # DeepConf-low keeps the top 10%
    assert np.mean(scores >= high) == pytest.approx(0.90, abs=0.01)  # DeepConf-high keeps the top 90%
    assert low > high


def test_deepconf_online_stops_low_confidence_traces():
    confident, shaky = np.full(100, 5.0), np.concatenate([np.full(30, 5.0), np.full(70, 0.5)])
    conf = (confident, confident, confident, shaky, confident)
    p = _problem([0, 0, 0, 1, 0], [100] * 5, confidence=conf)
    out = m.deepconf_online(p, [0, 1, 2, 3, 4], k=10, eta=90, window=10, warmup=3)
    # warm-up 0,1,2 complete (300); trace 3 stops once its window mean drops below 5.0: at token 31 (31 tokens)
    assert out.tokens == 300 + 31 + 100 and out.completed == 4 and out.correct
    assert m.trace_confidence(np.array([1.0, 3.0, 5.0]), 2).tolist() == [1.0, 2.0, 4.0]


def test_simulator_same_draws_intervals_and_needs_logprobs():
    rng = np.random.default_rng(3)
    problems = [_problem(rng.integers(0, 2, size=12), rng.integers(50, 400, size=12), noise=0.2, seed=s)
                for s in range(6)]
    specs = [MethodSpec("cons", "cons"), MethodSpec("dp", "deepprune", {"tau": 0.5}),
             MethodSpec("rand", "random", {"match": "dp"}), MethodSpec("oracle", "oracle"),
             MethodSpec("esc", "esc", {"window": 4}),
             MethodSpec("dc", "deepconf_online", {"eta": 10, "window": 8, "warmup": 4})]
    results = simulate(problems, specs, n=8, k=30, repetitions=10, seed=7)
    assert results["dc"].skipped == "needs logprobs"
    again = simulate(problems, specs, n=8, k=30, repetitions=10, seed=7)
    assert results["dp"].tokens == again["dp"].tokens  # seeded
    summary = summarize(results, "cons")
    assert summary["cons"]["token_reduction"] == 0
    assert summary["oracle"]["tokens"] <= summary["cons"]["tokens"]
    assert summary["rand"]["completed"] < summary["cons"]["completed"]
    assert summary["dp"]["tokens_lo"] <= summary["dp"]["tokens"] <= summary["dp"]["tokens_hi"]
    with pytest.raises(ValueError, match="exceeds the traces available"):
        simulate(problems, specs, n=13, k=30, repetitions=1, seed=0)


def test_judge_seconds_count_every_prefix_and_call():
    from deepprune.pruning.simulate import add_judge_seconds

    methods = [MethodSpec("dp", "deepprune", {"tau": 0.5}), MethodSpec("sb", "sbert", {"tau": 0.9}),
               MethodSpec("cons", "cons")]
    summary = {"dp": {"judge_calls": 100.0}, "sb": {"judge_calls": 50.0}, "cons": {"judge_calls": 0.0}}
    add_judge_seconds(summary, methods, {"encode_seconds_per_prefix": 0.5, "score_seconds_per_pair": 0.01}, 10)
    assert summary["dp"]["judge_seconds"] == pytest.approx(10 * 0.5 + 100 * 0.01)
    assert summary["sb"]["judge_seconds"] == pytest.approx(10 * 0.5)
    assert "judge_seconds" not in summary["cons"]
