"""Online pruning with real generation: cons@N, DeepPrune and DeepConf stopping an engine's traces early.

- cons@N: N traces run to the end; majority vote.
- DeepPrune: all N traces generate their first k tokens; the judge scores the prefixes and greedy clustering
  (tau, r, max_clusters) runs in arrival order; cluster seeds and q members of the largest cluster continue from
  their prefix (prompt + prefix: a server's prefix cache makes the resume cheap); the others are never generated
  further. Vote as `prune.vote` says. On the transformers engine a resumed trace goes on from its token ids and
  generator state, so it generates exactly what it would have under cons@N with the same seed: the token saving
  is then exactly the pruned traces' unwritten tails. A server resumes with a fresh seed (seed + RESUME_SEED_OFFSET).
- DeepConf online: warm-up traces run to the end with top-k logprobs and set the threshold (a percentile of their
  lowest sliding-window confidence); every later trace is stopped the moment its window confidence falls below it.
  Survivors and warm-up traces vote, weighted by their confidence.

Token counts are the engine's; every trace records why it stopped: finished, pruned, confidence_stop or length.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from deepprune.answers import AnswerSpec, answer_classes, extract_answer, is_correct
from deepprune.io import atomic_open
from deepprune.pruning.data import token_confidence
from deepprune.pruning.methods import Problem, deepconf_threshold, greedy_cluster, lowest_group_confidence, vote
from deepprune.sampling.engines import GenJob, GenResult, TokenEvent
from deepprune.sampling.live import trace_seed

RESUME_SEED_OFFSET = 1_000_003  # on a server, the continuation of trace i samples from seed_i + this


@dataclass
class OnlineTrace:
    trace_id: str
    text: str
    n_tokens: int
    stop_reason: str               # finished | pruned | confidence_stop | length
    prefix_tokens: int = 0         # tokens generated before the judge looked (DeepPrune)
    answer: str | None = None
    correct: bool | None = None
    logprobs: list[list[float]] | None = None


@dataclass
class OnlineOutcome:
    method: str
    traces: list[OnlineTrace]
    answer: str | None
    correct: bool | None
    tokens: int
    wall_seconds: float
    judge_calls: int = 0
    judge_seconds: float = 0.0
    clusters: int = 0
    extra: dict[str, float] = field(default_factory=dict)


def _reason(result: GenResult) -> str:
    return {"stop": "finished", "length": "length", "cancelled": "confidence_stop"}.get(result.finish_reason,
                                                                                       result.finish_reason)


def _grade(traces: list[OnlineTrace], spec: AnswerSpec, gold: str | None) -> None:
    for t in traces:
        t.answer = extract_answer(t.text, spec)
        t.correct = is_correct(t.answer, gold, spec) if gold is not None else None


def _vote(traces: list[OnlineTrace], voters: Sequence[int], spec: AnswerSpec,
          weights: Sequence[float] | None = None) -> OnlineTrace | None:
    problem = Problem("online", np.array(answer_classes([t.answer for t in traces], spec)),
                      np.array([bool(t.correct) for t in traces]), np.array([t.n_tokens for t in traces]))
    winner = vote(problem, list(voters), weights)
    return None if winner is None else traces[winner]


def _outcome(method: str, traces: list[OnlineTrace], voters: Sequence[int], spec: AnswerSpec, start: float,
             weights: Sequence[float] | None = None, extra: dict[str, float] | None = None,
             **fields: float) -> OnlineOutcome:
    winner = _vote(traces, voters, spec, weights)
    return OnlineOutcome(method, traces, winner.answer if winner else None, winner.correct if winner else None,
                         sum(t.n_tokens for t in traces), time.perf_counter() - start, extra=extra or {},
                         **fields)  # type: ignore[arg-type]


def judge_similarity(judge, encoder, batch_size: int = 32) -> Callable[[list[str]], np.ndarray]:
    """An embedding judge as DeepPrune's online similarity: each prefix encoded once, every pair scored."""
    def similarity(prefixes: list[str]) -> np.ndarray:
        emb = encoder.embed(prefixes, batch_size)
        n = len(prefixes)
        return judge.score(np.repeat(emb, n, axis=0), np.tile(emb, (n, 1))).reshape(n, n)
    return similarity


def run_cons(engine, prompt: str, seeds: Sequence[int], max_tokens: int, spec: AnswerSpec,
             gold: str | None) -> OnlineOutcome:
    start = time.perf_counter()
    results = engine.generate([GenJob(prompt, max_tokens, s) for s in seeds])
    traces = [OnlineTrace(f"t{i}", r.text, r.n_tokens, _reason(r), logprobs=r.logprobs) for i, r in enumerate(results)]
    _grade(traces, spec, gold)
    return _outcome("cons", traces, range(len(traces)), spec, start)


