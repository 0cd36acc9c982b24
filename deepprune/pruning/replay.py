"""The replay engine: recorded traces "generated" again through the engines' `generate(jobs)` interface, so the
pruning controller runs on a recorded corpus exactly as it runs on a live engine (and fast: the prune stage and
the tests use it, as lm-eval-harness uses its dummy backend).

A job for trace i of a problem is GenJob(prompt, max_tokens, seed) with the record keyed (prompt, seed); the
prune stage keys recorded corpora by (problem id, trace index). The engine serves the recorded trace up to the
requested number of tokens, in the corpus's token unit (the recorded `n_tokens`), resumes a paused trace where
it stopped (`GenResult.continuation` -> `GenJob.resume`), streams the recorded per-token top-k logprobs through
`on_token` when the corpus has them (so DeepConf's stop rule runs unchanged), and reports recorded token counts.

Finish reasons follow a live engine: a trace of L tokens reports its recorded reason once a job reaches token L
with budget to spare; a job whose budget ends exactly at L reports `length` (the engine has not yet sampled the
end of text), and resuming it gives 0 tokens and the recorded reason. So a trace finishes within a k-token prefix
exactly when L < k, live or replayed.

Text of a partial trace: with a tokenizer (the corpus's), the decoded first tokens; without one, the same share
of the characters (the prune stage's judge scores are looked up by trace, so the text is for reading only).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from deepprune.sampling.engines import Continuation, GenJob, GenResult, TokenEvent


@dataclass(frozen=True)
class RecordedTrace:
    """One complete trace as recorded: its text, token count, why it ended, and (optionally) per-token top-k logprobs."""

    text: str
    n_tokens: int
    finish_reason: str = "stop"        # stop | length (anything else replays as stop)
    logprobs: Sequence[Sequence[float]] | None = None


@dataclass(frozen=True)
class ReplayContinuation(Continuation):
    """Where a replayed trace paused: its record key and the tokens already served."""

    key: Any = None
    position: int = 0


@dataclass
class ReplayEngine:
    """Serves recorded traces as a live engine would (module docstring)."""

    records: Mapping[tuple[str, int], RecordedTrace]
    tokenizer: Any = None
    _tops: dict = field(default_factory=dict, repr=False)
    _cuts: dict = field(default_factory=dict, repr=False)

    @property
    def identity(self) -> dict[str, Any]:
        return {"engine": "replay", "traces": len(self.records)}

    def generate(self, jobs: Sequence[GenJob]) -> list[GenResult]:
        return [self._one(job) for job in jobs]

    def _text(self, key: Any, rec: RecordedTrace, upto: int) -> str:
        if upto >= rec.n_tokens:
            return rec.text
        cut = self._cuts.get((key, upto))
        if cut is None:
            if self.tokenizer is not None:
                cut = self.tokenizer.decode(self.tokenizer.encode(rec.text)[:upto])
            else:
                cut = rec.text[: len(rec.text) * upto // max(rec.n_tokens, 1)]
            self._cuts[(key, upto)] = cut
        return cut

    def _one(self, job: GenJob) -> GenResult:
        resume = job.resume
        if isinstance(resume, ReplayContinuation):
            key, pos = resume.key, resume.position
        else:
            key, pos = (job.prompt, job.seed), 0
        rec = self.records.get(key)
        if rec is None:
            raise KeyError(f"replay engine: no recorded trace for prompt {key[0][:60]!r}, seed {key[1]}")
        n = min(job.max_tokens, rec.n_tokens - pos)
        reason = None
        lps = rec.logprobs
        if job.on_token is not None and lps is not None:
            tops = self._tops.get(key)
            if tops is None:
                tops = self._tops[key] = [tuple(row) for row in lps]
            callback = job.on_token
            for i in range(pos, pos + n):
                if not callback(TokenEvent(i - pos, "", tops[i][0] if tops[i] else float("nan"), tops[i])):
                    n, reason = i - pos + 1, "cancelled"
                    break
        end = pos + n
        if reason is None:
            at_end = end >= rec.n_tokens and (n < job.max_tokens or pos == rec.n_tokens)
            reason = ("length" if rec.finish_reason == "length" else "stop") if at_end else "length"
        head = self._text(key, rec, pos) if pos else ""
        whole = self._text(key, rec, end)
        text = whole[len(head):] if pos else whole
        return GenResult(text, n, reason, list(lps[pos:end]) if lps is not None else None, 0.0,
                         ReplayContinuation((), None, key, end))


class MatrixSimilarity:
    """A judge as a precomputed score matrix over a problem's traces (the judge stage's out-of-fold scores):
    looks up the rows and columns of the traces it is given, by seed."""

    def __init__(self, matrix: np.ndarray, seeds: Iterable[int] | None = None) -> None:
        self.matrix = np.asarray(matrix, dtype=float)
        self.index = None if seeds is None else {int(s): i for i, s in enumerate(seeds)}

    def __call__(self, seeds: Sequence[int], texts: Sequence[str]) -> np.ndarray:
        rows = list(seeds) if self.index is None else [self.index[int(s)] for s in seeds]
        return self.matrix[np.ix_(rows, rows)]
