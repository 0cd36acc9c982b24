"""Online pruning with real generation: the pruning controller (deepprune.pruning.controller) over a live engine.

cons@N, DeepPrune online (one method per tau) and DeepConf online run on the same problems with the sample
stage's trace seeds; tokens are the engine's count, and every trace records why it stopped (finished, pruned,
confidence_stop, length). On the transformers engine a resumed trace goes on from its token ids and generator
state, so it writes exactly what it writes under cons@N with the same seed: the token saving is then exactly the
pruned traces' unwritten tails. A server resumes with a fresh seed (seed + RESUME_SEED_OFFSET).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from deepprune.answers import AnswerSpec
from deepprune.io import atomic_open
from deepprune.progress import track
from deepprune.pruning.controller import Grader, MethodSpec, Outcome, Similarity, Task, TraceRun, run_method
from deepprune.sampling.live import trace_seed


def judge_similarity(judge, encoder, batch_size: int = 32) -> Similarity:
    """A judge as DeepPrune's online similarity: every pair scored, each prefix encoded once (a judge that reads the
    texts alone, the cross-encoder, is handed no embeddings, and none are computed)."""
    def similarity(seeds: Sequence[int], prefixes: Sequence[str]) -> np.ndarray:
        texts = list(prefixes)
        n = len(texts)
        pairs_a, pairs_b = [t for t in texts for _ in texts], texts * n  # row-aligned with the embeddings below
        if not getattr(judge, "reads_embeddings", True):
            return judge.score(None, None, pairs_a, pairs_b).reshape(n, n)
        emb = encoder.embed(texts, batch_size)
        return judge.score(np.repeat(emb, n, axis=0), np.tile(emb, (n, 1)), pairs_a, pairs_b).reshape(n, n)
    return similarity


def online_methods(taus: Sequence[float], r: int, q: int, max_clusters: int | None, vote: str, warmup: int,
                   eta: float, window: int, consensus: float | None = None) -> list[MethodSpec]:
    """The online stage's methods: cons@N, DeepPrune per tau, DeepConf online."""
    common = {"r": r, "q": q, "max_clusters": max_clusters, "vote": vote}
    return [MethodSpec("cons", "cons"),
            *[MethodSpec(f"deepprune_tau{t:g}", "deepprune", {"tau": t, **common}) for t in taus],
            MethodSpec(f"deepconf_eta{eta:g}", "deepconf_online",
                       {"warmup": warmup, "eta": eta, "window": window, "consensus": consensus})]


@dataclass(frozen=True)
class OnlineProblem:
    problem_id: str
    prompt: str          # rendered through the engine's chat template
    gold: str | None


@dataclass
class Comparison:
    table: dict[str, dict[str, float]]       # method -> summed figures (see compare_methods)
    outcomes: dict[str, list[Outcome]]       # method -> one outcome per problem, in problem order


def outcome_to_json(outcome: Outcome) -> dict:
    row = asdict(outcome)
    for trace in row["traces"]:
        trace.pop("logprobs", None)  # the vote and the figures are already in the outcome
    return row


def outcome_from_json(row: dict) -> Outcome | None:
    """The outcome a shard holds, or None when the shard predates a field of Outcome (it is generated again)."""
    if set(row) != {f.name for f in fields(Outcome)}:
        return None
    return Outcome(**{**row, "traces": [TraceRun(**t) for t in row["traces"]]})


def compare_methods(engine, problems: Sequence[OnlineProblem], n: int, max_tokens: int, k: int,
                    similarity: Similarity, methods: Sequence[MethodSpec], spec: AnswerSpec, seed: int = 0,
                    shard_dir: str | os.PathLike | None = None) -> Comparison:
    """Every method on the same problems and the same trace seeds (those the sample stage uses:
    trace_seed(seed, problem_id, j)), side by side: tokens generated (the engine's count), accuracy, wall time,
    tokens/s, judge time, and why traces stopped.

    With `shard_dir`, each (method, problem) outcome is written there atomically as it finishes and read back on a
    rerun instead of being generated again (the caller keys the directory by everything that decides results)."""
    graders = {p.problem_id: Grader(spec, p.gold) for p in problems}
    table: dict[str, dict[str, float]] = {}
    outcomes: dict[str, list[Outcome]] = {}
    with track("running methods", len(methods) * len(problems), "runs") as progress:  # methods x problems
        for method in methods:
            outcomes[method.name] = []
            for problem in problems:
                shard = Path(shard_dir) / f"{method.name}__{_safe(problem.problem_id)}.json" if shard_dir else None
                generated = 0  # tokens/s counts tokens generated now, not outcomes read back
                result = None
                if shard is not None and shard.exists():
                    result = outcome_from_json(json.loads(shard.read_text(encoding="utf-8")))
                if result is None:
                    task = Task(problem.problem_id, problem.prompt,
                                tuple(trace_seed(seed, problem.problem_id, j) for j in range(n)),
                                graders[problem.problem_id], max_tokens)
                    result = run_method(method, engine, task, k, {"judge": similarity})
                    generated = result.tokens
                    if shard is not None:
                        shard.parent.mkdir(parents=True, exist_ok=True)
                        with atomic_open(shard) as fh:
                            json.dump(outcome_to_json(result), fh)
                outcomes[method.name].append(result)
                progress.advance(1, tokens=generated)
            runs = outcomes[method.name]
            reasons: Counter[str] = Counter(t.stop_reason for r in runs for t in r.traces)
            tokens, seconds = float(sum(r.tokens for r in runs)), float(sum(r.wall_seconds for r in runs))
            table[method.name] = {
                "tokens": tokens, "accuracy": sum(bool(r.correct) for r in runs) / max(len(runs), 1),
                "wall_seconds": seconds, "tokens_per_second": tokens / seconds if seconds else float("nan"),
                "judge_seconds": float(sum(r.judge_seconds for r in runs)),
                "sequential_depth": float(np.mean([r.depth for r in runs])) if runs else float("nan"),
                **{f"stopped_{reason}": float(count) for reason, count in sorted(reasons.items())}}
    base = table["cons"]["tokens"] if "cons" in table else float("nan")
    for row in table.values():
        row["token_reduction"] = 1 - row["tokens"] / base if base else float("nan")
    return Comparison(table, outcomes)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def format_comparison(table: dict[str, dict[str, float]], timings: bool = True) -> str:
    """A markdown table of compare_methods' output; without the timing columns (wall s, tokens/s, judge s) when
    `timings` is false, as the stage's output file is written: outputs are a function of the inputs."""
    reasons = sorted({k for row in table.values() for k in row if k.startswith("stopped_")})
    timed = ("wall s", "tokens/s", "judge s") if timings else ()
    columns = ("method", "tokens", "token reduction", "accuracy", "sequential depth", *timed, *(r.replace("stopped_", "") for r in reasons))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for name, row in table.items():
        cells = [name, f"{row['tokens']:,.0f}", f"{row['token_reduction']:.1%}", f"{row['accuracy']:.2f}",
                 f"{row['sequential_depth']:,.0f}"]
        if timings:
            cells += [f"{row['wall_seconds']:.1f}", f"{row['tokens_per_second']:.1f}", f"{row['judge_seconds']:.2f}"]
        cells += [f"{row.get(r, 0):.0f}" for r in reasons]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
