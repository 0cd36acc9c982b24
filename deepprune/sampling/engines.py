"""Generation engines for live sampling: the transformers backend (any local causal LM; the packaged
SmolLM2-135M-Instruct by default; batched, seeded per trace) and the OpenAI-compatible HTTP backend (vLLM,
SGLang, llama.cpp, or `python -m deepprune.sampling.server`; streamed, concurrent, cancellable).

Both take GenJobs (a prompt text, a token budget, a seed, an optional per-token callback that may stop the
trace) and return GenResults with the engine's own token count and why the trace stopped. Resuming a trace
from its prefix is a new job whose prompt is the old prompt plus the prefix text (a server's prefix cache
makes that cheap). The transformers engine also hands back a `Continuation` (the token ids and the trace's
random-generator state): a job that carries it goes on exactly where the trace stopped, so a resumed trace
generates the very tokens it would have generated had it never paused.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any


class EngineError(RuntimeError):
    """A generation request failed for a reason a retry will not fix."""


class PromptTooLong(EngineError, ValueError):
    """The prompt (plus the token budget) exceeds the model's context length."""


class MalformedResponse(EngineError, ValueError):
    """The server answered with something that is not an OpenAI-compatible completion."""


class TransientEngineError(RuntimeError):
    """The server failed in a way that may pass (5xx, a dropped connection): the Prefect task retries it."""


class EngineUnreachable(TransientEngineError, ConnectionError):
    """Nothing answers at the server URL."""


@dataclass(frozen=True)
class TokenEvent:
    """One generated token: its text, its log-probability, and the top-k log-probabilities at its position."""

    index: int
    text: str
    logprob: float
    top_logprobs: tuple[float, ...]
    top_tokens: tuple[str, ...] = ()


@dataclass
class GenerationSettings:
    temperature: float = 0.7
    top_p: float = 0.95
    top_logprobs: int = 5


@dataclass(frozen=True)
class Continuation:
    """Where a trace of the transformers engine stopped: prompt + generated token ids, and its generator's state."""

    token_ids: tuple[int, ...]
    rng_state: Any


@dataclass
class GenJob:
    prompt: str
    max_tokens: int
    seed: int
    on_token: Callable[[TokenEvent], bool] | None = None  # return False to stop the trace here
    settings: GenerationSettings | None = None           # per-job sampling settings (else the engine's)
    resume: Continuation | None = None                   # transformers: go on exactly from here (prompt, seed unused)


@dataclass
class GenResult:
    text: str
    n_tokens: int
    finish_reason: str                      # "stop" (end of text), "length" (budget), "cancelled" (on_token said stop)
    logprobs: list[list[float]] | None = None  # per token, the top-k log-probabilities
    seconds: float = 0.0
    continuation: Continuation | None = None   # transformers engine: resume state (see GenJob.resume)


@dataclass
class EngineStats:
    tokens: int = 0
    seconds: float = 0.0
    requests: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, tokens: int, seconds: float) -> None:
        with self.lock:
            self.tokens += tokens
            self.seconds += seconds
            self.requests += 1


