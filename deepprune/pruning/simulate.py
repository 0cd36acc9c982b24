"""The prune stage's experiment: the pruning controller over the replay engine on recorded traces, seeded draws
of N traces in arrival order, every method on the same draws, mean and 95% interval over R repetitions (the
DeepConf protocol resamples many times)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from deepprune.answers import AnswerSpec
from deepprune.data.schema import Trace
from deepprune.metric_names import MATCHED_MINUS_RANDOM
from deepprune.progress import track
from deepprune.pruning.controller import Grader, MethodSpec, Outcome, Task, run_method, stable_seed
from deepprune.pruning.replay import MatrixSimilarity, RecordedTrace, ReplayEngine

if TYPE_CHECKING:
    from deepprune.config import PruneConfig

NEEDS_LOGPROBS = "needs logprobs"
UNBOUNDED = 1 << 30  # replayed traces end where they were recorded to end


@dataclass
class ReplayProblem:
    """One recorded problem: its traces live in the replay engine under (problem_id, index)."""

    problem_id: str
    n: int
    grader: Grader
    similarities: dict[str, MatrixSimilarity] = field(default_factory=dict)  # 'judge', 'cosine'
    has_logprobs: bool = False
    fold: int | None = None  # the label stage's grouped fold (tau tuning holds it out)
    prefix_tokens: list[int | None] | None = None  # per trace: its prefix's measured cost (Task.prefix_tokens)

    def task(self, order: Sequence[int]) -> Task:
        """The draw `order` (trace indices in arrival order) as the controller's task."""
        costs = None if self.prefix_tokens is None else tuple(self.prefix_tokens[int(i)] for i in order)
        return Task(self.problem_id, self.problem_id, tuple(int(i) for i in order), self.grader, UNBOUNDED, costs)


def replay_corpus(traces: Mapping[str, Sequence[RecordedTrace]], spec: AnswerSpec, gold: Mapping[str, str | None],
                  matrices: Mapping[str, Mapping[str, np.ndarray]] | None = None,
                  answers: Mapping[str, Sequence[str | None]] | None = None,
                  tokenizer=None) -> tuple[list[ReplayProblem], ReplayEngine]:
    """Problems and the engine that replays them. `matrices[name][problem_id]` is an n x n score matrix ('judge',
    'cosine'); `answers` are answers already extracted (else extracted on first use)."""
    records: dict[tuple[str, int], RecordedTrace] = {}
    problems = []
    for pid, recs in traces.items():
        grader = Grader(spec, gold.get(pid))
        for i, rec in enumerate(recs):
            records[(pid, i)] = rec
            if answers is not None:
                grader.know(rec.text, answers[pid][i])
        sims = {name: MatrixSimilarity(per[pid]) for name, per in (matrices or {}).items() if per.get(pid) is not None}
        problems.append(ReplayProblem(pid, len(recs), grader, sims, all(r.logprobs is not None for r in recs)))
    return problems, ReplayEngine(records, tokenizer)


def build_problems(problems: Mapping[str, Sequence[Trace]], score_rows: Iterable[Mapping], spec: AnswerSpec,
                   judge: str, cosine: str | None,
                   prefix_tokens: Mapping[tuple[str, str], int | None] | None = None,
                   ) -> tuple[list[ReplayProblem], ReplayEngine]:
    """The pipeline's traces with n x n matrices of the named judges' out-of-fold scores (judge stage), and, for a
    prefix cut by the text, what it costs each trace ({(problem id, trace id): tokens}, read_prefix_tokens; a cost
    at or past the recorded length means the trace ended first)."""
    index = {pid: {t.trace_id: i for i, t in enumerate(ts)} for pid, ts in problems.items()}
    folds: dict[str, int] = {}
    mats: dict[str, dict[str, np.ndarray]] = {}
    for name in filter(None, (judge, cosine)):
        mats[name] = {pid: np.full((len(ts), len(ts)), np.nan) for pid, ts in problems.items()}
    for row in score_rows:
        pid = row["problem_id"]
        if pid not in index:
            continue
        a, b = index[pid][row["trace_a"]], index[pid][row["trace_b"]]
        if row.get("fold") is not None:
            folds[pid] = int(row["fold"])
        for name, per_problem in mats.items():
            value = row["scores"].get(name)
            if value is None:
                raise ValueError(f"pair {pid}/{row['trace_a']}/{row['trace_b']} has no {name!r} score")
            per_problem[pid][a, b] = per_problem[pid][b, a] = value
    for pid, traces in problems.items():
        off_diag = ~np.eye(len(traces), dtype=bool)
        if np.isnan(mats[judge][pid][off_diag]).any():
            raise ValueError(f"problem {pid}: judge scores are missing for some pairs (rerun the judge stage)")
    recorded = {pid: [RecordedTrace(t.text, t.n_tokens, t.finish_reason, t.logprobs) for t in ts]
                for pid, ts in problems.items()}
    named = {"judge": mats[judge], **({"cosine": mats[cosine]} if cosine else {})}
    replayed, engine = replay_corpus(recorded, spec, {pid: ts[0].gold if ts else None for pid, ts in problems.items()},
                                     named, {pid: [t.answer for t in ts] for pid, ts in problems.items()})
    for problem in replayed:
        problem.fold = folds.get(problem.problem_id)
        if prefix_tokens is not None:
            problem.prefix_tokens = [_cost(prefix_tokens, problem.problem_id, t) for t in problems[problem.problem_id]]
    return replayed, engine


