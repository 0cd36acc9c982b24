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

import gzip
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from deepprune.io import write_jsonl

FINISH_REASONS = ("stop", "length", "pruned", "confidence_stop", "unknown")


class TraceFormatError(ValueError):
    """A trace record that does not follow the schema; the message names file, line and field (a problem of the
    whole file, such as having no records, names only the file)."""

    def __init__(self, path: str | os.PathLike, line: int | None, field: str | None, problem: str):
        self.path, self.line, self.field = str(path), line, field
        where = f"{path}:{line}: field {field!r}" if line is not None else str(path)
        super().__init__(f"{where}: {problem}")


def iter_records(path: str | os.PathLike,
                 fmt: Literal["jsonl", "json", "parquet"] = "jsonl") -> Iterator[tuple[int, Any]]:
    """(line, decoded record) of a JSONL file, (1-based position, record) of a JSON list or a Parquet file; JSON and
    JSONL gzipped if *.gz.

    Every reader of trace, corpus and problem files goes through here, so all refuse bad input alike: a JSONL line
    that is not UTF-8 or not JSON is yielded as a TraceFormatError naming its line (the caller raises or skips it);
    a JSON file that is not UTF-8, not JSON or not a list raises at once; so does a file without records, which
    would otherwise become an empty output that a later stage trips over. Parquet goes through Hugging Face
    `datasets` (read_parquet_records).
    """
    path = Path(path)
    if fmt == "parquet":
        yield from read_parquet_records(path)
        return
    with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as handle:
        if fmt == "json":
            yield from _json_records(path, handle.read())
            return
        offset, found = 0, False
        for line_no, raw in enumerate(handle, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                found = True
                yield line_no, _not_utf8(path, line_no, offset + exc.start, raw[exc.start])
            else:
                if text.strip():
                    found = True
                    try:
                        yield line_no, json.loads(text)
                    except json.JSONDecodeError as exc:
                        yield line_no, _not_json(path, line_no, exc)
            offset += len(raw)
    if not found:
        raise TraceFormatError(path, None, None, "no records: the file is empty")


def datasets_cache() -> Path:
    """Where `datasets` keeps the Arrow copies of the files it reads: inside the project (git-ignored `.cache/`), not
    in the user's home directory. A file read again unchanged is served from there (memory-mapped) at once."""
    return Path(".cache", "datasets").resolve()


def read_parquet_records(path: Path) -> Iterator[tuple[int, Any]]:
    """(1-based position, record as nested dicts and lists) of a Parquet file, read through Hugging Face `datasets`
    (`load_dataset("parquet")`, cached as Arrow under datasets_cache()). A file that is not Parquet, or has no rows,
    is an error naming it."""
    if not path.is_file():
        raise FileNotFoundError(f"corpus file {path} does not exist")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    from datasets import load_dataset

    try:
        table = load_dataset("parquet", data_files=str(path.resolve()), split="train", cache_dir=str(datasets_cache()))
    except Exception as exc:  # datasets wraps pyarrow's errors in its own; the message names the fault
        raise TraceFormatError(path, None, None, f"not a readable Parquet file ({type(exc).__name__}: "
                                                 f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    if len(table) == 0:
        raise TraceFormatError(path, None, None, "no records: the file has no rows")
    yield from enumerate(table, start=1)


def _json_records(path: Path, data: bytes) -> Iterator[tuple[int, Any]]:
    """The records of a whole JSON file: a list is decoded at once, so any fault in it is an error at once."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _not_utf8(path, data.count(b"\n", 0, exc.start) + 1, exc.start, data[exc.start]) from None
    if not text.strip():
        raise TraceFormatError(path, None, None, "no records: the file is empty")
    try:
        records = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _not_json(path, exc.lineno, exc) from None
    if not isinstance(records, list):
        raise TraceFormatError(path, 1, "<json>", "expected a JSON list of records")
    if not records:
        raise TraceFormatError(path, None, None, "no records: the list is empty")
    # JSON lists have no useful line numbers: report the record's 1-based position instead
    yield from enumerate(records, start=1)


def _not_json(path: Path, line: int, exc: json.JSONDecodeError) -> TraceFormatError:
    return TraceFormatError(path, line, "<json>", f"not valid JSON ({exc.msg} at column {exc.colno})")


def _not_utf8(path: Path, line: int, offset: int, byte: int) -> TraceFormatError:
    """Names the line and the file offset of the bad byte, where Python's error gives only an offset in a buffer."""
    return TraceFormatError(path, line, "<encoding>", f"not UTF-8: byte 0x{byte:02x} at byte offset {offset}")


def no_valid_records(path: str | os.PathLike, skipped: list[str]) -> TraceFormatError:
    """The error for a file whose every record was skipped as invalid: an empty output would hide it."""
    return TraceFormatError(path, None, None,
                            f"no valid records: all {len(skipped)} were skipped (the first: {skipped[0]})")


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
    """Yield validated traces from a JSONL file; bad lines raise, or are skipped and counted when allowed. A file
    without a valid trace raises too, naming itself, rather than reaching a stage as zero problems."""
    report = report if report is not None else ReadReport()
    first_line: dict[tuple[str, str], int] = {}
    for line_no, record in iter_records(path):
        try:
            if isinstance(record, TraceFormatError):
                raise record
            trace = validate_trace_record(record, path, line_no)
            key = (trace.problem_id, trace.trace_id)
            first = first_line.setdefault(key, line_no)
            if first != line_no:
                raise TraceFormatError(path, line_no, "trace_id", f"duplicate trace {key} (first at line {first})")
        except TraceFormatError as err:
            if not skip_invalid:
                raise
            report.skipped += 1
            report.errors.append(str(err))
            continue
        report.read += 1
        yield trace
    if not report.read:
        raise no_valid_records(path, report.errors)


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
