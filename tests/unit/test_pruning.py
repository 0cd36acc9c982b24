"""The pruning controller over the replay engine: invariants, accounting, DeepConf's window rule, the simulator."""

import numpy as np
import pytest

from deepprune.answers import AnswerSpec
from deepprune.metric_names import MATCHED_MINUS_RANDOM as GAIN
from deepprune.pruning import confidence as dc
from deepprune.pruning.controller import (RAN_TO_END, MethodSpec, greedy_cluster, run_deepconf_online,
                                          run_method, stable_seed)
from deepprune.pruning.replay import RecordedTrace
from deepprune.pruning.simulate import replay_corpus
from deepprune.pruning.simulate import (add_matched_minus_random, deepconf_warmup_error, method_specs, simulate,
                                       summarize)

SPEC = AnswerSpec(extractor="regex", pattern=r"ANS=(\d+)")


def _corpus(problems):
    """problems: dicts of classes (< 0: no answer), lengths, judge matrix, optional per-token confidences."""
    recorded, gold, judge = {}, {}, {}
    for i, p in enumerate(problems):
        pid = p.get("pid", f"p{i}")
        conf = p.get("confidence")
        recorded[pid] = [RecordedTrace(f"w{j} " + (f"ANS={c}" if c >= 0 else "none"), int(length), "stop",
                                       None if conf is None else [[-float(x), -float(x)] for x in conf[j]])
                         for j, (c, length) in enumerate(zip(p["classes"], p["lengths"]))]
        gold[pid], judge[pid] = str(p.get("correct_class", 0)), p["judge"]
    return replay_corpus(recorded, SPEC, gold, {"judge": judge, "cosine": judge})


def _judge(classes, noise=0.0, seed=0):
    classes = np.asarray(classes)
    same = (classes[:, None] == classes[None, :]) & (classes[:, None] >= 0)
    rng = np.random.default_rng(seed)
    judge = np.clip(0.1 + 0.8 * same + noise * rng.normal(size=same.shape), 0.01, 0.99)  # P(yes) never 0 or 1
    return (judge + judge.T) / 2


def _one(classes, lengths, correct_class=0, noise=0.0, seed=0, confidence=None):
    problems, engine = _corpus([{"classes": classes, "lengths": lengths, "correct_class": correct_class,
                                 "judge": _judge(classes, noise, seed), "confidence": confidence}])
    return problems[0], engine


def _run(problem, engine, order, k, kind, name=None, budgets=None, rng=None, **settings):
    spec = MethodSpec(name or kind, kind, settings)
    return run_method(spec, engine, problem.task(order), k, problem.similarities, rng, budgets)


def test_each_trace_in_exactly_one_cluster():
    rng = np.random.default_rng(0)
    sim = rng.random((12, 12))
    sim = (sim + sim.T) / 2
    order = list(rng.permutation(12))
    for tau in (0.0, 0.3, 0.5, 0.8, 1.0):
        for cap in (None, 2):
            clusters, calls = greedy_cluster(order, sim, tau, r=2, max_clusters=cap)
            assert sorted(i for c in clusters for i in c) == list(range(12))
            assert cap is None or len(clusters) <= cap
            assert calls <= 12 * max(len(clusters), 1) * 2


def test_tau_one_is_cons_at_n_and_tau_zero_is_one_cluster():
    p, engine = _one([0, 1, 0, 2, 0, 1], [100, 200, 300, 400, 500, 600])
    order = [5, 1, 0, 2, 3, 4]  # the minority answer arrives first
    cons = _run(p, engine, order, 50, "cons")
    full = _run(p, engine, order, 50, "deepprune", tau=1.0)
    assert (full.answer, full.tokens, full.completed) == (cons.answer, cons.tokens, cons.completed) == ("0", 2100, 6)
    one = _run(p, engine, order, 50, "deepprune", tau=0.0, q=2)
    assert len(one.clusters) == 1 and one.completed == 3


def test_pruned_traces_never_vote_and_cost_their_prefix():
    p, engine = _one([0, 0, 0, 1, 1], [100] * 5)
    out = _run(p, engine, [0, 3, 1, 2, 4], 10, "deepprune", tau=0.5, q=1)
    # clusters {0,1,2} and {3,4}: seeds 0 and 3 complete, the largest cluster resumes one member (1)
    assert out.completed == 3 and len(out.clusters) == 2
    assert out.tokens == 3 * 100 + 2 * 10
    assert [t.stop_reason for t in out.traces] == ["finished", "finished", "finished", "pruned", "pruned"]
    assert [t.votes for t in out.traces] == [True, True, True, False, False]


