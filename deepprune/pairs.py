"""Trace pairs, their labels, grouped folds and oversampling (DESIGN.md section 1, steps 1 and 2)."""

from __future__ import annotations

import itertools
import json
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from deepprune.answers import AnswerSpec, answer_classes
from deepprune.data.schema import Trace
from deepprune.progress import track


@dataclass(frozen=True)
class Pair:
    """Two traces of one problem; label 1 when their final answers are equivalent."""

    problem_id: str
    trace_a: str
    trace_b: str
    label: int
    fold: int = -1


def read_pairs(path: str | os.PathLike) -> list[Pair]:
    """The labelled pairs the label stage wrote (JSONL)."""
    with open(path, encoding="utf-8") as handle:
        return [Pair(**json.loads(line)) for line in handle if line.strip()]


def read_prefixes(path: str | os.PathLike) -> dict[tuple[str, str], dict[str, str]]:
    """Every prefix the label stage built: (problem_id, trace_id) -> {prefix name: text}."""
    with open(path, encoding="utf-8") as handle:
        return {(row["problem_id"], row["trace_id"]): row["prefixes"]
                for row in map(json.loads, handle) if row}


def read_prefix_tokens(path: str | os.PathLike, name: str) -> dict[tuple[str, str], int | None]:
    """What one prefix costs each trace, as the label stage measured it (deepprune.truncate.cut_prefixes): the tokens
    written when the prefix is complete, None where the trace ends first. An error names the file and line when
    the label stage did not measure it."""
    out = {}
    with open(path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            row = json.loads(line)
            costs = row.get("prefix_tokens", {})
            if name not in costs:
                raise KeyError(f"{path}:{line_no}: no prefix_tokens for {name!r}; the label stage measured "
                               f"{sorted(costs)} (rerun it: dvc repro label@<corpus>)")
            out[(row["problem_id"], row["trace_id"])] = costs[name]
    return out


def prefix_texts(table: dict[tuple[str, str], dict[str, str]], name: str,
                 path: str | os.PathLike = "prefixes.jsonl") -> dict[tuple[str, str], str]:
    """One prefix per trace, or a clear error when the label stage did not build it."""
    out = {}
    for line_no, (key, row) in enumerate(table.items(), start=1):
        if name not in row:
            raise KeyError(f"{path}:{line_no}: no prefix {name!r}; the label stage built {sorted(row)} "
                           f"(add its k to params label.*_k)")
        out[key] = row[name]
    return out


def build_pairs(problems: dict[str, list[Trace]], spec: AnswerSpec) -> list[Pair]:
    """All C(n,2) pairs per problem, labelled by answer equivalence (a missing answer never agrees)."""
    pairs = []
    with track("labelling pairs", len(problems), "problems") as progress:
        for pid, traces in problems.items():
            classes = answer_classes([t.answer for t in traces], spec)
            for i, j in itertools.combinations(range(len(traces)), 2):
                same = classes[i] == classes[j] and classes[i] >= 0
                pairs.append(Pair(pid, traces[i].trace_id, traces[j].trace_id, int(same)))
            progress.advance()
    return pairs


def assign_folds(pairs: Sequence[Pair], n_folds: int, seed: int) -> dict[str, int]:
    """Fold per problem: grouped (a problem's pairs never straddle folds), stratified by 'has a disagreement'.

    Problems with a different-answer pair are rare on some corpora (12 of 100 on MATH), so they are dealt
    round-robin first; otherwise a fold could hold no negative pair and its AUROC would be undefined.
    """
    has_negative: dict[str, bool] = {}
    for pair in pairs:
        has_negative[pair.problem_id] = has_negative.get(pair.problem_id, False) or pair.label == 0
    rng = np.random.default_rng(seed)
    folds: dict[str, int] = {}
    offset = 0
    for flag in (True, False):
        group = sorted(pid for pid, neg in has_negative.items() if neg is flag)
        order = rng.permutation(len(group))
        for rank, idx in enumerate(order):
            folds[group[idx]] = (offset + rank) % n_folds
        offset += len(group)
    if len(has_negative) < n_folds:
        raise ValueError(f"{len(has_negative)} problems cannot fill {n_folds} folds: lower label.folds")
    return folds


def with_folds(pairs: Sequence[Pair], folds: dict[str, int]) -> list[Pair]:
    """The pairs with their problem's fold filled in."""
    return [Pair(p.problem_id, p.trace_a, p.trace_b, p.label, folds[p.problem_id]) for p in pairs]


def cap_per_problem(rows: np.ndarray, problems: np.ndarray, cap: int | None, seed: int) -> np.ndarray:
    """At most `cap` of `rows` (indices into `problems`, each pair's problem id) per problem, drawn uniformly at
    random without replacement (seeded), in ascending order; every row when `cap` is None. A problem with N traces
    has N(N-1)/2 pairs: 780 at N = 40, where 8 traces give 28, so a judge trained on every pair of a wide corpus
    sees each problem's few answers hundreds of times over, and training time grows with N squared. The paper
    trains on every pair (C(n,2) per question); this cap is an option for wide corpora (docs/DECISIONS.md). Only
    training is capped: every pair is still scored held-out, and later stages replay every pair's score."""
    rows = np.asarray(rows)
    if cap is None or len(rows) == 0:
        return rows
    rng = np.random.default_rng(seed)
    ids, group = np.unique(np.asarray(problems)[rows], return_inverse=True)  # problems in sorted order
    order = np.argsort(group, kind="stable")
    bounds = np.searchsorted(group[order], np.arange(len(ids) + 1))
    kept = []
    for start, end in zip(bounds[:-1], bounds[1:]):
        mine = rows[order[start:end]]
        kept.append(mine if len(mine) <= cap else rng.choice(mine, size=cap, replace=False))
    return np.sort(np.concatenate(kept))


def oversample_minority(labels: np.ndarray, ratio: float, rng: np.random.Generator) -> np.ndarray:
    """Indices into labels with the minority class drawn with replacement up to ratio x the majority count.

    ratio = 1.0 balances the classes; a ratio at or below the current one returns every index once.
    """
    labels = np.asarray(labels)
    counts = Counter(labels.tolist())
    if len(counts) < 2:
        return np.arange(len(labels))
    minority = min(counts, key=lambda c: (counts[c], c))
    majority_count = max(counts.values())
    target = int(round(ratio * majority_count))
    minority_idx = np.flatnonzero(labels == minority)
    extra = target - len(minority_idx)
    if extra <= 0:
        return np.arange(len(labels))
    drawn = rng.choice(minority_idx, size=extra, replace=True)
    return np.concatenate([np.arange(len(labels)), drawn])


def redundancy_stats(problems: dict[str, list[Trace]], pairs: Sequence[Pair], spec: AnswerSpec) -> dict[str, float]:
    """The paper's Figure 2a quantities on one corpus, plus what makes judge figures noisy or not."""
    labels = np.array([p.label for p in pairs])
    shares = per_problem_same_share(pairs)
    distinct = []
    majority_correct = []
    for traces in problems.values():
        classes = answer_classes([t.answer for t in traces], spec)
        distinct.append(len(set(classes)))
        top = Counter(c for c in classes if c >= 0).most_common(1)
        if top and traces[0].gold is not None:
            winner = next(t for t, c in zip(traces, classes) if c == top[0][0])
            majority_correct.append(bool(winner.correct))
    traces_all = [t for ts in problems.values() for t in ts]
    return {
        "label/same_answer_share": float(labels.mean()) if len(labels) else float("nan"),
        "label/n_pairs": int(len(labels)),
        "label/n_same": int(labels.sum()),
        "label/n_different": int(len(labels) - labels.sum()),
        "label/n_problems": len(problems),
        "label/n_traces": len(traces_all),
        "label/problems_with_disagreement": int(sum(share < 1 for share in shares.values())),
        "label/mean_distinct_answers": float(np.mean(distinct)) if distinct else float("nan"),
        "label/no_answer_share": float(np.mean([t.answer is None for t in traces_all])) if traces_all else float("nan"),
        "label/trace_accuracy": float(np.mean([bool(t.correct) for t in traces_all])) if traces_all else float("nan"),
        "label/majority_vote_accuracy": float(np.mean(majority_correct)) if majority_correct else float("nan"),
        "label/median_trace_tokens": float(np.median([t.n_tokens for t in traces_all])) if traces_all else float("nan"),
    }


def per_problem_same_share(pairs: Sequence[Pair]) -> dict[str, float]:
    """Share of same-answer pairs within each problem (the distribution behind Figure 2a)."""
    per_problem: dict[str, list[int]] = {}
    for pair in pairs:
        per_problem.setdefault(pair.problem_id, []).append(pair.label)
    return {pid: float(np.mean(v)) for pid, v in per_problem.items()}
