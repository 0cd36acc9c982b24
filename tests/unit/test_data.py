"""Trace schema, validating reader, importers, replay sampler; bad input names file, line and field."""

import hashlib
import json
import re
from pathlib import Path

import pytest

from deepprune.config import CorpusConfig, FieldMap, SampleConfig, load_params
from deepprune.data.importers import import_corpus
from deepprune.data.schema import Trace, TraceFormatError, read_traces, write_traces
from deepprune.sampling import SampleRequest, get_sampler

ROOT = Path(__file__).resolve().parents[2]


def _trace(tid="0", **kw):
    base = dict(problem_id="p1", dataset="d", model="m", trace_id=tid, text="x \\boxed{1}", n_tokens=4,
                tokenizer="qwen", answer="1", gold="1", correct=True)
    base.update(kw)
    return Trace(**base)


def test_round_trip(tmp_path):
    path = tmp_path / "t.jsonl"
    traces = [_trace("0"), _trace("1", answer=None, correct=False, logprobs=[[-0.1, -2.0]], finish_reason="length")]
    assert write_traces(path, traces) == 2
    back, report = read_traces(path)
    assert back == traces and report.skipped == 0


@pytest.mark.parametrize("mutate, field", [
    (lambda r: r.pop("text"), "text"),
    (lambda r: r.update(n_tokens="12"), "n_tokens"),
    (lambda r: r.update(n_tokens=True), "n_tokens"),
    (lambda r: r.update(n_tokens=-1), "n_tokens"),
    (lambda r: r.update(finish_reason="exploded"), "finish_reason"),
    (lambda r: r.update(colour="red"), "colour"),
    (lambda r: r.update(logprobs=[[0.5]]), "logprobs[0]"),
])
def test_bad_record_names_file_line_and_field(tmp_path, mutate, field):
    path = tmp_path / "t.jsonl"
    write_traces(path, [_trace("0"), _trace("1"), _trace("2")])
    lines = path.read_text().splitlines()
    record = json.loads(lines[1])
    mutate(record)
    lines[1] = json.dumps(record)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(TraceFormatError) as err:
        read_traces(path)
    assert err.value.line == 2 and err.value.field == field
    assert f"{path}:2: field {field!r}" in str(err.value)


def test_corrupt_json_line_and_lenient_skip_counts_it(tmp_path):
    path = tmp_path / "t.jsonl"
    write_traces(path, [_trace("0"), _trace("1")])
    with open(path, "a") as handle:
        handle.write('{"problem_id": "p1", "trace_id": \n')
    with pytest.raises(TraceFormatError, match=re.escape(f"{path}:3: field '<json>'")):
        read_traces(path)
    traces, report = read_traces(path, skip_invalid=True)
    assert len(traces) == 2 and report.skipped == 1 and "t.jsonl:3" in report.errors[0]


def test_duplicate_trace_is_an_error(tmp_path):
    path = tmp_path / "t.jsonl"
    write_traces(path, [_trace("0"), _trace("0")])
    with pytest.raises(TraceFormatError, match="duplicate"):
        read_traces(path)


def test_generic_importer_one_trace_per_record(tmp_path):
    src = tmp_path / "dump.jsonl"
    rows = [{"q": {"id": 7}, "completion": "so \\boxed{3}", "ref": "3", "why": "stop", "toks": 5},
            {"q": {"id": 7}, "completion": "so \\boxed{4}", "ref": "3", "why": "length", "toks": 9}]
    src.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    cfg = CorpusConfig(importer="generic", path=str(src), model="mine",
                       fields=FieldMap(problem_id="q.id", text="completion", gold="ref", finish_reason="why",
                                       n_tokens="toks"))
    traces = list(import_corpus(cfg))
    assert [(t.problem_id, t.trace_id, t.finish_reason, t.n_tokens) for t in traces] == [
        ("7", "0", "stop", 5), ("7", "1", "length", 9)]


def test_generic_importer_bad_record_names_line_and_field_or_is_skipped(tmp_path):
    src = tmp_path / "dump.jsonl"
    src.write_text(json.dumps({"pid": 1, "outs": ["a", "b"]}) + "\n" + json.dumps({"pid": 2, "outs": ["a", 3]}) + "\n")
    cfg = CorpusConfig(importer="generic", path=str(src), model="m", fields=FieldMap(problem_id="pid", texts="outs"))
    with pytest.raises(TraceFormatError, match=re.escape(f"{src}:2: field 'outs[1]'")):
        list(import_corpus(cfg))
    skipped: list[str] = []
    assert len(list(import_corpus(cfg, skipped))) == 2 and len(skipped) == 1


def test_replay_recomputes_answers_and_counts_skips(tmp_path):
    src = tmp_path / "dump.jsonl"
    lines = [json.dumps({"pid": 1, "outs": ["x \\boxed{\\dfrac{1}{2}}", "y \\boxed{0.5}"], "gold": "1/2"}),
             "{broken", json.dumps({"pid": 2, "outs": ["no answer"], "gold": "3"})]
    src.write_text("\n".join(lines) + "\n")
    cfg = CorpusConfig(importer="generic", path=str(src), model="m",
                       fields=FieldMap(problem_id="pid", texts="outs", gold="gold"))
    with pytest.raises(TraceFormatError, match=":2: field '<json>'"):
        list(get_sampler("replay").sample(SampleRequest("d", cfg, SampleConfig(), 0)))
    request = SampleRequest("d", cfg, SampleConfig(skip_invalid=True), 0)
    groups = list(get_sampler("replay").sample(request))
    assert [[t.answer for t in g] for g in groups] == [[r"\frac{1}{2}", "0.5"], [None]]
    assert [t.correct for t in groups[0]] == [True, True]
    assert groups[0][0].n_tokens > 0 and groups[0][0].tokenizer == "qwen"
    assert request.stats["skipped"] == 1 and request.stats["no_answer"] == 1


def test_replay_limit_keeps_first_problems():
    params = load_params(ROOT / "params.yaml")
    request = SampleRequest("math", params.corpus("math"), SampleConfig(limit=3), 0)
    groups = list(get_sampler("replay").sample(request))
    assert len(groups) == 3 and all(len(g) == 8 for g in groups)


def test_unknown_backend_lists_known():
    with pytest.raises(KeyError, match="replay"):
        get_sampler("vllm-magic")


def test_shipped_data_matches_sources():
    sources = (ROOT / "data/raw/SOURCES.md").read_text()
    for rel, digest in re.findall(r"^\| (\S+) \|.*\| ([0-9a-f]{64}) \|$", sources, flags=re.M):
        assert hashlib.sha256((ROOT / "data/raw" / rel).read_bytes()).hexdigest() == digest, rel
    assert len(re.findall(r"[0-9a-f]{64}", sources)) == 7