def test_the_cluster_size_vote_counts_pruned_traces_through_their_cluster():
    """Five long traces answer 0 (right), three short ones answer 1 and end within their prefix. With a perfect
    judge, all_completed counts 3 votes each (seed and 2 resumed against 3 completed), a tie the shortest trace
    wins; cluster_size counts the clusters, 5 against 3, as cons@N does."""
    p, engine = _one([1, 0, 1, 0, 1, 0, 0, 0], [40, 500, 40, 500, 40, 500, 500, 500], correct_class=0)
    order = list(range(8))
    cons = _run(p, engine, order, 100, "cons")
    every = _run(p, engine, order, 100, "deepprune", tau=0.5, q=2)
    sized = _run(p, engine, order, 100, "deepprune", tau=0.5, q=2, vote="cluster_size")
    assert cons.answer == "0" and cons.correct
    assert every.answer == "1" and not every.correct  # 3 against 3, the 40-token traces finish first
    assert sized.answer == "0" and sized.correct
    assert (sized.tokens, sized.completed) == (every.tokens, every.completed)  # who runs is the same; only the count
    assert [t.votes for t in sized.traces] == [t.votes for t in every.traces]
    # two clusters of 8: one with 6 completed members (8/6 each, which sum to 7.999999999999999 in floats), one
    # with its seed alone (8): a tie, which goes to the first finisher (trace 0, 100 tokens), not to the float
    p, engine = _one([0, 1] * 8, [100] + [500] * 15, correct_class=0)
    tied = _run(p, engine, list(range(16)), 50, "deepprune", tau=0.5, q=5, vote="cluster_size")
    assert tied.completed == 7 and tied.answer == "0"


def test_the_perfect_judge_is_deepprune_with_a_judge_that_knows_the_answers():
    classes = [2, 0, -1, 0, 1, 2, 0, -1, 0]  # -1: no answer, which agrees with nothing (not even another -1)
    lengths = [300, 250, 400, 120, 80, 500, 260, 30, 310]
    p, engine = _one(classes, lengths, correct_class=0)  # the replayed judge scores 0.9 for same answers, else 0.1
    order = [4, 7, 0, 2, 1, 3, 5, 6, 8]
    for vote in ("all_completed", "cluster_size"):
        known = _run(p, engine, order, 100, "deepprune", tau=0.5, q=2, vote=vote)
        perfect = _run(p, engine, order, 100, "perfect_judge", name="pj", q=2, vote=vote)
        assert (perfect.answer, perfect.tokens, perfect.completed, perfect.clusters) == \
            (known.answer, known.tokens, known.completed, known.clusters)
    pos = {cls: [i for i, t in enumerate(order) if classes[t] == cls] for cls in (0, 1, 2)}
    assert sorted(map(sorted, perfect.clusters)) == sorted([pos[0], pos[1], pos[2], [order.index(2)], [order.index(7)]])


def test_a_cluster_none_of_whose_members_ran_to_the_end_has_no_cluster_size_vote():
    from deepprune.pruning.controller import TraceRun, _voters, vote

    p, _ = _one([0, 1, 1], [100, 100, 100], correct_class=1)
    traces = [TraceRun(s) for s in (0, 1, 2)]
    for t, answer in zip(traces, ("0", "1", None)):
        t.answer = answer
    # cluster [2] ended by a live engine's abort: no member ran to the end, so it has no weight to share
    voters, weights = _voters("cluster_size", [[0], [1], [2]], [0], completed=[0, 1])
    assert (voters, weights) == ([0, 1], [1.0, 1.0])
    voters, weights = _voters("cluster_size", [[0, 2], [1]], [0, 2], completed=[1])
    assert (voters, weights) == ([1], [1.0]) and vote(p.task([0, 1, 2]), traces, voters, weights) == 1


def test_the_perfect_judge_runs_on_the_replay_engine_only():
    p, engine = _one([0, 0, 1], [100, 100, 100])

    class Live:
        identity = {"engine": "transformers"}

        def generate(self, jobs):
            return engine.generate(jobs)

    with pytest.raises(ValueError, match="replay engine only"):
        _run(p, Live(), [0, 1, 2], 10, "perfect_judge")


def test_token_accounting_on_a_hand_built_case():
    p, engine = _one([0, 0, 1, 0], [300, 150, 200, 400])
    # arrival 0,1,2,3; perfect judge: clusters {0,1,3} and {2}; q = 0 resumes nobody
    out = _run(p, engine, [0, 1, 2, 3], 100, "deepprune", tau=0.5, q=0)
    assert out.tokens == 300 + 100 + 200 + 100  # seeds 0 and 2 complete; 1 and 3 cost their 100-token prefix
    assert out.judge_calls == 0 + 1 + 1 + 2  # one comparison per existing cluster (r = 1)
    assert _run(p, engine, [0, 1, 2, 3], 100, "cons").tokens == 1050


def test_a_trace_that_finishes_within_its_prefix_has_completed_and_votes():
    # trace 1 ends at 40 tokens, inside its k = 100 prefix; the judge would merge it into trace 0's cluster
    p, engine = _one([0, 1, 1, 0], [300, 40, 400, 500], correct_class=1)
    out = _run(p, engine, [0, 1, 2, 3], 100, "deepprune", tau=0.05, q=0)  # everything merges
    assert len(out.clusters) == 1
    assert [t.stop_reason for t in out.traces] == ["finished", "finished", "pruned", "pruned"]
    assert out.tokens == 300 + 40 + 100 + 100 and [t.votes for t in out.traces] == [True, True, False, False]
    # a trace of exactly k tokens has not seen its end within the prefix: it is pruned like any other
    p, engine = _one([0, 1], [300, 100])
    out = _run(p, engine, [0, 1], 100, "deepprune", tau=0.05, q=0)
    assert [t.stop_reason for t in out.traces] == ["finished", "pruned"] and out.tokens == 400


