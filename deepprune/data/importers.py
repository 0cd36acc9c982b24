"""Importers: turn a third-party trace file into raw trace records (before answers and tokens are computed).

`qwen25_math_eval` reads the Qwen2.5-Math evaluation output (one problem per line, traces in `code`);
`generic` reads any JSON/JSONL file through a field mapping from params, so a user can bring the DeepPrune
release, their own vLLM dumps, or the shipped date-understanding corpus.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deepprune.config import CorpusConfig, FieldMap
from deepprune.data.schema import FINISH_REASONS, TraceFormatError, iter_records, no_valid_records


@dataclass(frozen=True)
class RawTrace:
    """A trace as a source file gives it; `sample` adds the extracted answer, grading and token count."""

    problem_id: str
    trace_id: str
    text: str
    model: str
    gold: str | None = None
    source_answer: str | None = None
    n_tokens: int | None = None
    finish_reason: str = "unknown"
    logprobs: list[list[float]] | None = None


def _get(record: Any, dotted: str, path: Path, line: int, required: bool = True) -> Any:
    value = record
    for part in dotted.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            if required:
                raise TraceFormatError(path, line, dotted, "missing in source record")
            return None
    return value


def _as_str(value: Any, path: Path, line: int, field: str, allow_none: bool = True) -> str | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise TraceFormatError(path, line, field, f"expected a string or number, got {type(value).__name__}")
    return str(value)


def _as_list(value: Any, path: Path, line: int, field: str, length: int | None = None) -> list[Any]:
    if not isinstance(value, list):
        raise TraceFormatError(path, line, field, f"expected a list, got {type(value).__name__}")
    if length is not None and len(value) != length:
        raise TraceFormatError(path, line, field, f"has {len(value)} items, the texts have {length}")
    return value


def _finish(value: Any, path: Path, line: int, field: str) -> str:
    if value is None:
        return "unknown"
    value = str(value)
    if value not in FINISH_REASONS:
        raise TraceFormatError(path, line, field, f"{value!r} is not one of {', '.join(FINISH_REASONS)}")
    return value


def import_generic(path: str | os.PathLike, fmt: str, fields: FieldMap, model: str,
                   skipped: list[str] | None = None) -> Iterator[RawTrace]:
    """Raw traces from any JSON, JSONL or Parquet file, read through a field mapping.

    A bad record (a problem read twice included) raises TraceFormatError naming file, line and field; when
    `skipped` is a list, the record is skipped instead and its error appended there (so the caller can count it).
    A file without records, or with every record skipped, raises: it would import as an empty corpus.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"corpus file {path} does not exist")
    unit = "line" if fmt == "jsonl" else "record"
    running: dict[str, int] = {}
    problem_at: dict[str, int] = {}
    trace_at: dict[tuple[str, str], int] = {}
    imported = False
    for line, record in iter_records(path, fmt):
        try:
            if isinstance(record, TraceFormatError):
                raise record
            batch = list(_record_traces(record, path, line, fields, model, running))
            _refuse_repeats(batch, path, line, unit, fields, problem_at, trace_at)
        except TraceFormatError as err:
            if skipped is None:
                raise
            skipped.append(str(err))
            continue
        imported = True
        yield from batch
    if not imported:
        assert skipped  # without skipping, the first bad record raised
        raise no_valid_records(path, skipped)


def _refuse_repeats(batch: list[RawTrace], path: Path, line: int, unit: str, fields: FieldMap,
                    problem_at: dict[str, int], trace_at: dict[tuple[str, str], int]) -> None:
    """Refuse a problem or trace the file already gave, naming both places: imported, it would be a trace file
    with duplicate ids that a later stage refuses, naming only that generated file. With one trace per record,
    a problem's records must be consecutive; `problem_at` and `trace_at` remember where each was first read."""
    for trace in batch:
        pid = trace.problem_id
        first = problem_at.setdefault(pid, line)
        # the newest problem in problem_at is the one whose records are being read
        if first != line and (fields.texts is not None or pid != next(reversed(problem_at))):
            raise TraceFormatError(path, line, fields.problem_id, f"problem {pid!r} already read at {unit} {first}")
        if fields.trace_id is not None:
            first = trace_at.setdefault((pid, trace.trace_id), line)
            if first != line:
                raise TraceFormatError(path, line, fields.trace_id,
                                       f"trace {trace.trace_id!r} of problem {pid!r} already read at {unit} {first}")


