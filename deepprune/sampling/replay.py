"""Replay backend: recorded traces, with answers, grading and token counts recomputed by our own functions."""

from __future__ import annotations

from collections.abc import Iterator

from deepprune.answers import extract_answer, is_correct
from deepprune.data.importers import RawTrace, import_corpus
from deepprune.data.schema import Trace
from deepprune.progress import track
from deepprune.sampling.base import SampleRequest
from deepprune.tokens import get_tokenizer


class ReplaySampler:
    """Re-reads a recorded corpus; `limit` keeps its first problems (in file order)."""

    name = "replay"

    def sample(self, request: SampleRequest) -> Iterator[list[Trace]]:
        """Yield each problem's traces, recomputed."""
        with track("replaying", request.limit, "problems") as progress:  # total unknown without a limit
            for traces in self._problems(request):
                progress.advance(1, traces=len(traces))
                yield traces
            progress.total = progress.done  # the corpus may hold fewer problems than the limit

    def _problems(self, request: SampleRequest) -> Iterator[list[Trace]]:
        spec = request.corpus.answer.spec()
        tokenizer = get_tokenizer(request.corpus.tokenizer)
        stats = request.stats
        for key in ("problems", "traces", "skipped", "no_answer", "source_answer_checked", "source_answer_agrees"):
            stats.setdefault(key, 0)
        limit = request.limit
        current: list[RawTrace] = []
        emitted = 0

        def finish(group: list[RawTrace]) -> list[Trace]:
            out = []
            for raw in group:
                answer = extract_answer(raw.text, spec)
                stats["traces"] += 1
                stats["no_answer"] += answer is None
                if raw.source_answer is not None:
                    stats["source_answer_checked"] += 1
                    stats["source_answer_agrees"] += bool(is_correct(answer, raw.source_answer, spec)) or (
                        answer is None and raw.source_answer.strip().lower() in {"", "no answer!", "none", "[invalid]"})
                n_tokens = raw.n_tokens if raw.n_tokens is not None else len(tokenizer.encode(raw.text))
                out.append(Trace(
                    problem_id=raw.problem_id, dataset=request.dataset, model=raw.model, trace_id=raw.trace_id,
                    text=raw.text, n_tokens=n_tokens,
                    tokenizer="engine" if raw.n_tokens is not None else tokenizer.name,
                    answer=answer, gold=raw.gold, correct=is_correct(answer, raw.gold, spec),
                    finish_reason=raw.finish_reason, logprobs=raw.logprobs, source_answer=raw.source_answer))
            stats["problems"] += 1
            return out

        skipped: list[str] | None = [] if request.settings.skip_invalid else None
        for raw in import_corpus(request.corpus, skipped):
            stats["skipped"] = len(skipped or ())
            # the importer refuses a problem read twice: a new id starts a new problem
            if current and raw.problem_id != current[0].problem_id:
                yield finish(current)
                emitted += 1
                current = []
                if limit is not None and emitted >= limit:
                    return
            current.append(raw)
        stats["skipped"] = len(skipped or ())
        if current and (limit is None or emitted < limit):
            yield finish(current)
