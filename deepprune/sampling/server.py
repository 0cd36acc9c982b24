"""A small OpenAI-compatible completion server over the transformers engine: `/v1/completions` (streamed or
not, with top-k logprobs and a per-request seed), `/v1/models`, `/health`, and `/stats` (tokens generated, so a
client can see that a closed stream stopped generation; open connections, that stalled ones were dropped). It lets
the openai backend be exercised against a real HTTP server on a laptop, and serves the packaged SmolLM2 to any
OpenAI client:

    python -m deepprune.sampling.server [--model PATH] [--host 127.0.0.1] [--port 8000]

`transformers serve` is no substitute: its /v1/completions ignores `logprobs`, its `seed` is process-global (a
concurrent request re-seeds a running one), and it has no body limit or read timeouts (docs/DECISIONS.md).

Every request is checked before it costs anything: a field that is unknown, mistyped or out of range is a 400
whose JSON error names it (`param`); a body over `max_body_bytes` is a 413; a client has `timeout_s` to send its
whole request (else 408, and a stalled or trickling client loses its connection) and each write to it may block
that long (a client that stops reading cancels its generation); at most `max_connections` connections are served
at once and `max_concurrency` completions run or wait (503 beyond either), so `/health` keeps answering.

For real workloads use vLLM (`vllm serve MODEL`) or SGLang in their own environments (README).
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import socket
import sys
import threading
import time
import traceback
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from deepprune.sampling.engines import GenerationSettings, GenJob, PromptTooLong, TokenEvent, TransformersEngine

MAX_LOGPROBS = 20  # top-k log-probabilities per token at most (vLLM's default cap)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    include_usage: bool = False


class CompletionRequest(BaseModel):
    """The /v1/completions fields this server honours. Strict: `"0.7"` is not a number nor `true` a count, and an
    unknown field (`stop`, `echo`, `best_of`...) is refused rather than silently ignored, since ignoring it would
    change what the client gets without telling it."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    model: str | None = None  # one model is served, whatever the client calls it
    prompt: str = Field(min_length=1)
    max_tokens: int = Field(16, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    n: int = Field(1, ge=1, le=1)
    seed: int | None = Field(None, ge=0, le=2**64 - 1)  # what torch.Generator.manual_seed takes
    stream: bool = False
    stream_options: StreamOptions | None = None

    @field_validator("max_tokens")
    @classmethod
    def _within_context(cls, value: int, info: ValidationInfo) -> int:
        limit = (info.context or {}).get("context_length")
        if limit is not None and value > limit:
            raise ValueError(f"must be at most the model's context length {limit}")
        return value


def _json_reply(status: int, body: dict, headers: dict[str, str] | None = None) -> bytes:
    """A whole HTTP/1.1 response with a JSON body: also sent raw by the accept loop, before any handler exists."""
    data = json.dumps(body).encode()
    head = {"Content-Type": "application/json", "Content-Length": str(len(data)), **(headers or {})}
    lines = [f"HTTP/1.1 {status} {BaseHTTPRequestHandler.responses.get(status, ('',))[0]}"]
    lines += [f"{key}: {value}" for key, value in head.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + data


def _error_body(status: int, message: str, param: str | None = None) -> dict:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": status}}


def _logprobs(events: list[TokenEvent]) -> dict:
    """OpenAI's legacy completions logprobs object for these tokens."""
    return {"tokens": [e.text for e in events], "token_logprobs": [e.logprob for e in events],
            "top_logprobs": [dict(zip(e.top_tokens, e.top_logprobs)) for e in events]}


class _Server(ThreadingHTTPServer):
    """A thread per connection, `max_connections` of them at most: one more is answered 503 by the accept loop."""

    daemon_threads = True
    request_queue_size = 128  # the listen backlog: socketserver's 5 makes a burst of clients wait seconds to connect

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], max_connections: int) -> None:
        super().__init__(address, handler)
        self.max_connections = max_connections
        self.connections = 0  # open now (in /stats: a client can see stalled ones dropped)
        self.connections_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.connections_lock:
            busy = self.connections >= self.max_connections
            self.connections += not busy
        if busy:
            with contextlib.suppress(OSError):
                request.sendall(_json_reply(503, _error_body(503, "server busy: too many connections"),
                                            {"Connection": "close", "Retry-After": "1"}))
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self.connections_lock:
                self.connections -= 1

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client that went away is no server error
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    engine: TransformersEngine
    model_id: str
    counters: dict[str, int]
    counters_lock: threading.Lock
    completions: threading.BoundedSemaphore  # completions running or waiting for the engine
    max_body_bytes: int
    timeout: float  # seconds: to send the whole request, and for each write to the client (socket timeout)
    deadline: threading.Timer  # this request's, until its body is read
    timed_out: bool
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt: str, *args: Any) -> None:  # quiet
        pass

    def handle_one_request(self) -> None:
        """Bound the time to receive a request, not just each read: a client trickling a byte at a time, or
        announcing more body than it sends, has its reading side shut at the deadline, which unblocks the read."""
        self.timed_out = False
        self.deadline = threading.Timer(self.timeout, self._hang_up)
        self.deadline.start()
        try:
            super().handle_one_request()
        finally:
            self.deadline.cancel()

    def _hang_up(self) -> None:
        self.timed_out = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RD)

    def _json(self, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
        if self.close_connection:
            headers = {**(headers or {}), "Connection": "close"}
        self.wfile.write(_json_reply(status, body, headers))

    def _error(self, status: int, message: str, param: str | None = None) -> None:
        self._json(status, _error_body(status, message, param))

    def _timed_out(self) -> bool:
        if self.timed_out:
            self.close_connection = True
            self._error(408, f"request not received within {self.timeout:g} s")
        return self.timed_out

    def do_GET(self) -> None:  # noqa: N802
        if self._timed_out():
            return
        self.deadline.cancel()
        if self.path.rstrip("/") == "/health":
            self._json(200, {"status": "ok"})
        elif self.path.rstrip("/") == "/v1/models":
            self._json(200, {"object": "list", "data": [{"id": self.model_id, "object": "model"}]})
        elif self.path.rstrip("/") == "/stats":
            with self.counters_lock:
                self._json(200, {**self.counters, "connections": self.server.connections})
        else:
            self._error(404, f"no route {self.path}")

    def _read_body(self) -> bytes | None:
        """The request body, or None once an error has been answered (the connection is then closed)."""
        self.close_connection = True  # a completion is one request per connection
        if self._timed_out():
            return None
        length = self.headers.get("Content-Length")
        if length is None:
            self._error(411, "a Content-Length header is required")
            return None
        if not length.isdigit():
            self._error(400, f"bad Content-Length {length[:40]!r}")
            return None
        if int(length) > self.max_body_bytes:
            self._error(413, f"request body of {length} bytes exceeds the limit of {self.max_body_bytes}")
            with contextlib.suppress(OSError):  # drain (until the deadline) so the client reads the 413, not a reset
                left = int(length)
                while left > 0 and (chunk := self.rfile.read(min(left, 1 << 16))):
                    left -= len(chunk)
            return None
        try:
            raw = self.rfile.read(int(length))
        except TimeoutError:
            raw = b""
        self.timed_out |= len(raw) < int(length)  # the deadline cut the body short
        if self._timed_out():
            return None
        self.deadline.cancel()
        return raw

    def _parse(self, raw: bytes) -> CompletionRequest | None:
        try:
            body = json.loads(raw)
        except ValueError:
            self._error(400, "the request body is not JSON")
            return None
        if not isinstance(body, dict):
            self._error(400, "the request body must be a JSON object")
            return None
        try:
            return CompletionRequest.model_validate(body, context={"context_length": self.engine.context_length})
        except ValidationError as exc:
            err = exc.errors()[0]
            param = ".".join(str(p) for p in err["loc"])
            self._error(400, f"{param}: {err['msg']}", param)
            return None

    def do_POST(self) -> None:  # noqa: N802
        raw = self._read_body()
        if raw is None:
            return
        if self.path.rstrip("/") != "/v1/completions":
            self._error(404, f"no route {self.path}")
            return
        request = self._parse(raw)
        if request is None:
            return
        if not self.completions.acquire(blocking=False):
            self._json(503, _error_body(503, "server busy: too many completions in flight"), {"Retry-After": "1"})
            return
        try:
            self._complete(request)
        finally:
            self.completions.release()

    def _complete(self, request: CompletionRequest) -> None:
        settings = GenerationSettings(request.temperature, request.top_p, request.logprobs or 0)
        rid = f"cmpl-{uuid.uuid4().hex[:12]}"
        state = {"started": False, "alive": True}
        events: list[TokenEvent] = []

        def chunk(choice: dict, usage: dict | None = None) -> bytes:
            doc = {"id": rid, "object": "text_completion", "created": int(time.time()), "model": self.model_id,
                   "choices": [choice] if choice else []}
            if usage is not None:
                doc["usage"] = usage
            return f"data: {json.dumps(doc)}\n\n".encode()

        def send(data: bytes) -> bool:
            try:
                if not state["started"]:
                    self.send_response(200)
                    self.send_header("Content-Type", "text/event-stream")
                    self.send_header("Cache-Control", "no-cache")
                    self.send_header("Connection", "close")
                    self.end_headers()
                    state["started"] = True
                self.wfile.write(data)
                self.wfile.flush()
                return True
            except OSError:  # gone, or not reading for `timeout` seconds: stop generating for it
                state["alive"] = False
                return False

        def on_token(event: TokenEvent) -> bool:
            with self.counters_lock:
                self.counters["tokens_generated"] += 1
            if not request.stream:
                events.append(event)
                return True
            logprobs = _logprobs([event]) if settings.top_logprobs else None
            return send(chunk({"index": 0, "text": event.text, "logprobs": logprobs, "finish_reason": None}))

        job = GenJob(request.prompt, request.max_tokens, request.seed or 0, on_token=on_token, settings=settings)
        try:
            result = self.engine.generate([job])[0]
        except PromptTooLong as exc:
            self._error(400, f"This model's maximum context length is {self.engine.context_length} tokens: {exc}",
                        "prompt")
            return
        except Exception:  # noqa: BLE001 - the client gets a JSON 500 (or a cut stream), the log the traceback
            traceback.print_exc()
            if not state["started"]:
                self._error(500, "generation failed")
            return
        with self.counters_lock:
            self.counters["requests"] += 1
            self.counters["cancelled"] += result.finish_reason == "cancelled"
        prompt_tokens = self.engine.count_tokens(request.prompt)
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": result.n_tokens,
                 "total_tokens": prompt_tokens + result.n_tokens}
        if not request.stream:
            self._json(200, {"id": rid, "object": "text_completion", "model": self.model_id, "usage": usage,
                             "choices": [{"index": 0, "text": result.text, "finish_reason": result.finish_reason,
                                          "logprobs": _logprobs(events) if settings.top_logprobs else None}]})
            return
        include_usage = request.stream_options is not None and request.stream_options.include_usage
        if state["alive"] and send(chunk({"index": 0, "text": "", "logprobs": None,
                                          "finish_reason": result.finish_reason}))\
                and (not include_usage or send(chunk({}, usage))):
            send(b"data: [DONE]\n\n")