def _record_traces(record: Any, path: Path, line: int, fields: FieldMap, model: str,
                   running: dict[str, int]) -> Iterator[RawTrace]:
    """The traces of one source record."""
    if not isinstance(record, dict):
        raise TraceFormatError(path, line, "<record>", f"expected an object, got {type(record).__name__}")
    pid = _as_str(_get(record, fields.problem_id, path, line), path, line, fields.problem_id, allow_none=False)
    gold = _as_str(_get(record, fields.gold, path, line), path, line, fields.gold) if fields.gold else None
    rec_model = _as_str(_get(record, fields.model, path, line), path, line, fields.model) if fields.model else model
    if fields.texts is not None:
        texts = _as_list(_get(record, fields.texts, path, line), path, line, fields.texts)
        if not texts:
            raise TraceFormatError(path, line, fields.texts, "an empty list: a problem needs traces")
        answers = (_as_list(_get(record, fields.source_answers, path, line), path, line,
                            fields.source_answers, len(texts)) if fields.source_answers else [None] * len(texts))
        counts = (_as_list(_get(record, fields.n_tokens, path, line), path, line, fields.n_tokens, len(texts))
                  if fields.n_tokens else [None] * len(texts))
        for idx, (text, answer, count) in enumerate(zip(texts, answers, counts, strict=True)):
            if not isinstance(text, str):
                raise TraceFormatError(path, line, f"{fields.texts}[{idx}]", f"expected a string, got {type(text).__name__}")
            if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 0):
                raise TraceFormatError(path, line, f"{fields.n_tokens}[{idx}]", f"expected a count, got {count!r}")
            yield RawTrace(problem_id=pid, trace_id=str(idx), text=text, model=rec_model or model, gold=gold,
                           source_answer=_as_str(answer, path, line, f"{fields.source_answers}[{idx}]"),
                           n_tokens=count)
    else:
        text = _get(record, fields.text, path, line)
        if not isinstance(text, str):
            raise TraceFormatError(path, line, fields.text, f"expected a string, got {type(text).__name__}")
        if fields.trace_id:
            tid = _as_str(_get(record, fields.trace_id, path, line), path, line, fields.trace_id, allow_none=False)
        else:
            tid = str(running.get(pid, 0))
            running[pid] = running.get(pid, 0) + 1
        count = _get(record, fields.n_tokens, path, line) if fields.n_tokens else None
        if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 0):
            raise TraceFormatError(path, line, fields.n_tokens, f"expected a count, got {count!r}")
        logprobs = _get(record, fields.logprobs, path, line, required=False) if fields.logprobs else None
        if logprobs is not None:
            _as_list(logprobs, path, line, fields.logprobs)
        yield RawTrace(
            problem_id=pid, trace_id=tid, text=text, model=rec_model or model, gold=gold,
            source_answer=(_as_str(_get(record, fields.source_answer, path, line), path, line, fields.source_answer)
                           if fields.source_answer else None),
            n_tokens=count,
            finish_reason=_finish(_get(record, fields.finish_reason, path, line, required=False), path, line,
                                  fields.finish_reason) if fields.finish_reason else "unknown",
            logprobs=logprobs)


# The Qwen2.5-Math evaluation toolkit writes one problem per line: traces in `code`, answers in `pred`.
QWEN25_MATH_EVAL_FIELDS = FieldMap(problem_id="idx", texts="code", gold="gt", source_answers="pred")


def import_corpus(cfg: CorpusConfig, skipped: list[str] | None = None) -> Iterator[RawTrace]:
    """Raw traces of a configured corpus, through its importer (bad records go to `skipped` when given)."""
    if cfg.importer == "qwen25_math_eval":
        yield from import_generic(cfg.path, "jsonl", QWEN25_MATH_EVAL_FIELDS, cfg.model, skipped)
    elif cfg.importer == "generic":
        assert cfg.fields is not None  # checked by the config
        yield from import_generic(cfg.path, cfg.format, cfg.fields, cfg.model, skipped)
    else:  # pragma: no cover - the config's Literal rejects it first
        raise ValueError(f"unknown importer {cfg.importer!r}")
