"""Build the simulator's problems from the pipeline's outputs: traces, answer classes, held-out judge scores."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from deepprune.answers import AnswerSpec, answer_classes
from deepprune.data.schema import Trace
from deepprune.pruning.methods import Problem


def token_confidence(logprobs: Sequence[Sequence[float]]) -> np.ndarray:
    """DeepConf's token confidence: minus the mean of the top-k log-probabilities at each position."""
    return np.array([-float(np.mean(row)) if row else 0.0 for row in logprobs])


def build_problems(problems: Mapping[str, Sequence[Trace]], score_rows: Iterable[Mapping], spec: AnswerSpec,
                   judge: str, cosine: str | None) -> list[Problem]:
    """One Problem per problem id, with n x n matrices of the named judges' out-of-fold scores."""
    index = {pid: {t.trace_id: i for i, t in enumerate(ts)} for pid, ts in problems.items()}
    mats: dict[str, dict[str, np.ndarray]] = {}
    for name in filter(None, (judge, cosine)):
        mats[name] = {pid: np.full((len(ts), len(ts)), np.nan) for pid, ts in problems.items()}
    for row in score_rows:
        pid = row["problem_id"]
        if pid not in index:
            continue
        a, b = index[pid][row["trace_a"]], index[pid][row["trace_b"]]
        for name, per_problem in mats.items():
            value = row["scores"].get(name)
            if value is None:
                raise ValueError(f"pair {pid}/{row['trace_a']}/{row['trace_b']} has no {name!r} score")
            per_problem[pid][a, b] = per_problem[pid][b, a] = value
    out = []
    for pid, traces in problems.items():
        classes = np.array(answer_classes([t.answer for t in traces], spec))
        judge_m = mats[judge][pid]
        off_diag = ~np.eye(len(traces), dtype=bool)
        if np.isnan(judge_m[off_diag]).any():
            raise ValueError(f"problem {pid}: judge scores are missing for some pairs (rerun the judge stage)")
        has_lp = all(t.logprobs is not None for t in traces)
        out.append(Problem(
            problem_id=pid, classes=classes, correct=np.array([bool(t.correct) for t in traces]),
            lengths=np.array([t.n_tokens for t in traces], dtype=np.int64), judge=judge_m,
            cosine=mats[cosine][pid] if cosine else None,
            confidence=tuple(token_confidence(t.logprobs) for t in traces) if has_lp else None))
    return out