def test_sequential_depth_counts_rounds_one_after_another():
    p, engine = _one([0, 0, 1, 0, 1, 0], [300, 150, 200, 400, 250, 50])
    order = list(range(6))
    assert _run(p, engine, order, 100, "cons").depth == 400  # all in parallel: the longest trace
    # DeepPrune: a prefix round (100), then seeds 0 and 2 and the resumed 1 and 3 go on: the longest tail is 300
    dp = _run(p, engine, order, 100, "deepprune", tau=0.5, q=2)
    assert dp.depth == 100 + 300
    # ESC, windows of 4: [300, 150, 200, 400] disagree, then [250, 50]: one window after the other
    assert _run(p, engine, order, 100, "esc", window=4).depth == 400 + 250


def test_settle_stops_sampling_once_a_window_seeds_no_new_cluster():
    p, engine = _one([0, 0, 0, 0, 1, 1, 0, 0], [100] * 8)
    out = _run(p, engine, list(range(8)), 10, "settle", tau=0.5, window=4, q=2)
    # the first window is one cluster: sampling stops; the seed and two resumed members run, one member is pruned
    assert out.started == 4 and out.answer == "0"
    assert [t.stop_reason for t in out.traces] == ["finished"] * 3 + ["pruned"] + ["unsampled"] * 4
    assert out.tokens == 3 * 100 + 10 and out.depth == 100  # the resumed go on from token 10, finishing at 100
    # a second answer in the first window: the second window is started; it only joins clusters, so sampling stops
    p, engine = _one([0, 1, 0, 0, 0, 1, 0, 0], [100] * 8)
    out = _run(p, engine, list(range(8)), 10, "settle", tau=0.5, window=3, q=1)
    assert out.started == 6 and len(out.clusters) == 2
    # seeds 0 and 1 finish at 100; window 2 starts at step 10; the resumed member (2) finishes at 20 + 90
    assert out.depth == 110 and out.tokens == 2 * 100 + 100 + 3 * 10


def test_vote_breaks_ties_by_earliest_finish_and_ignores_missing_answers():
    p, engine = _one([0, 1, -1, -1], [500, 100, 10, 10], correct_class=1)
    assert _run(p, engine, [0, 1, 2, 3], 10, "cons").answer == "1"  # 0 and 1 tie; trace 1 finishes first
    assert _run(p, engine, [2, 3], 10, "cons").answer is None  # nothing but missing answers


def test_oracle_is_a_lower_bound_for_pure_clusterings():
    rng = np.random.default_rng(1)
    for _ in range(20):
        classes = rng.integers(0, 3, size=10)
        p, engine = _one(classes, rng.integers(20, 500, size=10), correct_class=int(np.bincount(classes).argmax()))
        order = list(rng.permutation(10))
        oracle, cons = _run(p, engine, order, 40, "oracle"), _run(p, engine, order, 40, "cons")
        assert (oracle.answer, oracle.correct) == (cons.answer, cons.correct) and oracle.tokens <= cons.tokens
        for q in (0, 1, 3):  # a perfect judge never mixes answers: it can only spend more than the oracle
            assert _run(p, engine, order, 40, "deepprune", tau=0.5, q=q).tokens >= oracle.tokens
        assert _run(p, engine, order, 40, "deepprune", tau=0.5, q=0).tokens == oracle.tokens


# --- DeepConf ----------------------------------------------------------------------------------------------------
def test_window_confidence_follows_the_reference_full_windows_only():
    # reference (deepconf helper.py compute_least_grouped): means of full windows; shorter trace: whole mean
    assert dc.group_confidences([1.0, 5.0, 5.0, 5.0], 3).tolist() == pytest.approx([11 / 3, 5.0])
    assert dc.trace_score([1.0, 5.0, 5.0, 5.0], 3) == pytest.approx(11 / 3)  # a partial first window would give 1.0
    assert dc.group_confidences([4.0, 2.0, 6.0, 0.0, 8.0], 3).tolist() == pytest.approx([4.0, 8 / 3, 14 / 3])
    assert dc.trace_score([2.0, 4.0], 3) == pytest.approx(3.0)  # shorter than the window: the whole mean
    assert dc.trace_score([], 3) == 0.0
    assert dc.token_confidence([[-1.0, -3.0], [-0.5, -0.5]]).tolist() == [2.0, 0.5]


def _events(conf):
    from deepprune.sampling.engines import TokenEvent
    return [TokenEvent(i, "", -c, (-c, -c)) for i, c in enumerate(conf)]


