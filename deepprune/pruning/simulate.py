"""The replay simulator: seeded draws of N traces in arrival order, every method on the same draws,
mean and 95% interval over R repetitions (the DeepConf protocol resamples many times)."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from deepprune.pruning import methods as m
from deepprune.pruning.methods import Outcome, Problem

if TYPE_CHECKING:
    from deepprune.config import PruneConfig

NEEDS_LOGPROBS = "needs logprobs"


@dataclass(frozen=True)
class MethodSpec:
    """One method to simulate: a kind from METHOD_KINDS and its settings."""

    name: str
    kind: str
    settings: Mapping[str, float | int | bool | None] = field(default_factory=dict)


METHOD_KINDS = ("cons", "deepprune", "sbert", "random", "esc", "oracle", "deepconf_offline", "deepconf_online")


@dataclass
class MethodResult:
    """Per-repetition totals of one method over all problems."""

    name: str
    accuracy: list[float] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    judge_calls: list[int] = field(default_factory=list)
    completed: list[int] = field(default_factory=list)
    skipped: str | None = None
    seconds: float = 0.0


def _run_one(spec: MethodSpec, problem: Problem, order: list[int], k: int, rng: np.random.Generator,
             budgets: Mapping[str, int]) -> Outcome:
    s = spec.settings
    if spec.kind == "cons":
        return m.cons_at_n(problem, order, k)
    if spec.kind == "deepprune":
        return m.deepprune(problem, order, k, float(s["tau"]), int(s.get("r", 1)), int(s.get("q", 2)),
                           s.get("max_clusters"), str(s.get("vote", "all_completed")))
    if spec.kind == "sbert":
        return m.sbert_clustering(problem, order, k, float(s["tau"]), int(s.get("r", 1)), int(s.get("q", 2)),
                                  s.get("max_clusters"), str(s.get("vote", "all_completed")))
    if spec.kind == "random":
        key = f"{s['match']}:{problem.problem_id}"
        if key not in budgets:
            raise ValueError(f"random pruning matches {s['match']!r}, which must be simulated before it")
        return m.random_pruning(problem, order, k, budgets[key], rng)
    if spec.kind == "esc":
        return m.esc(problem, order, k, int(s["window"]))
    if spec.kind == "oracle":
        return m.oracle(problem, order, k)
    if spec.kind == "deepconf_offline":
        return m.deepconf_offline(problem, order, k, float(s["eta"]), int(s["window"]))
    if spec.kind == "deepconf_online":
        return m.deepconf_online(problem, order, k, float(s["eta"]), int(s["window"]), int(s["warmup"]))
    raise ValueError(f"unknown method kind {spec.kind!r}; known: {', '.join(METHOD_KINDS)}")


def simulate(problems: Sequence[Problem], methods: Sequence[MethodSpec], n: int, k: int, repetitions: int,
             seed: int) -> dict[str, MethodResult]:
    """Every method on the same seeded draws; `random` methods match the budget of the method they name,
    so they must come after it in `methods`."""
    if n < 1:
        raise ValueError("budget N must be >= 1")
    short = [p.problem_id for p in problems if p.n < n]
    if short:
        raise ValueError(f"N = {n} exceeds the traces available for {len(short)} problems (e.g. {short[0]})")
    results = {spec.name: MethodResult(spec.name) for spec in methods}
    has_logprobs = all(p.confidence is not None for p in problems)
    for spec in methods:
        if spec.kind.startswith("deepconf") and not has_logprobs:
            results[spec.name].skipped = NEEDS_LOGPROBS
    for rep in range(repetitions):
        rng = np.random.default_rng([seed, rep])
        orders = [list(rng.choice(p.n, size=n, replace=False)) for p in problems]
        budgets: dict[str, int] = {}
        for spec in methods:
            res = results[spec.name]
            if res.skipped:
                continue
            start = time.perf_counter()
            method_rng = np.random.default_rng([seed, rep, len(spec.name)])
            outs = [_run_one(spec, p, o, k, method_rng, budgets) for p, o in zip(problems, orders)]
            res.seconds += time.perf_counter() - start
            res.accuracy.append(float(np.mean([o.correct for o in outs])))
            res.tokens.append(int(sum(o.tokens for o in outs)))
            res.judge_calls.append(int(sum(o.judge_calls for o in outs)))
            res.completed.append(int(sum(o.completed for o in outs)))
            # random pruning matches a budget per problem: the named method's tokens on this very problem
            for p, o in zip(problems, outs):
                budgets[f"{spec.name}:{p.problem_id}"] = o.tokens
    return results


def interval(values: Sequence[float]) -> tuple[float, float, float]:
    """Mean and the 2.5th and 97.5th percentiles over repetitions."""
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), float(np.percentile(arr, 2.5)), float(np.percentile(arr, 97.5))


def summarize(results: Mapping[str, MethodResult], reference: str) -> dict[str, dict[str, float | str | None]]:
    """Accuracy, tokens, token reduction and accuracy change against the reference (cons@N), with intervals."""
    ref = results[reference]
    out: dict[str, dict[str, float | str | None]] = {}
    for name, res in results.items():
        if res.skipped:
            out[name] = {"skipped": res.skipped}
            continue
        reduction = [1.0 - t / rt for t, rt in zip(res.tokens, ref.tokens)]
        delta = [100.0 * (a - ra) for a, ra in zip(res.accuracy, ref.accuracy)]
        row: dict[str, float | str | None] = {}
        for key, values in (("accuracy", res.accuracy), ("tokens", res.tokens), ("token_reduction", reduction),
                            ("accuracy_change_pts", delta), ("judge_calls", res.judge_calls),
                            ("completed", res.completed)):
            mean, lo, hi = interval(values)
            row[key], row[f"{key}_lo"], row[f"{key}_hi"] = mean, lo, hi
        row["seconds"] = res.seconds
        out[name] = row
    return out


def method_specs(cfg: "PruneConfig") -> list[MethodSpec]:
    """Every method the prune stage runs, in an order where each budget-matched method follows its reference."""
    specs = [MethodSpec("cons", "cons"), MethodSpec("oracle", "oracle")]
    common = {"r": cfg.r, "q": cfg.q, "max_clusters": cfg.max_clusters, "vote": cfg.vote}
    specs += [MethodSpec(f"deepprune_tau{t:g}", "deepprune", {"tau": t, **common}) for t in cfg.taus]
    specs += [MethodSpec(f"sbert_tau{t:g}", "sbert", {"tau": t, **common}) for t in cfg.sbert_taus]
    specs.append(MethodSpec(f"random_at_deepprune_tau{cfg.tau:g}", "random", {"match": f"deepprune_tau{cfg.tau:g}"}))
    specs.append(MethodSpec(f"esc_w{cfg.esc_window}", "esc", {"window": cfg.esc_window}))
    dc = cfg.deepconf
    for label, eta in (("low", dc.low_eta), ("high", dc.high_eta)):
        specs.append(MethodSpec(f"deepconf_{label}_offline", "deepconf_offline", {"eta": eta, "window": dc.window}))
        specs.append(MethodSpec(f"deepconf_{label}_online", "deepconf_online",
                                {"eta": eta, "window": dc.window, "warmup": dc.warmup}))
    return specs


def add_judge_seconds(summary: dict[str, dict[str, float | str | None]], methods: Sequence[MethodSpec],
                      cost: Mapping[str, float], prefixes_encoded: int) -> None:
    """What judging online would cost each clustering method: every arriving prefix encoded once, and every
    call scored by the judge head (cosine for SBERT clustering, whose cost per pair is negligible)."""
    for method in methods:
        row = summary[method.name]
        if method.kind not in ("deepprune", "sbert") or "skipped" in row:
            continue
        per_pair = cost["score_seconds_per_pair"] if method.kind == "deepprune" else 0.0
        row["judge_seconds"] = prefixes_encoded * cost["encode_seconds_per_prefix"] + float(row["judge_calls"]) * per_pair