def run_deepprune(engine, prompt: str, seeds: Sequence[int], max_tokens: int, k: int,
                  similarity: Callable[[list[str]], np.ndarray], tau: float, spec: AnswerSpec, gold: str | None,
                  r: int = 1, q: int = 2, max_clusters: int | None = None, vote_over: str = "all_completed") -> OnlineOutcome:
    """`similarity(prefixes)` returns the judge's n x n P(same answer) matrix for the prefixes."""
    start = time.perf_counter()
    first = engine.generate([GenJob(prompt, min(k, max_tokens), s) for s in seeds])
    traces = [OnlineTrace(f"t{i}", res.text, res.n_tokens, "pruned", prefix_tokens=res.n_tokens,
                          logprobs=res.logprobs) for i, res in enumerate(first)]
    done_early = {i for i, res in enumerate(first) if res.finish_reason == "stop"}
    for i in done_early:
        traces[i].stop_reason = "finished"
    judge_start = time.perf_counter()
    sim = similarity([t.text for t in traces])
    judge_seconds = time.perf_counter() - judge_start
    clusters, calls = greedy_cluster(list(range(len(traces))), sim, tau, r, max_clusters)
    largest = max(clusters, key=len)  # ties: the older cluster (max keeps the first)
    resumed = largest[1:1 + q]
    runs_on = [c[0] for c in clusters] + resumed
    jobs, idx = [], []
    for i in runs_on:
        if i in done_early:
            continue
        if first[i].n_tokens >= max_tokens:
            traces[i].stop_reason = "length"
            continue
        jobs.append(GenJob(prompt + first[i].text, max_tokens - first[i].n_tokens, seeds[i] + RESUME_SEED_OFFSET,
                           resume=first[i].continuation))
        idx.append(i)
    for i, res in zip(idx, engine.generate(jobs)):
        t = traces[i]
        t.text, t.n_tokens, t.stop_reason = t.text + res.text, t.n_tokens + res.n_tokens, _reason(res)
        if t.logprobs is not None and res.logprobs is not None:
            t.logprobs = t.logprobs + res.logprobs
    _grade(traces, spec, gold)
    completed = sorted(set(runs_on) | done_early)
    voters = completed if vote_over == "all_completed" else [i for i in [largest[0], *resumed]]
    return _outcome(f"deepprune_tau{tau:g}", traces, voters, spec, start, judge_calls=calls,
                    judge_seconds=judge_seconds, clusters=len(clusters))


def run_deepconf(engine, prompt: str, seeds: Sequence[int], max_tokens: int, warmup: int, eta: float, window: int,
                 spec: AnswerSpec, gold: str | None) -> OnlineOutcome:
    """DeepConf online; needs an engine that returns top-k logprobs."""
    start = time.perf_counter()
    warm_n = min(warmup, len(seeds))
    warm = engine.generate([GenJob(prompt, max_tokens, s) for s in seeds[:warm_n]])
    if any(res.logprobs is None for res in warm):
        raise ValueError("DeepConf needs per-token logprobs: set sample.generation.top_logprobs > 0")
    traces = [OnlineTrace(f"t{i}", res.text, res.n_tokens, _reason(res), logprobs=res.logprobs)
              for i, res in enumerate(warm)]
    warm_scores = [lowest_group_confidence(token_confidence(res.logprobs), window) for res in warm]
    threshold = deepconf_threshold(warm_scores, eta)

    def watcher() -> Callable[[TokenEvent], bool]:
        confs: list[float] = []
        total = [0.0]

        def on_token(event: TokenEvent) -> bool:
            conf = -float(np.mean(event.top_logprobs)) if event.top_logprobs else 0.0
            confs.append(conf)
            total[0] += conf - (confs[-window - 1] if len(confs) > window else 0.0)
            return total[0] / min(len(confs), window) >= threshold
        return on_token

    rest = engine.generate([GenJob(prompt, max_tokens, s, on_token=watcher()) for s in seeds[warm_n:]])
    traces += [OnlineTrace(f"t{warm_n + i}", res.text, res.n_tokens, _reason(res), logprobs=res.logprobs)
               for i, res in enumerate(rest)]
    _grade(traces, spec, gold)
    voters = [i for i, t in enumerate(traces) if t.stop_reason != "confidence_stop"]
    weights = [lowest_group_confidence(token_confidence(traces[i].logprobs or []), window) for i in voters]
    weights = [w if np.isfinite(w) else 0.0 for w in weights]
    return _outcome(f"deepconf_eta{eta:g}", traces, voters, spec, start, weights=weights,
                    extra={"threshold": threshold, "stopped": sum(t.stop_reason == "confidence_stop" for t in traces)})