def test_the_streaming_stop_rule_fires_at_the_first_full_window_below_the_threshold():
    stop = dc.ConfidenceStop(threshold=4.0, window=3)
    assert [stop(e) for e in _events([1.0, 5.0, 5.0, 5.0])] == [True, True, False, True]  # 11/3 < 4 at token 3
    keep = dc.ConfidenceStop(threshold=3.5, window=3)
    assert all(keep(e) for e in _events([1.0, 5.0, 5.0, 5.0]))
    short = dc.ConfidenceStop(threshold=4.0, window=3)
    assert all(short(e) for e in _events([1.0, 1.0]))  # a window that never fills never stops a trace


def test_the_streaming_rule_and_the_offline_windows_agree_token_for_token():
    rng = np.random.default_rng(5)
    for _ in range(200):
        conf = rng.uniform(0.5, 3.0, size=int(rng.integers(1, 40)))
        window, threshold = int(rng.integers(1, 12)), float(rng.uniform(1.2, 2.2))
        stop = dc.ConfidenceStop(threshold, window)
        fired = next((i + 1 for i, e in enumerate(_events(conf)) if not stop(e)), None)
        groups = dc.group_confidences(conf, window)
        below = np.flatnonzero(groups < threshold) if len(conf) >= window else []
        assert fired == (None if not len(below) else int(below[0]) + window)  # tokens written when it stopped


def test_deepconf_threshold_direction():
    scores = np.arange(1, 101, dtype=float)
    low, high = dc.deepconf_threshold(scores, 10), dc.deepconf_threshold(scores, 90)
    assert np.mean(scores >= low) == pytest.approx(0.10, abs=0.01)  # DeepConf-low keeps the top 10%
    assert np.mean(scores >= high) == pytest.approx(0.90, abs=0.01)  # DeepConf-high keeps the top 90%
    assert low > high


def test_deepconf_online_stops_low_confidence_traces_and_short_low_ones_do_not_vote():
    steady, high = [5.0] * 12, [6.0] * 12
    shaky = [5.0] * 4 + [1.0] + [5.0] * 7
    conf = [steady, steady, shaky, high, [4.0]]  # the last is shorter than the window, and below the threshold
    p, engine = _one([0, 0, 1, 2, 1], [12, 12, 12, 12, 1], confidence=conf)
    out = _run(p, engine, [0, 1, 2, 3, 4], 10, "deepconf_online", eta=90, window=2, warmup=2)
    assert out.extra["threshold"] == 5.0 and out.extra["stopped"] == 1
    assert [t.stop_reason for t in out.traces] == ["finished", "finished", "confidence_stop", "finished", "finished"]
    assert [t.n_tokens for t in out.traces] == [12, 12, 5, 12, 1] and out.tokens == 42
    assert [t.votes for t in out.traces] == [True, True, False, True, False]
    assert out.answer == "0"
    with pytest.raises(ValueError, match="warm-up traces >= N"):
        _run(p, engine, [0, 1, 2], 10, "deepconf_online", eta=90, window=2, warmup=3)


def test_deepconf_consensus_stops_sampling_once_one_answer_holds_the_share():
    conf = [[5.0] * 10] * 6
    p, engine = _one([0, 0, 0, 1, 0, 0], [10] * 6, confidence=conf)
    task = p.task(range(6))
    full = run_deepconf_online(engine, task, warmup=2, eta=90, window=4)
    early = run_deepconf_online(engine, task, warmup=2, eta=90, window=4, consensus=0.95)
    assert full.tokens == 60 and early.tokens == 20  # the two warm-up traces already agree: nothing more sampled
    assert early.extra["unsampled_by_consensus"] == 4 and early.answer == full.answer == "0"
    assert [t.stop_reason for t in early.traces][2:] == ["unsampled"] * 4


def test_deepconf_warmup_at_or_above_n_is_a_params_error_naming_the_keys(tmp_path):
    import copy

    import yaml

    from deepprune.config import ConfigError, load_params, read_params
    from tests.conftest import ROOT

    assert deepconf_warmup_error(3, 6, "live", False) is None
    message = deepconf_warmup_error(16, 6, "live", False)
    assert "prune.deepconf.warmup" in message and "'live'" in message and "prune.n" in message
    raw = read_params(ROOT / "params.yaml")
    load_params(ROOT / "params.yaml")  # the shipped params are valid
    for section, patch, keys in (("prune", {"n": 4, "deepconf": {"warmup": 4}}, ("prune.deepconf.warmup", "prune.n")),
                                 ("online", {"n": 4, "deepconf": {"warmup": 5}}, ("online.deepconf.warmup", "online.n")),
                                 ("online", {"n": None, "deepconf": {"warmup": 6}}, ("online.deepconf.warmup", "sample.n"))):
        bad = copy.deepcopy(raw)
        for key, value in patch.items():
            bad[section][key] = {**bad[section][key], **value} if isinstance(value, dict) else value
        path = tmp_path / "params.yaml"
        path.write_text(yaml.safe_dump(bad))
        with pytest.raises(ConfigError) as err:
            load_params(path)
        assert all(key in str(err.value) for key in keys), str(err.value)


