"""One controller, two engines: generating with a live engine and replaying the recorded traces through the replay
engine give the same outcome, trace by trace (tokens, stop reasons, votes, answers), for every method."""

from __future__ import annotations

import numpy as np
import pytest

from deepprune.answers import AnswerSpec
from deepprune.pruning.controller import Grader, MethodSpec, Task, run_method
from deepprune.pruning.online import online_methods
from deepprune.pruning.replay import MatrixSimilarity, RecordedTrace, ReplayEngine
from deepprune.sampling.engines import GenerationSettings, TransformersEngine
from deepprune.sampling.live import trace_seed

pytestmark = pytest.mark.generation

SPEC = AnswerSpec(extractor="regex", pattern=r"(\w)\W*$")  # a random model's last word character: answers vary


@pytest.fixture(scope="module")
def engine64(tiny_lm):
    """float64, so a trace paused and resumed writes bit for bit what it writes in one go."""
    return TransformersEngine(str(tiny_lm), GenerationSettings(0.8, 0.95, 4), batch_size=3, dtype="float64")


def _signature(out):
    return (out.tokens, out.answer, out.correct, out.judge_calls, out.clusters,
            [(t.seed, t.n_tokens, t.prefix_tokens, t.stop_reason, t.votes, t.answer) for t in out.traces])


def test_live_generation_and_its_replay_give_identical_outcomes(engine64):
    n, max_tokens, k = 6, 24, 6
    prompt = engine64.render([{"role": "user", "content": "What is 3 * 7?"}])
    seeds = tuple(trace_seed(3, "p", j) for j in range(n))
    gold = "1"
    task = lambda: Task("p", prompt, seeds, Grader(SPEC, gold), max_tokens)  # noqa: E731

    # record: every trace generated to the end, with its text, token count and logprobs
    whole = run_method(MethodSpec("cons", "cons"), engine64, task(), k, {})
    records = {(prompt, s): RecordedTrace(t.text, t.n_tokens, "length" if t.stop_reason == "length" else "stop",
                                          t.logprobs) for s, t in zip(seeds, whole.traces)}
    replay = ReplayEngine(records)

    scores = np.random.default_rng(0).random((n, n))
    judge = MatrixSimilarity((scores + scores.T) / 2, seeds)  # the same judge on both paths, looked up by trace
    methods = online_methods([0.5, 1.0], r=1, q=1, max_clusters=None, vote="all_completed", warmup=2, eta=10,
                             window=4)
    methods += [MethodSpec("dp_largest", "deepprune", {"tau": 0.4, "r": 2, "q": 0, "vote": "largest_cluster"}),
                MethodSpec("deepconf_high", "deepconf_online", {"warmup": 2, "eta": 90, "window": 4}),
                MethodSpec("deepconf_offline", "deepconf_offline", {"eta": 50, "window": 4}),
                MethodSpec("esc", "esc", {"window": 2}), MethodSpec("oracle", "oracle"),
                MethodSpec("random", "random", {"match": "deepprune_tau0.5"})]
    live_budgets: dict[str, int] = {}
    replay_budgets: dict[str, int] = {}
    reasons = set()
    for method in methods:
        live = run_method(method, engine64, task(), k, {"judge": judge}, np.random.default_rng(5), live_budgets)
        again = run_method(method, replay, task(), k, {"judge": judge}, np.random.default_rng(5), replay_budgets)
        assert _signature(live) == _signature(again), method.name
        live_budgets[f"{method.name}:p"], replay_budgets[f"{method.name}:p"] = live.tokens, again.tokens
        reasons |= {(method.kind, t.stop_reason) for t in live.traces}
    assert ("deepprune", "pruned") in reasons  # a tau that prunes something
    assert ("deepconf_online", "confidence_stop") in reasons  # and a confidence stop
    assert live_budgets["deepprune_tau0.5:p"] < live_budgets["cons:p"] == whole.tokens
    assert live_budgets["deepprune_tau1:p"] == whole.tokens  # tau = 1 is cons@N, live too
