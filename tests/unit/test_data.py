"""Trace schema, validating reader, importers, replay sampler; bad input names file, line and field."""

import hashlib
import json
import re
from pathlib import Path

import pytest

from deepprune.answers import AnswerSpec
from deepprune.config import CorpusConfig, FieldMap, SampleConfig, load_params
from deepprune.data.importers import import_corpus
from deepprune.data.schema import Trace, TraceFormatError, read_traces, write_traces
from deepprune.sampling import SampleRequest, get_sampler
from tasks.label import label_pairs, load_traces, save_rows
from tasks.sample import sample_traces, save_traces

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
    # a corpus's own limit wins over sample.limit (params.yaml keeps 100 of date's 246 questions)
    own = SampleRequest("math", params.corpus("math").model_copy(update={"limit": 2}), SampleConfig(limit=3), 0)
    assert len(list(get_sampler("replay").sample(own))) == 2
    assert params.corpus("date").limit == 100


def test_unknown_backend_lists_known():
    with pytest.raises(KeyError, match="replay"):
        get_sampler("vllm-magic")


def _qwen(pid: int, text: str = "so \\boxed{1}") -> str:
    """A line of the Qwen2.5-Math evaluation format: one problem and its one trace."""
    return json.dumps({"idx": pid, "code": [text], "gt": "1", "pred": ["1"]}, ensure_ascii=False)


def _lines(*lines: str, encoding: str = "utf-8") -> bytes:
    return "".join(line + "\n" for line in lines).encode(encoding)


QWEN = {"importer": "qwen25_math_eval"}
DATE = {"importer": "generic", "format": "json", "fields": FieldMap(problem_id="example_idx", texts="outs")}
PER_TRACE = {"importer": "generic", "fields": FieldMap(problem_id="pid", text="out", trace_id="tid")}
# "é" written as Latin-1 (the single byte 0xe9) is not UTF-8
LATIN1_LINE = _lines(_qwen(2, "café"), encoding="latin-1")
LATIN1_JSON = json.dumps([{"example_idx": 1, "outs": ["so 1"]}, {"example_idx": 2, "outs": ["café"]}], indent=1,
                         ensure_ascii=False).encode("latin-1")


# (corpus, file, content, skip_invalid, what the message says after the file's name, and what else it names)
BAD_CORPORA = {
    "empty": (QWEN, "c.jsonl", b"", False, ": no records", []),
    "blank lines only": (QWEN, "c.jsonl", b"\n  \n", False, ": no records", []),
    "empty JSON list": (DATE, "c.json", b"[]", False, ": no records", []),
    "every record skipped": (QWEN, "c.jsonl", _lines("{broken", '{"idx": 2}'), True, ": no valid records",
                             ["all 2", ":1: field '<json>'"]),
    "problem twice, adjacent": (QWEN, "c.jsonl", _lines(_qwen(1), _qwen(1)), False, ":2: field 'idx'",
                                ["problem '1'", "line 1"]),
    "problem twice, apart": (QWEN, "c.jsonl", _lines(_qwen(1), _qwen(2), _qwen(1)), False, ":3: field 'idx'",
                             ["problem '1'", "line 1"]),
    "problem twice in a JSON list": (DATE, "c.json", json.dumps([{"example_idx": i, "outs": ["x"]} for i in (4, 5, 4)])
                                     .encode(), False, ":3: field 'example_idx'", ["problem '4'", "record 1"]),
    "a problem's records apart": (PER_TRACE, "c.jsonl", _lines(*(json.dumps({"pid": p, "tid": t, "out": "x"})
                                                                for p, t in (("a", "0"), ("b", "0"), ("a", "1")))),
                                  False, ":3: field 'pid'", ["problem 'a'", "line 1"]),
    "trace twice": (PER_TRACE, "c.jsonl", _lines(*[json.dumps({"pid": "a", "tid": "0", "out": "x"})] * 2), False,
                    ":2: field 'tid'", ["trace '0' of problem 'a'", "line 1"]),
    "no traces in a record": (DATE, "c.json", b'[{"example_idx": 1, "outs": []}]', False, ":1: field 'outs'", []),
    "not UTF-8, JSONL": (QWEN, "c.jsonl", _lines(_qwen(1)) + LATIN1_LINE, False, ":2: field '<encoding>'",
                         [f"byte 0xe9 at byte offset {len(_lines(_qwen(1))) + LATIN1_LINE.index(0xE9)}"]),
    "not UTF-8, JSON": (DATE, "c.json", LATIN1_JSON, False, ":11: field '<encoding>'",
                        [f"byte offset {LATIN1_JSON.index(0xE9)}"]),
}


def _assert_names(err: TraceFormatError, src: Path, where: str, also: list[str]) -> None:
    """The message starts with the file, then `where` (its line and field), and names everything in `also`."""
    assert f"{src}{where}" in str(err) and all(part in str(err) for part in also), str(err)


def _sample_stage(corpus: CorpusConfig, out: Path, skip_invalid: bool = False) -> None:
    """What the sample flow does with a corpus: read (or generate) every problem's traces, then write them."""
    request = SampleRequest("d", corpus, SampleConfig(backend="replay", skip_invalid=skip_invalid), 0,
                            shard_dir=str(out.parent / "shards"))
    save_traces.fn(str(out), sample_traces.fn(request))


