"""Live sampling on a tiny random Llama: the transformers engine, the OpenAI protocol against a real HTTP server on
127.0.0.1 (ours, serving the same model), the pruning controller on a live engine, and checkpoint/resume of the
sample stage."""

from __future__ import annotations

import json
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from deepprune.answers import AnswerSpec
from deepprune.config import AnswerConfig, CorpusConfig, SampleConfig
from deepprune.pruning.controller import Grader, Task, run_clustering, run_cons, run_deepconf_online
from deepprune.sampling import SampleRequest
from deepprune.sampling.engines import (EngineUnreachable, GenerationSettings, GenJob, MalformedResponse, OpenAIEngine,
                                        PromptTooLong, TransformersEngine, TransientEngineError)
from deepprune.sampling.live import LiveSampler, trace_seed
from deepprune.sampling.problems import build_messages, load_problems
from deepprune.sampling.server import make_server
from tasks import PERMANENT_ERRORS

SPEC = AnswerSpec(extractor="boxed_math")
pytestmark = pytest.mark.generation


@pytest.fixture(scope="module")
def engine(tiny_lm):
    return TransformersEngine(str(tiny_lm), GenerationSettings(0.8, 0.95, 4), batch_size=3)


@pytest.fixture(scope="module")
def engine64(tiny_lm):
    """The same model in float64: a prefill of prompt + prefix and step-by-step decoding then agree to the last bit,
    which float32 does not promise on a random model's near-flat logits."""
    return TransformersEngine(str(tiny_lm), GenerationSettings(0.8, 0.95, 4), batch_size=3, dtype="float64")


