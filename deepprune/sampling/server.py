"""A small OpenAI-compatible completion server over the transformers engine: `/v1/completions` (streamed or
not, with top-k logprobs and a per-request seed), `/v1/models`, `/health`, and `/stats` (tokens generated, so a
client can see that a closed stream stopped generation). It lets the openai backend be exercised against a real
HTTP server on a laptop, and serves the packaged SmolLM2 to any OpenAI client:

    python -m deepprune.sampling.server [--model PATH] [--host 127.0.0.1] [--port 8000]

For real workloads use vLLM (`vllm serve MODEL`) or SGLang in their own environments (README).
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from deepprune.sampling.engines import GenerationSettings, GenJob, PromptTooLong, TokenEvent, TransformersEngine


class _Handler(BaseHTTPRequestHandler):
    engine: TransformersEngine
    model_id: str
    counters: dict[str, int]
    counters_lock: threading.Lock
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt: str, *args: Any) -> None:  # quiet
        pass

    def _json(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str) -> None:
        self._json(status, {"error": {"message": message, "type": "invalid_request_error", "code": status}})

    def do_GET(self) -> None:  # noqa: N802
        if self.path.rstrip("/") == "/health":
            self._json(200, {"status": "ok"})
        elif self.path.rstrip("/") == "/v1/models":
            self._json(200, {"object": "list", "data": [{"id": self.model_id, "object": "model"}]})
        elif self.path.rstrip("/") == "/stats":
            with self.counters_lock:
                self._json(200, dict(self.counters))
        else:
            self._error(404, f"no route {self.path}")

    def do_POST(self) -> None:  # noqa: N802
        if self.path.rstrip("/") != "/v1/completions":
            self._error(404, f"no route {self.path}")
            return
        try:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            prompt, max_tokens = body["prompt"], int(body.get("max_tokens", 16))
            if not isinstance(prompt, str):
                raise TypeError("prompt must be a string")
        except (ValueError, KeyError, TypeError) as exc:
            self._error(400, f"bad request: {exc}")
            return
        settings = GenerationSettings(float(body.get("temperature", 1.0)), float(body.get("top_p", 1.0)),
                                      int(body.get("logprobs") or 0))
        stream = bool(body.get("stream"))
        rid = f"cmpl-{uuid.uuid4().hex[:12]}"
        state = {"started": False, "alive": True}

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
            except (BrokenPipeError, ConnectionResetError):
                state["alive"] = False
                return False

        def on_token(event: TokenEvent) -> bool:
            with self.counters_lock:
                self.counters["tokens_generated"] += 1
            if not stream:
                return True
            logprobs = None
            if settings.top_logprobs:
                logprobs = {"tokens": [event.text], "token_logprobs": [event.logprob],
                            "top_logprobs": [dict(zip(event.top_tokens, event.top_logprobs))]}
            return send(chunk({"index": 0, "text": event.text, "logprobs": logprobs, "finish_reason": None}))

        job = GenJob(prompt, max_tokens, int(body.get("seed") or 0), on_token=on_token, settings=settings)
        try:
            result = self.engine.generate([job])[0]
        except PromptTooLong as exc:
            self._error(400, f"This model's maximum context length is {self.engine.context_length} tokens: {exc}")
            return
        with self.counters_lock:
            self.counters["requests"] += 1
            self.counters["cancelled"] += result.finish_reason == "cancelled"
        usage = {"prompt_tokens": self.engine.count_tokens(prompt), "completion_tokens": result.n_tokens,
                 "total_tokens": self.engine.count_tokens(prompt) + result.n_tokens}
        if not stream:
            self._json(200, {"id": rid, "object": "text_completion", "model": self.model_id, "usage": usage,
                             "choices": [{"index": 0, "text": result.text, "finish_reason": result.finish_reason}]})
            return
        if state["alive"] and send(chunk({"index": 0, "text": "", "logprobs": None,
                                          "finish_reason": result.finish_reason}))\
                and send(chunk({}, usage)):
            send(b"data: [DONE]\n\n")
        self.close_connection = True


def make_server(engine: TransformersEngine, host: str = "127.0.0.1", port: int = 8000,
                model_id: str = "smollm2-135m-instruct") -> ThreadingHTTPServer:
    """A ready (not yet serving) HTTP server; call serve_forever() and shutdown()."""
    handler = type("Handler", (_Handler,), {"engine": engine, "model_id": model_id,
                                            "counters": {"tokens_generated": 0, "requests": 0, "cancelled": 0},
                                            "counters_lock": threading.Lock()})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description="OpenAI-compatible completions over a local causal LM")
    parser.add_argument("--model", default=None, help="local HF model dir or .gguf (default: packaged SmolLM2)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--model-id", default="smollm2-135m-instruct")
    args = parser.parse_args()
    server = make_server(TransformersEngine(args.model, batch_size=1), args.host, args.port, args.model_id)
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