@pytest.mark.parametrize("corpus, name, content, skip, where, also", BAD_CORPORA.values(), ids=BAD_CORPORA)
def test_bad_corpus_is_refused_naming_file_line_and_field_before_any_output(tmp_path, corpus, name, content, skip,
                                                                            where, also):
    src, out = tmp_path / name, tmp_path / "traces.jsonl"
    src.write_bytes(content)
    with pytest.raises(TraceFormatError) as err:
        _sample_stage(CorpusConfig(path=str(src), model="m", **corpus), out, skip)
    _assert_names(err.value, src, where, also)
    assert not out.exists()


def _gsm8k(question: str) -> str:
    return json.dumps({"question": question, "answer": "so #### 3"}, ensure_ascii=False)


# (problem set, content, what the message says after the file's name, and what else it names)
BAD_PROBLEM_SETS = {
    "empty": ("gsm8k", b"", ": no records", []),
    "question twice": ("gsm8k", _lines(_gsm8k("a?"), _gsm8k("b?"), _gsm8k("a?")), ":3: field 'question'",
                       ["line 1"]),
    "id twice": ("math500", _lines(*(json.dumps({"unique_id": "u1", "problem": q, "answer": "1"}) for q in "ab")),
                 ":2: field 'unique_id'", ["problem 'math500-u1'", "line 1"]),
    "not UTF-8": ("gsm8k", _lines(_gsm8k("a?"), _gsm8k("é?"), encoding="latin-1"), ":2: field '<encoding>'",
                  [f"byte offset {len(_lines(_gsm8k('a?'))) + _gsm8k('é?').index('é')}"]),
}


@pytest.mark.parametrize("dataset, content, where, also", BAD_PROBLEM_SETS.values(), ids=BAD_PROBLEM_SETS)
def test_bad_problem_set_is_refused_before_any_generation_or_output(tmp_path, dataset, content, where, also):
    src, out = tmp_path / "problems.jsonl", tmp_path / "traces.jsonl"
    src.write_bytes(content)
    with pytest.raises(TraceFormatError) as err:  # a generation attempt would fail otherwise: backend is replay
        _sample_stage(CorpusConfig(importer="live", dataset=dataset, path=str(src), model="m"), out)
    _assert_names(err.value, src, where, also)
    assert not out.exists() and not (tmp_path / "shards").exists()


# (trace file content, skip_invalid, what the message says after the file's name, and what else it names)
BAD_TRACE_FILES = {
    "empty": (b"", False, ": no records", ["empty"]),
    "not UTF-8": (_lines(json.dumps(_trace("0").to_dict()), json.dumps(_trace("1", text="café").to_dict(),
                                                                        ensure_ascii=False), encoding="latin-1"),
                  False, ":2: field '<encoding>'", ["byte 0xe9"]),
    "every trace skipped": (_lines("{broken"), True, ": no valid records", ["all 1", ":1: field '<json>'"]),
}


@pytest.mark.parametrize("content, skip, where, also", BAD_TRACE_FILES.values(), ids=BAD_TRACE_FILES)
def test_bad_trace_file_is_refused_by_label_naming_it_before_any_output(tmp_path, content, skip, where, also):
    src, out = tmp_path / "traces.jsonl", tmp_path / "pairs.jsonl"
    src.write_bytes(content)
    with pytest.raises(TraceFormatError) as err:  # not "0 problems cannot fill 2 folds", about no file
        problems, _ = load_traces.fn(str(src), skip)
        save_rows.fn(str(out), [p.__dict__ for p in label_pairs.fn(problems, AnswerSpec("boxed_math"), 2, 0)])
    _assert_names(err.value, src, where, also)
    assert not out.exists()


def test_skip_invalid_skips_and_counts_repeated_problems_and_bad_bytes(tmp_path):
    src = tmp_path / "c.jsonl"
    src.write_bytes(_lines(_qwen(1), _qwen(2)) + LATIN1_LINE + _lines(_qwen(3), _qwen(1)))
    cfg = CorpusConfig(importer="qwen25_math_eval", path=str(src), model="m")
    request = SampleRequest("d", cfg, SampleConfig(skip_invalid=True), 0)
    groups = list(get_sampler("replay").sample(request))
    assert [g[0].problem_id for g in groups] == ["1", "2", "3"] and request.stats["skipped"] == 2
    traces = tmp_path / "t.jsonl"
    traces.write_bytes(_lines(*(json.dumps(_trace(t).to_dict()) for t in "010"))
                       + _lines(json.dumps(_trace("2", text="é").to_dict(), ensure_ascii=False), encoding="latin-1"))
    back, report = read_traces(traces, skip_invalid=True)
    assert [t.trace_id for t in back] == ["0", "1"] and report.skipped == 2
    assert "(first at line 1)" in report.errors[0] and "field '<encoding>'" in report.errors[1]


def test_shipped_data_matches_sources():
    sources = (ROOT / "data/raw/SOURCES.md").read_text()
    for rel, digest in re.findall(r"^\| (\S+) \|.*\| ([0-9a-f]{64}) \|$", sources, flags=re.M):
        assert hashlib.sha256((ROOT / "data/raw" / rel).read_bytes()).hexdigest() == digest, rel
    assert len(re.findall(r"[0-9a-f]{64}", sources)) == 7