def make_server(engine: TransformersEngine, host: str = "127.0.0.1", port: int = 8000,
                model_id: str = "smollm2-135m-instruct", max_concurrency: int = 8, max_connections: int = 64,
                max_body_bytes: int = 1 << 20, timeout_s: float = 10.0) -> ThreadingHTTPServer:
    """A ready (not yet serving) HTTP server; call serve_forever() and shutdown()."""
    handler = type("Handler", (_Handler,), {"engine": engine, "model_id": model_id,
                                            "counters": {"tokens_generated": 0, "requests": 0, "cancelled": 0},
                                            "counters_lock": threading.Lock(),
                                            "completions": threading.BoundedSemaphore(max_concurrency),
                                            "max_body_bytes": max_body_bytes, "timeout": timeout_s})
    return _Server((host, port), handler, max_connections)


def main() -> None:
    parser = argparse.ArgumentParser(description="OpenAI-compatible completions over a local causal LM")
    parser.add_argument("--model", default=None, help="local HF model dir or .gguf (default: packaged SmolLM2)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--model-id", default="smollm2-135m-instruct")
    limits = {"max_concurrency": "completions running or waiting (more: 503)",
              "max_connections": "connections served at once (more: 503)",
              "max_body_bytes": "larger request bodies get a 413",
              "timeout_s": "seconds a client has to send its request, and each write to it may block"}
    defaults = inspect.signature(make_server).parameters
    for name, text in limits.items():
        default = defaults[name].default
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default,
                            help=f"{text} (default {default})")
    args = parser.parse_args()
    server = make_server(TransformersEngine(args.model, batch_size=1), args.host, args.port, args.model_id,
                         **{name: getattr(args, name) for name in limits})
    print(f"serving {args.model or 'SmolLM2-135M-Instruct'} on http://{args.host}:{server.server_address[1]}/v1",
          flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