# --- the simulator ----------------------------------------------------------------------------------------------
def _random_problems(rng, count, n, with_conf=False, k=16):
    out = []
    for i in range(count):
        classes = rng.integers(-1, 3, size=n)
        lengths = rng.integers(1, 4 * k, size=n)  # some traces end within their prefix
        conf = [rng.uniform(0.5, 3.0, size=length) for length in lengths] if with_conf else None
        out.append({"pid": f"r{i}", "classes": classes, "lengths": lengths, "correct_class": int(rng.integers(0, 3)),
                    "judge": _judge(classes, noise=0.3, seed=i), "confidence": conf})
    return out


def test_simulator_same_draws_intervals_and_needs_logprobs():
    problems, engine = _corpus(_random_problems(np.random.default_rng(3), 6, 12))
    specs = [MethodSpec("cons", "cons"), MethodSpec("dp", "deepprune", {"tau": 0.5}),
             MethodSpec("rand", "random", {"match": "dp"}), MethodSpec("oracle", "oracle"),
             MethodSpec("esc", "esc", {"window": 4}),
             MethodSpec("dc", "deepconf_online", {"eta": 10, "window": 8, "warmup": 4})]
    results = simulate(problems, engine, specs, n=8, k=16, repetitions=10, seed=7)
    assert results["dc"].skipped == "needs logprobs"
    summary = summarize(results, "cons")
    assert summary["cons"]["token_reduction"] == 0
    assert summary["oracle"]["tokens"] <= summary["cons"]["tokens"]
    assert summary["rand"]["completed"] < summary["cons"]["completed"]
    assert summary["dp"]["tokens_lo"] <= summary["dp"]["tokens"] <= summary["dp"]["tokens_hi"]
    with pytest.raises(ValueError, match="exceeds the traces available"):
        simulate(problems, engine, specs, n=13, k=16, repetitions=1, seed=0)


def test_random_pruning_is_seeded_by_a_stable_hash_of_its_name():
    assert stable_seed("random_at_deepprune_tau0.5") == stable_seed("random_at_deepprune_tau0.5")
    assert stable_seed("random_at_deepprune_tau0.5") != stable_seed("random_at_deepprune_tau0.25")  # same length
    problems, engine = _corpus(_random_problems(np.random.default_rng(4), 8, 10))
    specs = [MethodSpec("dp", "deepprune", {"tau": 0.5}), MethodSpec("rand_a", "random", {"match": "dp"}),
             MethodSpec("rand_b", "random", {"match": "dp"})]
    a = simulate(problems, engine, specs, n=10, k=16, repetitions=6, seed=1)
    b = simulate(problems, engine, specs, n=10, k=16, repetitions=6, seed=1)
    assert (a["rand_a"].tokens, a["rand_a"].completed) == (b["rand_a"].tokens, b["rand_a"].completed)  # seeded
    assert a["rand_a"].tokens == a["dp"].tokens  # at DeepPrune's budget, to the token
    assert a["rand_a"].completed != a["rand_b"].completed  # two names, two streams (len() of the name would collide)


