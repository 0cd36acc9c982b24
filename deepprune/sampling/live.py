"""Live backends of the sample stage: problems from a shipped set, prompts from params, N traces per problem from
the transformers engine or an OpenAI-compatible server.

Each finished problem is written at once as a shard (atomically) under the stage's shard directory, keyed by
everything that decides its traces; a killed run (even SIGKILL) resumes and regenerates nothing that finished.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from deepprune.answers import AnswerSpec, extract_answer, is_correct
from deepprune.config import SampleConfig, ServerConfig
from deepprune.data.schema import Trace, read_traces, write_traces
from deepprune.io import atomic_open
from deepprune.progress import track
from deepprune.sampling.base import SampleRequest
from deepprune.sampling.engines import EngineUnreachable, GenerationSettings, GenJob
from deepprune.sampling.problems import DATASETS, ProblemItem, build_messages, load_problems
from deepprune.services import service


# trace_seed's rule in words, written into the meta files of the sample and online stages
TRACE_SEED_RULE = "sha256(f'{seed}:{problem_id}:{index}')[:4] & 0x7fffffff"


def trace_seed(seed: int, problem_id: str, index: int) -> int:
    """The seed of trace `index` of a problem: fixed by the run seed, independent of batching and order."""
    digest = hashlib.sha256(f"{seed}:{problem_id}:{index}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def make_engine(cfg: SampleConfig) -> Any:
    """The engine params ask for (imported lazily: neither backend loads unless used)."""
    settings = GenerationSettings(cfg.generation.temperature, cfg.generation.top_p, cfg.generation.top_logprobs)
    if cfg.backend == "transformers":
        from deepprune.sampling.engines import TransformersEngine

        return TransformersEngine(cfg.model_path, settings, cfg.batch_size, cfg.device, cfg.dtype)
    if cfg.backend == "openai":
        from deepprune.sampling.engines import OpenAIEngine

        server = cfg.server
        key = os.environ.get(server.api_key_env) if server.api_key_env else None
        return OpenAIEngine(server.url, server.model, settings, server.max_concurrency, server.timeout_s, key,
                            server.tokenizer_path, server.retries)
    raise ValueError("live corpora need sample.backend 'transformers' or 'openai' (recorded corpora are replayed)")


def _server_up(url: str) -> bool:
    try:
        urllib.request.urlopen(f"{url.rstrip('/')}/models", timeout=2)
        return True
    except OSError:
        return False


@contextlib.contextmanager
def managed_server(cfg: ServerConfig, log_path: str | os.PathLike | None = None) -> Iterator[None]:
    """Start `server.start_command` for the run (unless a server already answers) and stop it afterwards; it never
    outlives the stage (deepprune.services)."""
    if not cfg.start_command or _server_up(cfg.url):
        yield
        return
    with service(cfg.start_command, lambda: _server_up(cfg.url), cfg.startup_timeout_s, "sample.server.start_command",
                 log_path, error=EngineUnreachable):
        yield


def run_fingerprint(request: SampleRequest) -> str:
    """What decides a problem's traces: corpus, sampling settings (not `limit`), and the seed. How answers are
    read (`answer`) and how prefixes are cut later (`tokenizer`) do not change what is generated: shards are
    reused across them, and answers are extracted again on reading."""
    settings = request.settings.model_dump(exclude={"limit", "skip_invalid"})
    corpus = request.corpus.model_dump(exclude={"limit", "answer", "tokenizer"})
    blob = json.dumps([corpus, settings, request.seed], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class LiveSampler:
    """Generates `sample.n` traces per problem; a problem whose shard exists is read back, not regenerated."""

    name = "live"

    def __init__(self, engine: Any = None) -> None:
        self.engine = engine

    def sample(self, request: SampleRequest) -> Iterator[list[Trace]]:
        corpus, cfg = request.corpus, request.settings
        assert corpus.dataset is not None
        limit = request.limit
        items = load_problems(corpus.dataset, corpus.path or DATASETS[corpus.dataset][0], limit)
        spec = corpus.answer.spec()
        shard_dir = Path(request.shard_dir or ".cache/sample") / run_fingerprint(request)
        stats = request.stats
        for key in ("problems", "traces", "no_answer", "resumed_problems", "generated_tokens", "generation_seconds"):
            stats.setdefault(key, 0)
        with track("generating", len(items), "problems") as progress:
            generated = stats["generated_tokens"]
            for traces in self._problems(request, items, spec, shard_dir):
                # tokens/s counts the tokens generated now: a resumed problem adds none
                progress.advance(1, tokens=stats["generated_tokens"] - generated)
                generated = stats["generated_tokens"]
                yield traces

    def _engine_identity(self, shard_dir: Path) -> dict[str, Any] | None:
        """The engine that generated this run's shards: the one loaded now, saved beside the shards, or, when every
        problem was resumed and none was loaded, the one saved by the run that generated them."""
        saved = shard_dir / "engine.json"
        if self.engine is None:
            return json.loads(saved.read_text(encoding="utf-8")) if saved.exists() else None
        identity = self.engine.identity
        if not saved.exists():
            with atomic_open(saved) as handle:
                json.dump(identity, handle, sort_keys=True)
        return identity

    def _problems(self, request: SampleRequest, items: list[ProblemItem], spec: AnswerSpec,
                  shard_dir: Path) -> Iterator[list[Trace]]:
        """Each problem's traces, in file order: read back from its shard, or generated together with the next
        problems that have none, so one engine call fills `sample.batch_size` traces (a decoding step on CPU costs
        about the same for 4 traces as for 20: the weights are read once per step). Every problem's shard is
        written when its group is done; a kill loses at most the group being generated."""
        cfg, stats = request.settings, request.stats
        shards = [shard_dir / (hashlib.sha1(item.problem_id.encode()).hexdigest()[:16] + ".jsonl") for item in items]
        per_call = max(1, cfg.batch_size // max(cfg.n, 1))
        done: dict[int, list[Trace]] = {}
        for index, (item, shard) in enumerate(zip(items, shards)):
            if index not in done:
                if shard.exists():
                    traces, _ = read_traces(shard)
                    done[index] = [dataclasses.replace(t, answer=(a := extract_answer(t.text, spec)),
                                                       correct=is_correct(a, t.gold, spec))
                                   for t in traces]  # the answer spec may have changed since the shard was written
                    stats["resumed_problems"] += 1
                else:
                    group = [j for j in range(index, len(items)) if not shards[j].exists()][:per_call]
                    done.update(self._generate(request, {j: (items[j], shards[j]) for j in group}, spec))
            traces = done.pop(index)
            identity = self._engine_identity(shard_dir)
            if identity is not None:
                request.info["engine"] = identity
            stats["problems"] += 1
            stats["traces"] += len(traces)
            stats["no_answer"] += sum(t.answer is None for t in traces)
            yield traces

    def _generate(self, request: SampleRequest, group: dict[int, tuple[ProblemItem, Path]],
                  spec: AnswerSpec) -> dict[int, list[Trace]]:
        """`sample.n` traces of each problem of group (its position in the corpus -> the problem and its shard),
        generated in one engine call, each trace with its own seed; each problem's shard written atomically."""
        corpus, cfg, stats = request.corpus, request.settings, request.stats
        if self.engine is None:
            self.engine = make_engine(cfg)
        engine = self.engine
        jobs = []
        for item, _ in group.values():
            prompt = engine.render(build_messages(item, cfg.prompts, cfg.system))
            jobs += [GenJob(prompt, cfg.generation.max_tokens, trace_seed(request.seed, item.problem_id, j))
                     for j in range(cfg.n)]
        start = time.perf_counter()
        results = engine.generate(jobs)
        stats["generation_seconds"] += time.perf_counter() - start
        out: dict[int, list[Trace]] = {}
        for offset, (index, (item, shard)) in enumerate(group.items()):
            traces, mine = [], slice(offset * cfg.n, (offset + 1) * cfg.n)
            for job, res in zip(jobs[mine], results[mine]):
                answer = extract_answer(res.text, spec)
                traces.append(Trace(
                    problem_id=item.problem_id, dataset=request.dataset, model=corpus.model, trace_id=f"s{job.seed}",
                    text=res.text, n_tokens=res.n_tokens, tokenizer="engine", answer=answer, gold=item.gold,
                    correct=is_correct(answer, item.gold, spec),
                    finish_reason=res.finish_reason if res.finish_reason in ("stop", "length") else "unknown",
                    logprobs=res.logprobs))
                stats["generated_tokens"] += res.n_tokens
            write_traces(shard, traces)  # atomic: a kill leaves either the whole shard or none
            out[index] = traces
        return out
