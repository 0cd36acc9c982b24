"""The trace schema (one JSON object per line) and its validating reader and writer.

Fields (docs/trace_schema.md has the long form):
  problem_id    str    question id, unique within a dataset
  dataset       str    corpus or problem-set name
  model         str    the model that generated the trace
  trace_id      str    unique within the problem
  text          str    the full reasoning trace (the completion, without the prompt)
  n_tokens      int    length of text in tokens of `tokenizer`
  tokenizer     str    the tokenizer that counted n_tokens
  answer        str|null   final answer extracted by deepprune.answers (null: none)
  gold          str|null   reference answer, when known
  correct       bool|null  answer graded against gold (null: no gold)
  finish_reason str    stop | length | pruned | confidence_stop | unknown
  logprobs      list[list[float]]|null  per generated token, the top-k log-probabilities (DeepConf needs them)
  source_answer str|null   the answer the corpus itself recorded, kept for auditing our extractor
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from deepprune.io import write_jsonl

FINISH_REASONS = ("stop", "length", "pruned", "confidence_stop", "unknown")


class TraceFormatError(ValueError):
    """A trace record that does not follow the schema; the message names file, line and field."""

    def __init__(self, path: str | os.PathLike, line: int, field: str, problem: str):
        self.path, self.line, self.field = str(path), line, field
        super().__init__(f"{path}:{line}: field {field!r}: {problem}")


@dataclass(frozen=True)
class Trace:
    """One reasoning trace, as every stage after `sample` sees it."""

    problem_id: str
    dataset: str
    model: str
    trace_id: str
    text: str
    n_tokens: int
    tokenizer: str
    answer: str | None
    gold: str | None
    correct: bool | None
    finish_reason: str = "stop"
    logprobs: list[list[float]] | None = None
    source_answer: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain dict in schema field order."""
        return asdict(self)


# field -> (accepted types, required)
_SCHEMA: dict[str, tuple[tuple[type, ...], bool]] = {
    "problem_id": ((str,), True),
    "dataset": ((str,), True),
    "model": ((str,), True),
    "trace_id": ((str,), True),
    "text": ((str,), True),
    "n_tokens": ((int,), True),
    "tokenizer": ((str,), True),
    "answer": ((str, type(None)), True),
    "gold": ((str, type(None)), False),
    "correct": ((bool, type(None)), False),
    "finish_reason": ((str,), False),
    "logprobs": ((list, type(None)), False),
    "source_answer": ((str, type(None)), False),
}
assert set(_SCHEMA) == {f.name for f in fields(Trace)}


def validate_trace_record(record: Any, path: str | os.PathLike, line: int) -> Trace:
    """Check one decoded record against the schema and build a Trace, or raise TraceFormatError."""
    if not isinstance(record, dict):
        raise TraceFormatError(path, line, "<record>", f"expected a JSON object, got {type(record).__name__}")
    unknown = sorted(set(record) - set(_SCHEMA))
    if unknown:
        raise TraceFormatError(path, line, unknown[0], "unknown field (the schema is in deepprune/data/schema.py)")
    for name, (types, required) in _SCHEMA.items():
        if name not in record:
            if required:
                raise TraceFormatError(path, line, name, "missing")
            continue
        value = record[name]
        # bool is an int subclass: never accept it as a token count
        if not isinstance(value, types) or (name == "n_tokens" and isinstance(value, bool)):
            want = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            raise TraceFormatError(path, line, name, f"expected {want}, got {type(value).__name__} {value!r:.40}")
    if record["n_tokens"] < 0:
        raise TraceFormatError(path, line, "n_tokens", f"must be >= 0, got {record['n_tokens']}")
    if not record["problem_id"] or not record["trace_id"]:
        raise TraceFormatError(path, line, "problem_id" if not record["problem_id"] else "trace_id", "empty")
    reason = record.get("finish_reason", "stop")
    if reason not in FINISH_REASONS:
        raise TraceFormatError(path, line, "finish_reason", f"{reason!r} not one of {', '.join(FINISH_REASONS)}")
    logprobs = record.get("logprobs")
    if logprobs is not None:
        for pos, row in enumerate(logprobs):
            if not isinstance(row, list) or not all(isinstance(x, (int, float)) and x <= 0 for x in row):
                raise TraceFormatError(path, line, f"logprobs[{pos}]", "expected a list of log-probabilities <= 0")
    return Trace(**record)


@dataclass
class ReadReport:
    """What a lenient read skipped, so nothing is dropped silently."""

    read: int = 0
    skipped: int = 0
    errors: list[str] = field(default_factory=list)


def iter_traces(path: str | os.PathLike, skip_invalid: bool = False,
                report: ReadReport | None = None) -> Iterator[Trace]:
    """Yield validated traces from a JSONL file; bad lines raise, or are skipped and counted when allowed."""
    report = report if report is not None else ReadReport()
    seen: set[tuple[str, str]] = set()
    with open(path, encoding="utf-8") as handle:
        for line_no, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                try:
                    record = json.loads(raw)
                except json.JSONDecodeError as exc:
                    raise TraceFormatError(path, line_no, "<json>", f"not valid JSON ({exc.msg} at column {exc.colno})") from None
                trace = validate_trace_record(record, path, line_no)
                key = (trace.problem_id, trace.trace_id)
                if key in seen:
                    raise TraceFormatError(path, line_no, "trace_id", f"duplicate trace {key}")
                seen.add(key)
            except TraceFormatError as err:
                if not skip_invalid:
                    raise
                report.skipped += 1
                report.errors.append(str(err))
                continue
            report.read += 1
            yield trace


def read_traces(path: str | os.PathLike, skip_invalid: bool = False) -> tuple[list[Trace], ReadReport]:
    """All traces of a file, with a report of what was skipped."""
    report = ReadReport()
    traces = list(iter_traces(Path(path), skip_invalid=skip_invalid, report=report))
    return traces, report


def write_traces(path: str | os.PathLike, traces: Iterable[Trace]) -> int:
    """Write traces as JSONL, atomically."""
    return write_jsonl(path, (t.to_dict() for t in traces))


def group_by_problem(traces: Iterable[Trace]) -> dict[str, list[Trace]]:
    """Traces per problem id, in file order."""
    groups: dict[str, list[Trace]] = {}
    for trace in traces:
        groups.setdefault(trace.problem_id, []).append(trace)
    return groups