def test_every_method_through_the_controller_keeps_the_invariants():
    """A property test on seeded random problems: every method, every vote rule, several r, q and caps."""
    rng = np.random.default_rng(20251009)
    k, n = 16, 8
    problems, engine = _corpus(_random_problems(rng, 12, 10, with_conf=True, k=k))
    specs = [MethodSpec("cons", "cons"), MethodSpec("oracle", "oracle"),
             MethodSpec("tau1", "deepprune", {"tau": 1.0})]
    for tau in (0.0, 0.3, 0.5):
        for r, q, cap, vote in ((1, 2, None, "all_completed"), (2, 0, None, "largest_cluster"),
                                (1, 3, 2, "all_completed"), (3, 1, None, "largest_cluster"),
                                (1, 2, None, "cluster_size"), (2, 1, 3, "cluster_size")):
            specs.append(MethodSpec(f"dp{tau}_{r}{q}{cap}{vote[0]}", "deepprune",
                                    {"tau": tau, "r": r, "q": q, "max_clusters": cap, "vote": vote}))
    specs += [MethodSpec("perfect", "perfect_judge", {"q": 1, "vote": "cluster_size"}),
              MethodSpec("perfect_q0", "perfect_judge", {"q": 0})]
    specs += [MethodSpec("sbert", "sbert", {"tau": 0.5}), MethodSpec("rand", "random", {"match": "dp0.5_12Nonea"}),
              MethodSpec("esc", "esc", {"window": 3}),
              MethodSpec("settle", "settle", {"tau": 0.5, "window": 3}),
              MethodSpec("settle_sized", "settle",
                         {"tau": 0.3, "window": 3, "vote": "cluster_size", "max_clusters": 2}),
              MethodSpec("settle_all", "settle", {"tau": 0.5, "window": n}),
              MethodSpec("settle_tau1", "settle", {"tau": 1.0, "window": 2}),
              MethodSpec("dc_off", "deepconf_offline", {"eta": 10, "window": 4}),
              MethodSpec("dc_low", "deepconf_online", {"eta": 10, "window": 4, "warmup": 3}),
              MethodSpec("dc_high", "deepconf_online", {"eta": 90, "window": 4, "warmup": 3, "consensus": 0.95})]
    kept: list = []
    simulate(problems, engine, specs, n=n, k=k, repetitions=4, seed=11, keep=kept)
    by = {(rep, name): outs for rep, name, outs in kept}
    lengths = {p.problem_id: [engine.records[(p.problem_id, i)].n_tokens for i in range(p.n)] for p in problems}
    checked_bound = 0
    for (rep, name), outs in by.items():
        for p, out in zip(problems, outs):
            task_lengths = [lengths[p.problem_id][t.seed] for t in out.traces]
            assert out.tokens == sum(t.n_tokens for t in out.traces)
            assert all(t.n_tokens <= L for t, L in zip(out.traces, task_lengths))
            for t in out.traces:  # pruned or stopped traces never vote; voters ran to the end
                assert not t.votes or t.stop_reason in RAN_TO_END, (name, t)
            if out.clusters:  # each trace in exactly one cluster
                assert sorted(i for c in out.clusters for i in c) == list(range(out.started)), name
            if name.startswith(("dp", "sbert", "tau1", "rand")):
                for t, L in zip(out.traces, task_lengths):
                    assert t.prefix_tokens == min(L, k)
                    if L < k:  # ended within its prefix: completed, and it costs its length
                        assert t.stop_reason == "finished" and t.n_tokens == L
                    if t.stop_reason == "pruned":
                        assert t.n_tokens == k
            cons, oracle = by[(rep, "cons")][problems.index(p)], by[(rep, "oracle")][problems.index(p)]
            assert out.answer is None or out.answer in {t.answer for t in out.traces if t.votes}
            if name == "tau1":  # tau = 1 is cons@N exactly
                assert (out.tokens, out.answer, out.correct) == (cons.tokens, cons.answer, cons.correct)
            if name == "oracle":
                assert (out.answer, out.correct) == (cons.answer, cons.correct) and out.tokens <= cons.tokens
            if name == "perfect_q0":  # clustered by the answers, nothing resumed: the oracle's traces and tokens
                assert (out.tokens, out.clusters) == (oracle.tokens, oracle.clusters), name
            if name == "perfect":  # and one resumed member on top
                assert out.tokens >= oracle.tokens, name
            if name.startswith("dp") and out.correct == cons.correct:
                classes = [[p.grader.answer_class(out.traces[i].answer) if out.traces[i].stop_reason in RAN_TO_END
                            else p.grader.answer_class(p.grader.answer(engine.records[(p.problem_id, out.traces[i].seed)].text))
                            for i in c] for c in out.clusters]
                pure = all(len(set(c)) == 1 and (c[0] >= 0 or len(c) == 1) for c in classes)
                if pure:  # the oracle is the floor of this scheme's tokens at cons@N's accuracy
                    assert out.tokens >= oracle.tokens, name
                    checked_bound += 1
            # latency: every method waits at least for its longest trace, and never longer than its tokens
            assert max(t.n_tokens for t in out.traces) <= out.depth <= out.tokens, name
            if name in ("cons", "dc_off"):
                assert out.depth == max(t.n_tokens for t in out.traces)
            if name == "settle_all":  # one window of N traces is DeepPrune itself
                dp = by[(rep, "dp0.5_12Nonea")][problems.index(p)]
                assert (out.tokens, out.answer, out.depth, out.clusters) == (dp.tokens, dp.answer, dp.depth, dp.clusters)
            if name == "settle_tau1":  # nothing joins a cluster at tau = 1: every trace runs, as cons@N
                assert (out.tokens, out.answer, out.started) == (cons.tokens, cons.answer, n)
            if name == "settle":
                assert out.started in (3, 6, 8) and all(t.stop_reason == "unsampled" for t in out.traces[out.started:])
            if name == "rand":
                resumed = sum(t.n_tokens > t.prefix_tokens for t in out.traces)
                assert out.tokens <= out.extra["budget"] or resumed <= 1
    assert checked_bound > 20
    again: list = []
    simulate(problems, engine, specs, n=n, k=k, repetitions=4, seed=11, keep=again)
    summary = lambda runs: [(rep, name, [(o.tokens, o.answer, [t.stop_reason for t in o.traces]) for o in outs])
                            for rep, name, outs in runs]
    assert summary(again) == summary(kept)  # the same seed gives the same outcome
    other: list = []
    simulate(problems, engine, specs, n=n, k=k, repetitions=4, seed=12, keep=other)
    assert summary(other) != summary(kept)