@pytest.fixture(scope="module")
def server(engine64):
    """Our OpenAI-compatible server on 127.0.0.1, serving the float64 engine: it batches concurrent streams its own
    way, and only float64 keeps a random model's near-flat logits equal across batch shapes."""
    srv = make_server(engine64, port=0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1", srv
    srv.shutdown()
    srv.server_close()


def _stats(url: str) -> dict:
    return json.load(urllib.request.urlopen(url.replace("/v1", "/stats")))


def test_problem_sets_load_with_gold_answers_and_prompts():
    for name, kind in (("aime24", "math"), ("aime25", "math"), ("math500", "math"), ("gsm8k", "math"), ("gpqa", "choice")):
        items = load_problems(name, limit=3)
        assert len(items) == 3 and all(i.gold and i.kind == kind for i in items), name
    gsm = load_problems("gsm8k", limit=1)[0]
    assert gsm.gold == "18" and "Janet" in gsm.question
    assert "boxed" not in load_problems("aime25", limit=1)[0].question  # its own instruction is stripped
    messages = build_messages(gsm, SampleConfig().prompts)
    assert messages[-1]["content"].startswith(gsm.question) and "\\boxed{}" in messages[-1]["content"]


@pytest.mark.slow  # generates with a model
def test_transformers_engine_is_seeded_per_trace_and_respects_budgets(engine, engine64):
    prompt = engine.render([{"role": "user", "content": "What is 2 + 2?"}])
    batch = engine.generate([GenJob(prompt, 10, seed) for seed in (1, 2, 3, 4)])
    # a trace does not depend on its batch-mates: its seed decides it. Checked in float64, since float32 logits of
    # a random model move in the last bits with the batch shape, and a near-tie then picks another token.
    batch64 = engine64.generate([GenJob(prompt, 10, seed) for seed in (1, 2, 3, 4)])
    assert engine64.generate([GenJob(prompt, 10, 3)])[0].text == batch64[2].text
    assert batch[0].text != batch[1].text
    for res in batch:
        assert res.n_tokens <= 10 and res.finish_reason in ("stop", "length") and len(res.logprobs) == res.n_tokens
        assert all(len(row) == 4 for row in res.logprobs)
    stopped = engine.generate([GenJob(prompt, 30, 1, on_token=lambda ev: ev.index < 4)])[0]
    assert (stopped.n_tokens, stopped.finish_reason) == (5, "cancelled")
    with pytest.raises(PromptTooLong, match="context length"):
        engine.generate([GenJob(prompt * 400, 10, 1)])


@pytest.mark.slow  # generates with a model
def test_openai_backend_streams_logprobs_cancels_and_resumes_against_a_real_server(engine64, server):
    url, _ = server
    client = OpenAIEngine(url, "tiny", GenerationSettings(0.8, 0.95, 4), max_concurrency=3)
    prompt = engine64.render([{"role": "user", "content": "Count to five."}])
    local = engine64.generate([GenJob(prompt, 12, 7), GenJob(prompt, 12, 8)])  # one batch of two
    remote = client.generate([GenJob(prompt, 12, 7), GenJob(prompt, 12, 8)])  # two concurrent streams
    for a, b in zip(local, remote):
        assert (b.text, b.n_tokens, b.finish_reason) == (a.text, a.n_tokens, a.finish_reason)
        assert len(b.logprobs) == b.n_tokens and np.allclose(b.logprobs, a.logprobs, atol=1e-4)
    before = _stats(url)["tokens_generated"]
    cut = client.generate([GenJob(prompt, 200, 7, on_token=lambda ev: ev.index < 2)])[0]
    assert (cut.n_tokens, cut.finish_reason) == (3, "cancelled")
    import time
    time.sleep(0.5)
    generated = _stats(url)["tokens_generated"] - before
    assert generated < 20  # closing the stream stopped generation on the server, far short of 200
    prefix = local[0].text
    resumed = client.generate([GenJob(prompt + prefix, 6, 99)])[0]
    assert 0 < resumed.n_tokens <= 6 and resumed.finish_reason in ("stop", "length")


class _Fake(BaseHTTPRequestHandler):
    """A misbehaving server: answers 503 for the first `failures` requests, or garbage."""

    mode = "garbage"
    failures = 0

    def log_message(self, *args):
        pass

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        cls = type(self)
        if cls.mode == "flaky" and cls.failures > 0:
            cls.failures -= 1
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        if cls.mode == "garbage":
            self.wfile.write(b"data: {this is not json\n\n")
        else:
            chunk = {"choices": [{"index": 0, "text": "ok", "finish_reason": "stop"}]}
            self.wfile.write(f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n".encode())


@pytest.fixture
def fake():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Fake)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.shutdown()
    srv.server_close()


def test_bad_servers_give_clear_errors_and_transient_ones_are_retried(fake, server, engine):
    _Fake.mode = "garbage"
    with pytest.raises(MalformedResponse, match="not JSON"):
        OpenAIEngine(fake, "m", retries=0).generate([GenJob("hi", 4, 0)])
    _Fake.mode, _Fake.failures = "flaky", 2
    assert OpenAIEngine(fake, "m", retries=2, settings=GenerationSettings(top_logprobs=0)).generate(
        [GenJob("hi", 4, 0)])[0].text == "ok"
    _Fake.mode, _Fake.failures = "flaky", 5
    with pytest.raises(TransientEngineError, match="503"):
        OpenAIEngine(fake, "m", retries=1).generate([GenJob("hi", 4, 0)])
    with pytest.raises(EngineUnreachable, match="cannot reach"):
        OpenAIEngine("http://127.0.0.1:9/v1", "m", retries=0).generate([GenJob("hi", 4, 0)])
    with pytest.raises(PromptTooLong, match="context length"):
        OpenAIEngine(server[0], "m", retries=0).generate([GenJob("word " * 3000, 4, 0)])
    # what the Prefect task's retry condition sees: transient errors are retried, bad input is not
    assert not isinstance(TransientEngineError("x"), PERMANENT_ERRORS)
    assert not isinstance(EngineUnreachable("x"), PERMANENT_ERRORS)
    assert isinstance(PromptTooLong("x"), PERMANENT_ERRORS) and isinstance(MalformedResponse("x"), PERMANENT_ERRORS)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TransformersEngine("/no/such/model")


@pytest.mark.slow  # generates with a model
def test_a_resumed_trace_goes_on_exactly_where_it_stopped(engine64):
    prompt = engine64.render([{"role": "user", "content": "What is 5 + 8?"}])
    whole = engine64.generate([GenJob(prompt, 20, seed) for seed in (7, 8)])
    heads = engine64.generate([GenJob(prompt, 8, seed) for seed in (7, 8)])
    tails = engine64.generate([GenJob(prompt + h.text, 12, 0, resume=h.continuation) for h in heads])
    for w, h, t in zip(whole, heads, tails):
        assert h.n_tokens + t.n_tokens == w.n_tokens and w.continuation.token_ids == t.continuation.token_ids
        assert w.logprobs == h.logprobs + t.logprobs


@pytest.mark.slow  # generates with a model
def test_online_deepprune_spends_fewer_tokens_than_cons_on_the_same_seeds(engine64):
    engine = engine64
    prompt = engine.render([{"role": "user", "content": "What is 3 * 7?"}])
    task = lambda: Task("p", prompt, tuple(trace_seed(1, "p", j) for j in range(6)), Grader(SPEC, "21"), 24)
    cons = run_cons(engine, task())
    all_same = lambda seeds, prefixes: np.ones((len(prefixes), len(prefixes)))
    pruned = run_clustering(engine, task(), 6, all_same, 0.5, q=1)
    reasons = [t.stop_reason for t in pruned.traces]
    # one cluster: the seed and one unfinished member run on; every other trace still open at k = 6 is pruned
    assert reasons.count("pruned") == max(0, sum(t.n_tokens >= 6 for t in cons.traces[1:]) - 1) > 0
    assert pruned.tokens < cons.tokens and len(pruned.clusters) == 1
    assert cons.tokens == sum(t.n_tokens for t in cons.traces)
    # the resumed traces went on from their token ids and generator state: each generated exactly what it did
    # under cons@N, so the saving is exactly the pruned traces' unwritten tails
    for kept, whole in zip(pruned.traces, cons.traces):
        if kept.stop_reason == "pruned":
            assert kept.n_tokens == 6 and whole.text.startswith(kept.text)
        else:
            assert (kept.n_tokens, kept.text, kept.stop_reason) == (whole.n_tokens, whole.text, whole.stop_reason)
    assert cons.tokens - pruned.tokens == sum(w.n_tokens - 6 for k, w in zip(pruned.traces, cons.traces)
                                              if k.stop_reason == "pruned")
    nothing_same = lambda seeds, prefixes: np.zeros((len(prefixes), len(prefixes)))
    unpruned = run_clustering(engine, task(), 6, nothing_same, 0.5)
    assert all(t.stop_reason != "pruned" for t in unpruned.traces)
    assert [t.text for t in unpruned.traces] == [t.text for t in cons.traces] and unpruned.tokens == cons.tokens
    conf = run_deepconf_online(engine, task(), warmup=2, eta=10, window=1)
    assert conf.extra["stopped"] >= 1 and conf.tokens < cons.tokens
    assert {t.stop_reason for t in conf.traces[2:]} & {"confidence_stop"}


class _Counting:
    """An engine wrapper that counts generate calls and can fail on the n-th problem (a kill mid-run)."""

    def __init__(self, inner, fail_on: int | None = None):
        self.inner, self.fail_on, self.calls = inner, fail_on, 0
        self.identity = inner.identity

    def render(self, messages):
        return self.inner.render(messages)

    def generate(self, jobs):
        self.calls += 1
        if self.fail_on is not None and self.calls == self.fail_on:
            raise KeyboardInterrupt("killed")
        return self.inner.generate(jobs)


@pytest.mark.slow  # generates with a model
def test_the_live_sampler_checkpoints_each_problem_and_resumes_without_regenerating(engine, tmp_path):
    corpus = CorpusConfig(importer="live", dataset="gsm8k", limit=3, model="tiny")
    cfg = SampleConfig(backend="transformers", n=2, batch_size=2, generation={"max_tokens": 8})  # a problem a call
    request = lambda: SampleRequest("live", corpus, cfg, seed=5, shard_dir=str(tmp_path))
    dying = _Counting(engine, fail_on=3)
    with pytest.raises(KeyboardInterrupt):
        list(LiveSampler(dying).sample(request()))
    assert dying.calls == 3  # problems 1 and 2 finished and were checkpointed
    again = _Counting(engine)
    req = request()
    problems = list(LiveSampler(again).sample(req))
    assert again.calls == 1 and req.stats["resumed_problems"] == 2
    assert [len(p) for p in problems] == [2, 2, 2] and problems[0][0].trace_id == f"s{trace_seed(5, 'gsm8k-0', 0)}"
    fresh = _Counting(engine)
    assert [[t.text for t in p] for p in LiveSampler(fresh).sample(SampleRequest(
        "live", corpus, cfg, seed=5, shard_dir=str(tmp_path / "other")))] == [[t.text for t in p] for p in problems]
    # reading answers differently does not regenerate: the shards are reused and their answers extracted again
    last_char = corpus.model_copy(update={"answer": AnswerConfig(extractor="regex", pattern=r"(\S)\s*$")})
    reread = _Counting(engine)
    relabelled = list(LiveSampler(reread).sample(SampleRequest("live", last_char, cfg, seed=5, shard_dir=str(tmp_path))))
    assert reread.calls == 0
    assert [t.answer for p in relabelled for t in p] == [t.text.rstrip()[-1:] or None for p in problems for t in p]
    # every problem resumed, so no engine is loaded: the traces' meta still names the engine that generated them
    resumed = SampleRequest("live", corpus, cfg, seed=5, shard_dir=str(tmp_path))
    list(LiveSampler().sample(resumed))
    assert resumed.stats["resumed_problems"] == 3 and resumed.info["engine"] == engine.identity


def test_the_live_sampler_groups_problems_to_fill_a_batch_and_gives_the_same_traces(engine, tmp_path):
    """sample.batch_size 4 with n 2: problems go two to an engine call (3 problems, 2 calls), each problem is still
    checkpointed on its own, and the traces are those of one problem a call (each trace has its own seed)."""
    corpus = CorpusConfig(importer="live", dataset="gsm8k", limit=3, model="tiny")
    traces = {}
    for batch_size, calls in ((2, 3), (4, 2)):
        cfg = SampleConfig(backend="transformers", n=2, batch_size=batch_size, generation={"max_tokens": 8})
        counting = _Counting(engine)
        shard_dir = tmp_path / str(batch_size)
        traces[batch_size] = list(LiveSampler(counting).sample(SampleRequest("live", corpus, cfg, seed=5,
                                                                             shard_dir=str(shard_dir))))
        assert counting.calls == calls
        assert len([p for p in shard_dir.rglob("*.jsonl")]) == 3
    assert [[(t.trace_id, t.text) for t in p] for p in traces[4]] == [[(t.trace_id, t.text) for t in p]
                                                                       for p in traces[2]]


KILL_SCRIPT = """
import sys, time
from deepprune.config import AnswerConfig, CorpusConfig, SampleConfig
from deepprune.pruning.controller import Grader, Task, run_clustering, run_cons, run_deepconf_online
from deepprune.sampling import SampleRequest
from deepprune.sampling.engines import GenerationSettings, TransformersEngine
from deepprune.sampling.live import LiveSampler

engine = TransformersEngine(sys.argv[1], GenerationSettings(0.8, 0.95, 4), batch_size=2)
corpus = CorpusConfig(importer="live", dataset="gsm8k", limit=3, model="tiny")
cfg = SampleConfig(backend="transformers", n=2, batch_size=2, generation={"max_tokens": 8})  # a problem a call
for problem in LiveSampler(engine).sample(SampleRequest("live", corpus, cfg, seed=5, shard_dir=sys.argv[2])):
    print("done", problem[0].problem_id, flush=True)
    time.sleep(60)  # killed here, with one problem checkpointed
"""


@pytest.mark.slow  # generates with a model
def test_a_sigkilled_sampling_run_resumes_from_its_shards(tiny_lm, engine, tmp_path):
    import os
    import signal
    import subprocess
    import sys

    from tests.conftest import ROOT

    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(tiny_lm), str(tmp_path)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert proc.stdout.readline().startswith("done gsm8k-0")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    shards = list(tmp_path.rglob("*.jsonl"))
    assert len(shards) == 1 and not list(tmp_path.rglob("*.tmp*"))  # one whole shard, no half-written file
    counting = _Counting(engine)
    corpus = CorpusConfig(importer="live", dataset="gsm8k", limit=3, model="tiny")
    cfg = SampleConfig(backend="transformers", n=2, batch_size=2, generation={"max_tokens": 8})
    request = SampleRequest("live", corpus, cfg, seed=5, shard_dir=str(tmp_path))
    problems = list(LiveSampler(counting).sample(request))
    assert len(problems) == 3 and counting.calls == 2 and request.stats["resumed_problems"] == 1


@pytest.mark.slow  # generates with a model
def test_the_platform_starts_and_stops_a_server_from_params_and_samples_through_it(tiny_lm, tmp_path):
    """sample.server.start_command: the sample stage's way to bring up an OpenAI-compatible server for a run."""
    import sys

    from deepprune.config import ServerConfig
    from deepprune.sampling.live import _server_up, make_engine, managed_server
    from deepprune.services import free_port

    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"
    server = ServerConfig(url=url, model="tiny", start_command=[sys.executable, "-m", "deepprune.sampling.server",
                                                                 "--model", str(tiny_lm), "--port", str(port)],
                          startup_timeout_s=120)
    cfg = SampleConfig(backend="openai", n=2, generation={"max_tokens": 6}, server=server)
    corpus = CorpusConfig(importer="live", dataset="gsm8k", limit=1, model="tiny")
    with managed_server(server, tmp_path / "server.log"):
        assert _server_up(url)
        request = SampleRequest("live", corpus, cfg, seed=1, shard_dir=str(tmp_path))
        traces = list(LiveSampler(make_engine(cfg)).sample(request))[0]
        assert len(traces) == 2 and all(0 < t.n_tokens <= 6 for t in traces)
        assert request.info["engine"]["engine"] == "openai"
    assert not _server_up(url)
    bad = ServerConfig(url=url, start_command=[sys.executable, "-c", "raise SystemExit(3)"], startup_timeout_s=30)
    with pytest.raises(EngineUnreachable, match="exited with 3"):
        with managed_server(bad):
            pass


class _ScriptedEngine:
    """An engine whose traces are scripted per seed: (text piece, confidence) per token. It streams them through
    the job's callback as a real engine does, so DeepConf's stop rule is checked on known confidences."""

    def __init__(self, scripts):
        self.scripts = scripts

    def generate(self, jobs):
        from deepprune.sampling.engines import GenResult, TokenEvent

        out = []
        for job in jobs:
            text, tops, reason = [], [], "length"
            for index, (piece, conf) in enumerate(self.scripts[job.seed][: job.max_tokens]):
                top = (-conf, -conf)  # token confidence = minus the mean top-k logprob
                text.append(piece)
                tops.append(list(top))
                if job.on_token is not None and not job.on_token(TokenEvent(index, piece, -conf, top)):
                    reason = "cancelled"
                    break
            out.append(GenResult("".join(text), len(text), reason, tops))
        return out


def test_deepconf_online_stops_a_trace_the_moment_its_window_confidence_drops_below_the_warmup_threshold():
    steady = lambda conf, answer: [("a ", conf)] * 11 + [(f"\\boxed{{{answer}}}", conf)]
    scripts = {1: steady(5.0, "7"), 2: steady(5.0, "7"),                       # warm-up: threshold = 5
               3: [("a ", 5.0)] * 4 + [("b ", 1.0)] + [("c ", 5.0)] * 7,      # window (5 + 1) / 2 = 3 < 5 at token 5
               4: steady(6.0, "8")}                                            # never below 5
    result = run_deepconf_online(_ScriptedEngine(scripts), Task("p", "p", (1, 2, 3, 4), Grader(SPEC, "7"), 12),
                                 warmup=2, eta=90, window=2)
    assert result.extra == {"threshold": 5.0, "stopped": 1.0, "unsampled_by_consensus": 0.0}
    assert [t.stop_reason for t in result.traces] == ["length", "length", "confidence_stop", "length"]
    assert [t.n_tokens for t in result.traces] == [12, 12, 5, 12] and result.tokens == 41
    assert result.answer == "7" and result.correct  # warm-up traces and the survivor vote, weighted by confidence