@dataclass(frozen=True)
class OnlineProblem:
    problem_id: str
    prompt: str          # rendered through the engine's chat template
    gold: str | None


@dataclass
class Comparison:
    table: dict[str, dict[str, float]]              # method -> summed figures (see compare_methods)
    outcomes: dict[str, list[OnlineOutcome]]        # method -> one outcome per problem, in problem order


def _outcome_to_json(outcome: OnlineOutcome) -> dict:
    row = asdict(outcome)
    for trace in row["traces"]:
        trace.pop("logprobs", None)  # the vote and the figures are already in the outcome
    return row


def _outcome_from_json(row: dict) -> OnlineOutcome:
    return OnlineOutcome(**{**row, "traces": [OnlineTrace(**t) for t in row["traces"]]})


def compare_methods(engine, problems: Sequence[OnlineProblem], n: int, max_tokens: int, k: int,
                    similarity: Callable[[list[str]], np.ndarray], taus: Sequence[float], q: int, warmup: int,
                    eta: float, window: int, spec: AnswerSpec, seed: int = 0,
                    shard_dir: str | os.PathLike | None = None) -> Comparison:
    """cons@N, DeepPrune online (one method per tau) and DeepConf online on the same problems and the same trace
    seeds (those the sample stage uses: trace_seed(seed, problem_id, j)), side by side: tokens generated (the
    engine's count), accuracy, wall time, tokens/s, judge time, and why traces stopped.

    With `shard_dir`, each (method, problem) outcome is written there atomically as it finishes and read back on a
    rerun instead of being generated again (the caller keys the directory by everything that decides results)."""
    from collections import Counter

    runners: dict[str, Callable[[OnlineProblem, list[int]], OnlineOutcome]] = {
        "cons": lambda p, s: run_cons(engine, p.prompt, s, max_tokens, spec, p.gold)}
    for tau in taus:
        runners[f"deepprune_tau{tau:g}"] = (lambda t: lambda p, s: run_deepprune(
            engine, p.prompt, s, max_tokens, k, similarity, t, spec, p.gold, q=q))(tau)
    runners[f"deepconf_eta{eta:g}"] = lambda p, s: run_deepconf(engine, p.prompt, s, max_tokens, warmup, eta,
                                                                window, spec, p.gold)
    table: dict[str, dict[str, float]] = {}
    outcomes: dict[str, list[OnlineOutcome]] = {}
    for name, run in runners.items():
        outcomes[name] = []
        for problem in problems:
            shard = Path(shard_dir) / f"{name}__{_safe(problem.problem_id)}.json" if shard_dir else None
            if shard is not None and shard.exists():
                result = _outcome_from_json(json.loads(shard.read_text(encoding="utf-8")))
            else:
                result = run(problem, [trace_seed(seed, problem.problem_id, j) for j in range(n)])
                if shard is not None:
                    shard.parent.mkdir(parents=True, exist_ok=True)
                    with atomic_open(shard) as fh:
                        json.dump(_outcome_to_json(result), fh)
            outcomes[name].append(result)
        runs = outcomes[name]
        reasons: Counter[str] = Counter(t.stop_reason for r in runs for t in r.traces)
        tokens, seconds = float(sum(r.tokens for r in runs)), float(sum(r.wall_seconds for r in runs))
        table[name] = {"tokens": tokens, "accuracy": sum(bool(r.correct) for r in runs) / max(len(runs), 1),
                       "wall_seconds": seconds, "tokens_per_second": tokens / seconds if seconds else float("nan"),
                       "judge_seconds": float(sum(r.judge_seconds for r in runs)),
                       **{f"stopped_{reason}": float(count) for reason, count in sorted(reasons.items())}}
    base = table["cons"]["tokens"]
    for row in table.values():
        row["token_reduction"] = 1 - row["tokens"] / base if base else float("nan")
    return Comparison(table, outcomes)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def format_comparison(table: dict[str, dict[str, float]]) -> str:
    """A markdown table of compare_methods' output."""
    reasons = sorted({k for row in table.values() for k in row if k.startswith("stopped_")})
    head = "| method | tokens | token reduction | accuracy | wall s | tokens/s | judge s | " + \
           " | ".join(r.replace("stopped_", "") for r in reasons) + " |"
    lines = [head, "|" + "---|" * (7 + len(reasons))]
    for name, row in table.items():
        lines.append(f"| {name} | {row['tokens']:,.0f} | {row['token_reduction']:.1%} | {row['accuracy']:.2f} | "
                     f"{row['wall_seconds']:.1f} | {row['tokens_per_second']:.1f} | {row['judge_seconds']:.2f} | "
                     + " | ".join(f"{row.get(r, 0):.0f}" for r in reasons) + " |")
    return "\n".join(lines)