def test_judge_seconds_count_every_prefix_and_call():
    from deepprune.pruning.simulate import add_judge_seconds

    methods = [MethodSpec("dp", "deepprune", {"tau": 0.5}), MethodSpec("sb", "sbert", {"tau": 0.9}),
               MethodSpec("cons", "cons")]
    summary = {"dp": {"judge_calls": 100.0, "started": 10.0}, "sb": {"judge_calls": 50.0, "started": 10.0},
               "cons": {"judge_calls": 0.0, "started": 10.0}}
    add_judge_seconds(summary, methods, {"encode_seconds_per_prefix": 0.5, "score_seconds_per_pair": 0.01})
    assert summary["dp"]["judge_seconds"] == pytest.approx(10 * 0.5 + 100 * 0.01)
    assert summary["sb"]["judge_seconds"] == pytest.approx(10 * 0.5)
    assert "judge_seconds" not in summary["cons"]


def test_tau_is_picked_on_the_other_folds_only_and_the_tuned_method_uses_its_fold_tau():
    from deepprune.pruning.simulate import pick_taus

    specs = []
    for i in range(8):
        classes = [0, 0, 1, 0, 2, 0]
        specs.append({"classes": classes, "lengths": [100 + 10 * j for j in range(6)], "correct_class": 0,
                      "judge": _judge(classes, noise=0.3, seed=i)})
    problems, engine = _corpus(specs)
    for i, p in enumerate(problems):
        p.fold = i % 2
    grid = [0.2, 0.4, 0.6, 0.8]
    picked = pick_taus(problems, engine, {"q": 1}, grid, -1.0, n=6, k=20, repetitions=3, seed=5)
    assert set(picked["taus"]) == {0, 1} and all(t in grid or t == 1.0 for t in picked["taus"].values())
    for fold, rows in picked["table"].items():  # the pick is the cheapest tau that keeps the target
        ok = [r for r in rows if r["accuracy_change_pts"] >= -1.0]
        assert picked["taus"][fold] == (max(ok, key=lambda r: (r["token_reduction"], r["tau"]))["tau"] if ok else 1.0)
    # fold 0's problems get a judge that merges everything: fold 0's own tau (picked on fold 1) does not move
    poisoned, engine2 = _corpus([{**s, "judge": np.full((6, 6), 0.95)} if i % 2 == 0 else s for i, s in enumerate(specs)])
    for i, p in enumerate(poisoned):
        p.fold = i % 2
    again = pick_taus(poisoned, engine2, {"q": 1}, grid, -1.0, n=6, k=20, repetitions=3, seed=5)
    assert again["taus"][0] == picked["taus"][0] and again["table"][0] == picked["table"][0]
    # the tuned method is DeepPrune at its problem's fold tau
    same = {0: 0.6, 1: 0.6}
    tuned = simulate(problems, engine, [MethodSpec("t", "tuned", {"q": 1})], n=6, k=20, repetitions=2, seed=1,
                     fold_taus=same)
    plain = simulate(problems, engine, [MethodSpec("t", "deepprune", {"q": 1, "tau": 0.6})], n=6, k=20,
                     repetitions=2, seed=1)
    assert (tuned["t"].tokens, tuned["t"].accuracy) == (plain["t"].tokens, plain["t"].accuracy)
    with pytest.raises(ValueError, match="no tau picked"):
        simulate(problems, engine, [MethodSpec("t", "tuned", {"q": 1})], n=6, k=20, repetitions=1, seed=1)


def test_a_prefix_cut_by_the_text_costs_each_trace_what_it_wrote_until_the_cut():
    """A first-k-reasoning-words prefix is complete at a different token on every trace: the prune stage replays each
    trace's measured cost (Task.prefix_tokens), and a trace that ends before its prefix is complete (None) has
    completed and votes. k itself is then not a token count and is ignored."""
    p, engine = _one([0, 0, 1, 0], [300, 150, 200, 400])
    p.prefix_tokens = [60, 90, None, 35]  # trace 2 ends before its k-th reasoning word
    out = _run(p, engine, [0, 1, 2, 3], 25, "deepprune", tau=0.5, q=0)
    # clusters {0,1,3} and {2}: seed 0 runs on, 1 and 3 are pruned after their own prefixes, 2 completed within its
    assert [t.stop_reason for t in out.traces] == ["finished", "pruned", "finished", "pruned"]
    assert [t.prefix_tokens for t in out.traces] == [60, 90, 200, 35]
    assert out.tokens == 300 + 90 + 200 + 35 and [t.votes for t in out.traces] == [True, False, True, False]
    assert out.depth == 200 + (300 - 60)  # the prefix round lasts until its longest prefix (trace 2, whole)
    oracle = _run(p, engine, [0, 1, 2, 3], 25, "oracle")  # the same costs for the bound
    assert oracle.tokens == 300 + 90 + 200 + 35
    random = _run(p, engine, [0, 1, 2, 3], 25, "random", budgets={"deepprune:p0": out.tokens},
                  rng=np.random.default_rng(0), match="deepprune")
    assert sorted(t.prefix_tokens for t in random.traces) == [35, 60, 90, 200]
    # the draw's order carries each trace's own cost
    task = p.task([3, 2, 1, 0])
    assert task.prefix_tokens == (35, None, 90, 60) and task.prefix_budget(1, 25) == task.max_tokens