# ---------------------------------------------------------------------------------------------------------------
class TransformersEngine:
    """Batched sampling with a KV cache on a local causal LM, one seeded generator per trace (a trace's tokens do
    not depend on which other traces share its batch)."""

    def __init__(self, path: str | None = None, settings: GenerationSettings | None = None, batch_size: int = 8,
                 device: str = "auto", dtype: str = "auto", model: Any = None, tokenizer: Any = None,
                 context_length: int | None = None) -> None:
        from deepprune.judges.causal_lm import load_causal_lm, packaged_model_path

        self.model_name = path or (packaged_model_path() if model is None else
                                   str(getattr(model.config, "_name_or_path", "") or "in-memory model"))
        if model is None:
            model, tokenizer = load_causal_lm(path, dtype, device)
        self.model, self.tokenizer = model, tokenizer
        self.settings = settings or GenerationSettings()
        self.batch_size = batch_size
        self.device = next(model.parameters()).device
        self.context_length = context_length or int(getattr(model.config, "max_position_embeddings", 2048))
        self.stats = EngineStats()
        self._lock = threading.Lock()  # one batch at a time on one model

    @property
    def identity(self) -> dict[str, Any]:
        from deepprune.paths import portable

        return {"engine": "transformers", "model": portable(self.model_name), "device": str(self.device),
                "dtype": str(next(self.model.parameters()).dtype), "batch_size": self.batch_size}

    def render(self, messages: list[dict[str, str]]) -> str:
        """The prompt text through the model's chat template (plain text when it has none)."""
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return "\n\n".join(m["content"] for m in messages) + "\n\n"

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def generate(self, jobs: Sequence[GenJob]) -> list[GenResult]:
        """Every job, in batches of similar prompt length."""
        encoded = [list(j.resume.token_ids) if j.resume is not None else
                   self.tokenizer.encode(j.prompt, add_special_tokens=False) for j in jobs]
        for job, ids in zip(jobs, encoded):
            if len(ids) + job.max_tokens > self.context_length:
                raise PromptTooLong(f"prompt of {len(ids)} tokens + max_tokens {job.max_tokens} exceeds the model's "
                                    f"context length {self.context_length}")
        order = sorted(range(len(jobs)), key=lambda i: len(encoded[i]))
        results: list[GenResult | None] = [None] * len(jobs)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start:start + self.batch_size]
            with self._lock:
                for i, result in zip(chunk, self._generate_batch([jobs[i] for i in chunk], [encoded[i] for i in chunk])):
                    results[i] = result
        return results  # type: ignore[return-value]

    def _generate_batch(self, jobs: list[GenJob], encoded: list[list[int]]) -> list[GenResult]:
        import torch

        start = time.perf_counter()
        tok, dev, cfg = self.tokenizer, self.device, jobs[0].settings or self.settings
        eos_cfg = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        eos = {tok.eos_token_id} | set(eos_cfg if isinstance(eos_cfg, list) else [] if eos_cfg is None else [eos_cfg])
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        width = max(len(e) for e in encoded)
        ids = torch.full((len(jobs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(jobs), width), dtype=torch.long)
        for i, row in enumerate(encoded):  # left padding
            ids[i, width - len(row):] = torch.tensor(row)
            mask[i, width - len(row):] = 1
        ids, mask = ids.to(dev), mask.to(dev)
        gens = [torch.Generator(device="cpu") for _ in jobs]
        for gen, job in zip(gens, jobs):
            if job.resume is not None:
                gen.set_state(job.resume.rng_state)
            else:
                gen.manual_seed(int(job.seed))
        tokens: list[list[int]] = [[] for _ in jobs]
        tops: list[list[list[float]]] = [[] for _ in jobs]
        reasons: list[str | None] = [None] * len(jobs)
        past, current = None, ids
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache_arg = _cache_argument(self.model)
        with torch.inference_mode():
            for step in range(max(j.max_tokens for j in jobs)):
                out = self.model(input_ids=current, attention_mask=mask, position_ids=positions, use_cache=True,
                                 logits_to_keep=1, **{cache_arg: past})
                past = getattr(out, cache_arg)
                logits = out.logits[:, -1, :].float().cpu()
                logp = torch.log_softmax(logits, dim=-1)
                k = max(cfg.top_logprobs, 1)
                top_lp, top_ids = logp.topk(k, dim=-1)
                nxt = torch.full((len(jobs),), pad, dtype=torch.long)
                for i, job in enumerate(jobs):
                    if reasons[i] is not None:
                        continue
                    choice = _sample(logits[i], cfg.temperature, cfg.top_p, gens[i])
                    nxt[i] = choice
                    if choice in eos:
                        reasons[i] = "stop"
                        continue
                    tokens[i].append(choice)
                    tops[i].append(top_lp[i].tolist())
                    if job.on_token is not None:
                        event = TokenEvent(len(tokens[i]) - 1, tok.decode([choice]), float(logp[i, choice]),
                                           tuple(top_lp[i].tolist()), tuple(tok.decode([t]) for t in top_ids[i].tolist()))
                        if not job.on_token(event):
                            reasons[i] = "cancelled"
                            continue
                    if len(tokens[i]) >= job.max_tokens:
                        reasons[i] = "length"
                if all(r is not None for r in reasons):
                    break
                alive = torch.tensor([r is None for r in reasons], dtype=torch.long, device=dev)
                mask = torch.cat([mask, alive[:, None]], dim=1)
                positions = (mask.sum(-1, keepdim=True) - 1).clamp(min=0)
                current = nxt[:, None].to(dev)
        seconds = time.perf_counter() - start
        results = []
        for i in range(len(jobs)):
            results.append(GenResult(tok.decode(tokens[i], skip_special_tokens=True), len(tokens[i]),
                                     reasons[i] or "length", tops[i] if cfg.top_logprobs else None, seconds,
                                     Continuation(tuple(encoded[i]) + tuple(tokens[i]), gens[i].get_state())))
        self.stats.add(sum(len(t) for t in tokens), seconds)
        return results


def _cache_argument(model: Any) -> str:
    """The KV-cache keyword of this transformers version: `cache` (5.2x on) or `past_key_values` (earlier)."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


_NUCLEUS_FIRST_K = 256


def _sample(logits: Any, temperature: float, top_p: float, generator: Any) -> int:
    import torch

    if temperature <= 0:
        return int(logits.argmax())
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        # the nucleus is the smallest set of most likely tokens whose mass reaches top_p: it lies within the k most
        # likely as soon as their mass does, so the k largest are sorted, not the whole vocabulary (a few hundred
        # of 49,152 for SmolLM2 at top_p 0.95; benchmarks/bench_generation.py)
        k = min(_NUCLEUS_FIRST_K, probs.numel())
        while True:
            sorted_p, idx = probs.topk(k)
            if k == probs.numel() or float(sorted_p.sum()) >= top_p:
                break
            k = min(4 * k, probs.numel())
        keep = sorted_p.cumsum(-1) - sorted_p < top_p
        sorted_p = sorted_p * keep
        return int(idx[torch.multinomial(sorted_p / sorted_p.sum(), 1, generator=generator)])
    return int(torch.multinomial(probs, 1, generator=generator))


# ---------------------------------------------------------------------------------------------------------------
class OpenAIEngine:
    """An OpenAI-compatible server's /v1/completions, streamed, with top-k logprobs, a bounded number of
    concurrent requests, and cancellation (closing the stream) when a job's callback says stop."""

    def __init__(self, url: str, model: str, settings: GenerationSettings | None = None, max_concurrency: int = 8,
                 timeout_s: float = 120.0, api_key: str | None = None, tokenizer_path: str | None = None,
                 retries: int = 2) -> None:
        self.url = url.rstrip("/")
        self.model_name = model
        self.settings = settings or GenerationSettings()
        self.max_concurrency, self.timeout_s, self.api_key, self.retries = max_concurrency, timeout_s, api_key, retries
        self.tokenizer = None
        if tokenizer_path:
            from transformers import AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_path, local_files_only=True)
        self.stats = EngineStats()

    @property
    def identity(self) -> dict[str, Any]:
        return {"engine": "openai", "url": self.url, "model": self.model_name, "max_concurrency": self.max_concurrency}

    def render(self, messages: list[dict[str, str]]) -> str:
        if self.tokenizer is not None and getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return "\n\n".join(m["content"] for m in messages) + "\n\n"

    def count_tokens(self, text: str) -> int:
        if self.tokenizer is None:
            raise EngineError("counting prompt tokens needs sample.server.tokenizer_path")
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def generate(self, jobs: Sequence[GenJob]) -> list[GenResult]:
        if not jobs:
            return []
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(jobs))) as pool:
            return list(pool.map(self._one_with_retries, jobs))

    def _one_with_retries(self, job: GenJob) -> GenResult:
        for attempt in range(self.retries + 1):
            try:
                return self._one(job)
            except TransientEngineError:
                if attempt == self.retries:
                    raise
                time.sleep(0.5 * 2 ** attempt)
        raise AssertionError("unreachable")

    def _one(self, job: GenJob) -> GenResult:
        import httpx

        cfg = self.settings
        body = {"model": self.model_name, "prompt": job.prompt, "max_tokens": job.max_tokens,
                "temperature": cfg.temperature, "top_p": cfg.top_p, "seed": job.seed, "stream": True,
                "stream_options": {"include_usage": True}}
        if cfg.top_logprobs:
            body["logprobs"] = cfg.top_logprobs
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        start = time.perf_counter()
        text, tops, n_events, reason, usage = [], [], 0, None, None
        try:
            with httpx.Client(timeout=self.timeout_s) as client, client.stream(
                    "POST", f"{self.url}/completions", json=body, headers=headers) as response:
                if response.status_code >= 400:
                    _raise_for_status(self.url, response.status_code, response.read().decode("utf-8", "replace"))
                for chunk_no, line in enumerate(response.iter_lines(), start=1):
                    if not line.strip() or line.startswith(":"):
                        continue
                    if not line.startswith("data:"):
                        raise MalformedResponse(f"{self.url}/completions: stream line {chunk_no}: expected 'data: ...', "
                                                f"got {line[:80]!r}")
                    payload = line[5:].strip()
                    if payload == "[DONE]":
                        break
                    chunk = _parse_chunk(payload, self.url, chunk_no)
                    if chunk.get("usage"):
                        usage = chunk["usage"]
                    for piece, lp, top, finish in _chunk_tokens(chunk, self.url, chunk_no, bool(cfg.top_logprobs)):
                        if finish:
                            reason = finish
                        if top is None and not piece:
                            continue  # a chunk that only carries the finish reason
                        text.append(piece)
                        if top is not None:
                            tops.append(top)
                        n_events += 1
                        if job.on_token is not None and not job.on_token(
                                TokenEvent(n_events - 1, piece, lp, tuple(top or ()))):
                            reason = "cancelled"  # leaving the with-block closes the stream: the server stops
                            break
                    if reason == "cancelled":
                        break
        except httpx.ConnectError as exc:
            raise EngineUnreachable(f"cannot reach the OpenAI-compatible server at {self.url} ({exc}); start it "
                                    "(e.g. `vllm serve MODEL`) or fix sample.server.url") from None
        except (httpx.ReadError, httpx.RemoteProtocolError, httpx.ReadTimeout) as exc:
            raise TransientEngineError(f"{self.url}: connection dropped mid-stream ({exc})") from None
        n_tokens = n_events
        if usage and reason != "cancelled" and isinstance(usage.get("completion_tokens"), int):
            n_tokens = usage["completion_tokens"]
        seconds = time.perf_counter() - start
        self.stats.add(n_tokens, seconds)
        return GenResult("".join(text), n_tokens, reason or "stop", tops if cfg.top_logprobs else None, seconds)