def _cost(prefix_tokens: Mapping[tuple[str, str], int | None], pid: str, trace: Trace) -> int | None:
    if (pid, trace.trace_id) not in prefix_tokens:
        raise ValueError(f"problem {pid}, trace {trace.trace_id}: the label stage measured no prefix cost for it "
                         f"(rerun the label stage)")
    cost = prefix_tokens[(pid, trace.trace_id)]
    return cost if cost is not None and cost < trace.n_tokens else None


@dataclass
class MethodResult:
    """Per-repetition totals of one method over all problems."""

    name: str
    accuracy: list[float] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    judge_calls: list[int] = field(default_factory=list)
    completed: list[int] = field(default_factory=list)
    started: list[int] = field(default_factory=list)  # traces that wrote a token (ESC and settle start fewer)
    depth: list[float] = field(default_factory=list)  # sequential depth in tokens, mean over problems
    skipped: str | None = None
    seconds: float = 0.0


def deepconf_warmup_error(warmup: int, n: int, corpus: str, n_from_params: bool) -> str | None:
    """The params error when DeepConf's warm-up would take every trace (W >= N makes it cons@N)."""
    if warmup < n:
        return None
    source = f"prune.n = {n}" if n_from_params else f"N = {n}, the smallest per-problem trace count of corpus {corpus!r}"
    return (f"prune.deepconf.warmup = {warmup} must be below N ({source}): with W >= N DeepConf never stops a "
            f"trace and equals cons@N; lower prune.deepconf.warmup" + ("" if n_from_params else " or set prune.n"))


def draws(problems: Sequence[ReplayProblem], n: int, seed: int, rep: int) -> list[Task]:
    """Repetition `rep`'s draw: N traces of every problem in a seeded arrival order (every method sees it)."""
    rng = np.random.default_rng([seed, rep])
    return [p.task(rng.choice(p.n, size=n, replace=False)) for p in problems]


def pick_taus(problems: Sequence[ReplayProblem], engine, common: Mapping[str, object], grid: Sequence[float],
              target_change_pts: float, n: int, k: int, repetitions: int, seed: int) -> dict[str, object]:
    """tau for each grouped fold, picked on the other folds' problems only: DeepPrune at every tau of `grid` on the
    same draws as the prune stage; the tau with the largest token reduction whose accuracy change against cons@N
    (points, over the training problems and draws) is at least `target_change_pts`; ties go to the larger tau, and
    where no tau qualifies, tau = 1 (nothing merges: cons@N's accuracy). Returns {"taus": {fold: tau}, "table":
    every fold's (tau, change, reduction) rows}."""
    if any(p.fold is None for p in problems):
        raise ValueError("tau tuning needs every problem's fold (the judge stage's scores carry it)")
    folds = sorted({int(p.fold) for p in problems})  # type: ignore[arg-type]
    if len(folds) < 2:
        raise ValueError("tau tuning needs at least 2 folds")
    grid = sorted(set(float(t) for t in grid))
    specs = [MethodSpec("cons", "cons")] + [MethodSpec(f"tau{t:g}", "deepprune", {**common, "tau": t}) for t in grid]
    kept: list = []
    simulate(problems, engine, specs, n, k, repetitions, seed, keep=kept)  # the prune stage's draws, per problem
    row_of = {spec.name: row for row, spec in enumerate(specs)}
    correct = np.zeros((len(specs), len(problems)))  # row 0: cons@N; summed over draws
    tokens = np.zeros((len(specs), len(problems)))
    for _, name, outs in kept:
        correct[row_of[name]] += [bool(o.correct) for o in outs]
        tokens[row_of[name]] += [o.tokens for o in outs]
    fold_of = np.array([p.fold for p in problems])
    taus: dict[int, float] = {}
    table: dict[int, list[dict[str, float]]] = {}
    for fold in folds:
        train = fold_of != fold
        base_acc, base_tokens = correct[0, train].sum(), tokens[0, train].sum()
        rows = []
        for i, tau in enumerate(grid, start=1):
            change = 100.0 * (correct[i, train].sum() - base_acc) / (train.sum() * repetitions)
            rows.append({"tau": tau, "accuracy_change_pts": change, "token_reduction": 1 - tokens[i, train].sum() / base_tokens})
        table[fold] = rows
        ok = [r for r in rows if r["accuracy_change_pts"] >= target_change_pts - 1e-9]
        taus[fold] = max(ok, key=lambda r: (round(r["token_reduction"], 12), r["tau"]))["tau"] if ok else 1.0
    return {"taus": taus, "table": table}