def test_a_trace_recorded_at_its_token_limit_before_its_prefix_is_complete_has_completed():
    """A trace whose prefix of k reasoning words is never complete runs to its end in the prefix round; when its
    record ends at the generation limit (`length`), it has still run to its end: it votes, is never pruned nor cut
    by a budget, and the oracle agrees."""
    p, engine = _one([0, 0, 1, 0], [300, 150, 200, 400])
    key = ("p0", 3)
    rec = engine.records[key]
    engine.records[key] = RecordedTrace(rec.text, rec.n_tokens, "length")
    p.prefix_tokens = [60, 90, 50, None]
    for kind, settings in (("deepprune", {"tau": 0.5, "q": 0}), ("settle", {"tau": 0.5, "window": 4, "q": 0})):
        out = _run(p, engine, [0, 1, 2, 3], 25, kind, **settings)
        assert out.traces[3].stop_reason == "length" and out.traces[3].votes and out.traces[3].n_tokens == 400
    rand = _run(p, engine, [0, 1, 2, 3], 25, "random", budgets={"deepprune:p0": 0}, rng=np.random.default_rng(0),
                match="deepprune")
    assert rand.traces[3].stop_reason == "length" and rand.traces[3].votes
    oracle = _run(p, engine, [0, 1, 2, 3], 25, "oracle")
    assert oracle.traces[3].stop_reason == "length" and oracle.traces[3].n_tokens == 400


def test_match_gain_is_the_matched_methods_accuracy_minus_randoms_paired_by_draw():
    """A perfect judge against random pruning at its budget: the gain is per draw, so a `_lo` above 0 is a win
    beyond the interval even where the two methods' own intervals overlap."""
    rng = np.random.default_rng(11)
    raw = []
    for i in range(30):  # the majority (correct) answer on 5 of 9 traces; the minority's are short and arrive first
        classes = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0])
        lengths = np.array([20, 20, 20, 20, 60, 60, 60, 60, 60]) + rng.integers(0, 5, size=9)
        raw.append({"pid": f"g{i}", "classes": classes, "lengths": lengths, "correct_class": 0,
                    "judge": _judge(classes)})
    problems, engine = _corpus(raw)
    specs = [MethodSpec("cons", "cons"), MethodSpec("dp", "deepprune", {"tau": 0.5}),
             MethodSpec("rand", "random", {"match": "dp"}), MethodSpec("esc", "esc", {"window": 4})]
    results = simulate(problems, engine, specs, n=9, k=8, repetitions=12, seed=5)
    summary = summarize(results, "cons")
    add_matched_minus_random(summary, results, specs)
    paired = [100.0 * (d - r) for d, r in zip(results["dp"].accuracy, results["rand"].accuracy)]
    assert summary["rand"][GAIN] == pytest.approx(np.mean(paired))
    assert summary["rand"][GAIN + "_lo"] == pytest.approx(np.percentile(paired, 2.5))
    assert summary["rand"][GAIN + "_lo"] > 0  # a perfect judge keeps the majority; random loses it sometimes
    assert GAIN not in summary["dp"] and GAIN not in summary["esc"]  # only budget-matched methods


def test_the_prune_stage_matches_random_pruning_to_the_tuned_taus_budget_too():
    from pathlib import Path

    from deepprune.config import PruneConfig, read_params
    cfg = PruneConfig(**read_params(Path(__file__).resolve().parents[2] / "params.yaml")["prune"])
    names = [(s.name, s.settings.get("match")) for s in method_specs(cfg)]
    tuned = next(name for name, _ in names if name.startswith("deepprune_tuned"))
    assert (f"random_at_{tuned}", tuned) in names
    assert names.index((f"random_at_{tuned}", tuned)) > [n for n, _ in names].index(tuned)  # its budget exists first
    assert ("random_at_deepprune_tau0.5", "deepprune_tau0.5") in names


def test_the_reports_pruning_sentences_on_a_corpus_where_the_oracle_saves_nothing():
    """Live corpus-sized: one problem, every trace needed. The sentence says the oracle saves nothing, not 'nan%'."""
    from deepprune.report import CorpusResults, _prune_verdicts

    row = {"token_reduction": 0.0, "accuracy": 1.0, "accuracy_change_pts": 0.0, "accuracy_change_pts_lo": 0.0,
           "accuracy_change_pts_hi": 0.0}
    summary = {"cons": row, "oracle": row, "deepprune_tau0.5": row,
               "random_at_deepprune_tau0.5": {**row, GAIN: 0.0, GAIN + "_lo": 0.0, GAIN + "_hi": 0.0}}
    methods = [{"name": "deepprune_tau0.5", "kind": "deepprune", "settings": {}},
               {"name": "random_at_deepprune_tau0.5", "kind": "random", "settings": {"match": "deepprune_tau0.5"}}]
    res = CorpusResults({}, {}, {}, [], [], {}, {}, prune={"summary": summary, "headline": "deepprune_tau0.5",
                                                             "methods": methods})
    text = _prune_verdicts({"live": res})
    assert "the oracle saves nothing here" in text and "nan" not in text
    assert "does not beat it beyond the 95% interval" in text