def _raise_for_status(url: str, status: int, body: str) -> None:
    message = body
    try:
        message = json.loads(body).get("error", {}).get("message", body)
    except (json.JSONDecodeError, AttributeError):
        pass
    if status >= 500 or status == 429:
        raise TransientEngineError(f"{url}: HTTP {status}: {message[:300]}")
    if "context length" in message.lower() or "too long" in message.lower():
        raise PromptTooLong(f"{url}: {message[:300]}")
    raise EngineError(f"{url}: HTTP {status}: {message[:300]}")


def _parse_chunk(payload: str, url: str, chunk_no: int) -> dict:
    try:
        chunk = json.loads(payload)
    except json.JSONDecodeError:
        raise MalformedResponse(f"{url}/completions: stream chunk {chunk_no} is not JSON: {payload[:80]!r}") from None
    if not isinstance(chunk, dict):
        raise MalformedResponse(f"{url}/completions: stream chunk {chunk_no}: expected an object")
    return chunk


def _chunk_tokens(chunk: dict, url: str, chunk_no: int, want_logprobs: bool):
    """(text, logprob, top-k logprobs, finish_reason) per token of one stream chunk."""
    choices = chunk.get("choices")
    if choices == [] and chunk.get("usage"):
        return  # the final usage-only chunk
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict) or "text" not in choices[0]:
        raise MalformedResponse(f"{url}/completions: stream chunk {chunk_no}: missing field choices[0].text")
    choice = choices[0]
    finish = choice.get("finish_reason")
    lp = choice.get("logprobs")
    if want_logprobs and lp and lp.get("tokens"):
        tokens, token_lps, top = lp.get("tokens", []), lp.get("token_logprobs", []), lp.get("top_logprobs") or []
        if not (len(tokens) == len(token_lps)) or (top and len(top) != len(tokens)):
            raise MalformedResponse(f"{url}/completions: stream chunk {chunk_no}: logprobs fields of unequal length")
        for i, piece in enumerate(tokens):
            top_values = sorted((float(v) for v in (top[i] or {}).values()), reverse=True) if top else []
            value = token_lps[i]
            yield piece, float(value) if value is not None else math.nan, top_values, finish if i == len(tokens) - 1 else None
        return
    if choice["text"] or finish is None:
        yield choice["text"], math.nan, None, finish
    elif finish:
        yield "", math.nan, None, finish