def simulate(problems: Sequence[ReplayProblem], engine, methods: Sequence[MethodSpec], n: int, k: int,
             repetitions: int, seed: int, keep: list | None = None,
             fold_taus: Mapping[int, float] | None = None) -> dict[str, MethodResult]:
    """Every method on the same seeded draws through the controller; `random` methods match the budget of the
    method they name, so they must come after it in `methods`; a `tuned` method is DeepPrune at the tau
    `fold_taus` gives its problem's fold (pick_taus). `keep` collects every Outcome (tests)."""
    if n < 1:
        raise ValueError("budget N must be >= 1")
    short = [p.problem_id for p in problems if p.n < n]
    if short:
        raise ValueError(f"N = {n} exceeds the traces available for {len(short)} problems (e.g. {short[0]})")
    results = {spec.name: MethodResult(spec.name) for spec in methods}
    has_logprobs = all(p.has_logprobs for p in problems)
    for spec in methods:
        if spec.kind.startswith("deepconf") and not has_logprobs:
            results[spec.name].skipped = NEEDS_LOGPROBS
    with track("simulating", repetitions * sum(not r.skipped for r in results.values()), "runs") as progress:
        for rep in range(repetitions):
            tasks = draws(problems, n, seed, rep)
            budgets: dict[str, int] = {}
            for spec in methods:
                res = results[spec.name]
                if res.skipped:
                    continue
                start = time.perf_counter()
                method_rng = np.random.default_rng([seed, rep, stable_seed(spec.name)])
                outs: list[Outcome] = [run_method(_concrete(spec, p, fold_taus), engine, t, k, p.similarities,
                                                  method_rng, budgets) for p, t in zip(problems, tasks)]
                res.seconds += time.perf_counter() - start
                res.accuracy.append(float(np.mean([bool(o.correct) for o in outs])))
                res.tokens.append(int(sum(o.tokens for o in outs)))
                res.judge_calls.append(int(sum(o.judge_calls for o in outs)))
                res.completed.append(int(sum(o.completed for o in outs)))
                res.started.append(int(sum(o.started for o in outs)))
                res.depth.append(float(np.mean([o.depth for o in outs])))
                progress.advance()  # one method on one draw of every problem
                for p, o in zip(problems, outs):  # random pruning matches a budget per problem and draw
                    budgets[f"{spec.name}:{p.problem_id}"] = o.tokens
                if keep is not None:
                    keep.append((rep, spec.name, outs))
    return results


def _concrete(spec: MethodSpec, problem: ReplayProblem, fold_taus: Mapping[int, float] | None) -> MethodSpec:
    """A `tuned` method on one problem: DeepPrune at its fold's tau."""
    if spec.kind != "tuned":
        return spec
    if fold_taus is None or problem.fold not in fold_taus:
        raise ValueError(f"{spec.name}: no tau picked for the fold of problem {problem.problem_id} (run pick_taus)")
    return MethodSpec(spec.name, "deepprune", {**spec.settings, "tau": fold_taus[problem.fold]})


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
                            ("completed", res.completed), ("started", res.started), ("sequential_depth", res.depth),
                            ("depth_reduction", [1.0 - d / rd for d, rd in zip(res.depth, ref.depth)])):
            mean, lo, hi = interval(values)
            row[key], row[f"{key}_lo"], row[f"{key}_hi"] = mean, lo, hi
        row["seconds"] = res.seconds
        out[name] = row
    return out


def add_matched_minus_random(summary: dict[str, dict[str, float | str | None]], results: Mapping[str, MethodResult],
                             methods: Sequence[MethodSpec]) -> None:
    """For every budget-matched random method: the accuracy of the method whose budget it matches minus its own,
    paired by draw (the same arrival order, the same budget per problem), in points, with its interval over the
    draws (metric_names.MATCHED_MINUS_RANDOM, `_lo`, `_hi`). A `_lo` above 0 is the method beating random pruning at
    its own budget beyond the 95% interval; comparing the two methods' separate intervals would also count the
    draws' shared noise."""
    for spec in methods:
        row, match = summary[spec.name], spec.settings.get("match") if spec.kind == "random" else None
        if match is None or "skipped" in row or "skipped" in summary[str(match)]:
            continue
        gains = [100.0 * (m - r) for m, r in zip(results[str(match)].accuracy, results[spec.name].accuracy)]
        mean, lo, hi = interval(gains)
        row[MATCHED_MINUS_RANDOM], row[MATCHED_MINUS_RANDOM + "_lo"], row[MATCHED_MINUS_RANDOM + "_hi"] = mean, lo, hi


def clustering_settings(cfg: "PruneConfig") -> dict[str, object]:
    """The settings every clustering method of the prune stage shares (r, q, the cap, the vote)."""
    return {"r": cfg.r, "q": cfg.q, "max_clusters": cfg.max_clusters, "vote": cfg.vote}


def method_specs(cfg: "PruneConfig") -> list[MethodSpec]:
    """Every method the prune stage runs, in an order where each budget-matched method follows its reference."""
    specs = [MethodSpec("cons", "cons"), MethodSpec("oracle", "oracle")]
    common = clustering_settings(cfg)
    specs += [MethodSpec(f"deepprune_tau{t:g}", "deepprune", {"tau": t, **common}) for t in cfg.taus]
    specs += [MethodSpec(f"sbert_tau{t:g}", "sbert", {"tau": t, **common}) for t in cfg.sbert_taus]
    matched = [f"deepprune_tau{cfg.tau:g}"]
    if cfg.tune is not None:
        tuned = f"deepprune_tuned{cfg.tune.target_change_pts:+g}pts"
        specs.append(MethodSpec(tuned, "tuned", {"target_change_pts": cfg.tune.target_change_pts, **common}))
        matched.append(tuned)
    specs.append(MethodSpec("deepprune_perfect_judge", "perfect_judge", dict(common)))  # DeepPrune, clustered right
    matched.append("deepprune_perfect_judge")
    specs += [MethodSpec(f"random_at_{name}", "random", {"match": name}) for name in matched]
    specs.append(MethodSpec(f"esc_w{cfg.esc_window}", "esc", {"window": cfg.esc_window}))
    specs.append(MethodSpec(f"settle_tau{cfg.tau:g}_w{cfg.settle_window}", "settle",
                            {"tau": cfg.tau, "window": cfg.settle_window, **common}))
    dc = cfg.deepconf
    for label, eta in (("low", dc.low_eta), ("high", dc.high_eta)):
        specs.append(MethodSpec(f"deepconf_{label}_offline", "deepconf_offline", {"eta": eta, "window": dc.window}))
        specs.append(MethodSpec(f"deepconf_{label}_online", "deepconf_online",
                                {"eta": eta, "window": dc.window, "warmup": dc.warmup, "consensus": dc.consensus}))
    return specs


def add_judge_seconds(summary: dict[str, dict[str, float | str | None]], methods: Sequence[MethodSpec],
                      cost: Mapping[str, float]) -> None:
    """What judging online would cost each clustering method: every arriving prefix encoded once, and every
    call scored by the judge head (cosine for SBERT clustering, whose cost per pair is negligible)."""
    for method in methods:
        row = summary[method.name]
        if method.kind not in ("deepprune", "sbert", "settle", "tuned") or "skipped" in row:
            continue
        per_pair = cost["score_seconds_per_pair"] if method.kind != "sbert" else 0.0
        row["judge_seconds"] = float(row["started"]) * cost["encode_seconds_per_prefix"] + float(row["judge_calls"]) * per_pair
