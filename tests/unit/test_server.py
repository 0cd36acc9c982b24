"""The completion server (`python -m deepprune.sampling.server`) against hostile clients, started as the platform
starts it (its own process on a free port of 127.0.0.1, stopped however the test ends): every bad field is a 400
naming it, a big body a 413, and stalled or trickling clients neither hold it nor keep `/health` or valid
streams from being answered."""

from __future__ import annotations

import json
import math
import os
import socket
import sys
import threading
import time

import httpx
import pytest

from deepprune.sampling.engines import GenerationSettings, GenJob, OpenAIEngine
from deepprune.sampling.live import _server_up
from deepprune.services import free_port, service
from tests.conftest import ROOT

pytestmark = pytest.mark.generation
TIMEOUT_S = 2.0  # the server's: to receive a whole request
MAX_CONNECTIONS = 32
MAX_BODY = 1 << 16


@pytest.fixture(scope="module")
def server(tiny_lm, tmp_path_factory):
    port = free_port()
    cmd = [sys.executable, "-m", "deepprune.sampling.server", "--model", str(tiny_lm), "--port", str(port),
           "--timeout-s", str(TIMEOUT_S), "--max-connections", str(MAX_CONNECTIONS), "--max-body-bytes", str(MAX_BODY)]
    url = f"http://127.0.0.1:{port}"
    with service(cmd, lambda: _server_up(f"{url}/v1"), 120, "completion server",
                 tmp_path_factory.mktemp("server") / "server.log", env={**os.environ, "PYTHONPATH": str(ROOT)}):
        yield url


VALID = {"model": "tiny", "prompt": "Count to five.", "max_tokens": 2, "temperature": 0.8, "top_p": 0.95,
         "logprobs": 3, "n": 1, "seed": 7, "stream": False, "stream_options": {"include_usage": True}}
BAD = [  # (field, value): each one on an otherwise valid request
    ("temperature", "hot"), ("temperature", -0.1), ("temperature", 2.5), ("temperature", math.nan),
    ("temperature", None), ("top_p", 0), ("top_p", 1.5), ("top_p", "0.9"),
    ("max_tokens", -5), ("max_tokens", 0), ("max_tokens", 1.5), ("max_tokens", "8"), ("max_tokens", True),
    ("max_tokens", 10**6),  # beyond the model's context length
    ("logprobs", 100000), ("logprobs", -1), ("logprobs", 2.0), ("n", 2), ("n", True),
    ("seed", -1), ("seed", "x"), ("seed", 2**64), ("prompt", 5), ("prompt", ""), ("prompt", ["a"]), ("prompt", None),
    ("stream", "yes"), ("stream", 1), ("stream_options.include_usage", "yes"), ("stream_options.extra", 1),
    ("model", 3), ("stop", "\n"), ("echo", True),  # unknown fields are refused, not ignored
]


def _with(field: str, value) -> dict:
    body = json.loads(json.dumps(VALID))
    *path, key = field.split(".")
    target = body
    for part in path:
        target = target[part]
    target[key] = value
    return body


@pytest.mark.parametrize(("field", "value"), BAD, ids=[f"{f}={v!r}"[:40] for f, v in BAD])
def test_every_out_of_range_or_mistyped_field_is_a_400_naming_it(server, field, value):
    reply = httpx.post(f"{server}/v1/completions", content=json.dumps(_with(field, value)), timeout=30)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["param"] == field and error["message"].startswith(f"{field}: ")


def test_a_valid_request_and_malformed_bodies(server):
    ok = httpx.post(f"{server}/v1/completions", json=VALID, timeout=60).json()
    choice = ok["choices"][0]
    assert choice["finish_reason"] == "length" and len(choice["logprobs"]["top_logprobs"][0]) == 3
    for body, message in ((b"not json", "not JSON"), (b"[1, 2]", "JSON object")):
        reply = httpx.post(f"{server}/v1/completions", content=body, timeout=30)
        assert reply.status_code == 400 and message in reply.json()["error"]["message"]
    too_big = json.dumps({**VALID, "prompt": "x" * MAX_BODY}).encode()
    reply = httpx.post(f"{server}/v1/completions", content=too_big, timeout=30)
    assert reply.status_code == 413 and "exceeds the limit" in reply.json()["error"]["message"]


def _stalled(port: int, data: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(data)
    return sock


def _wait_idle(server: str) -> None:
    """Until the server holds no connection but the one asking (each hostile one was dropped at its deadline)."""
    deadline = time.monotonic() + TIMEOUT_S + 10
    while httpx.get(f"{server}/stats", timeout=10).json()["connections"] > 1:
        assert time.monotonic() < deadline, "the server still holds connections"
        time.sleep(0.1)


def _hung_up(replies: list[bytes]) -> bool:
    """Every stalled client was answered 408 before its connection was closed; one whose bytes reached the server
    only after the deadline (a test process starved on a busy machine) is closed without a word."""
    return all(r.startswith(b"HTTP/1.1 408") or r == b"" for r in replies) and any(replies)


def _reply(sock: socket.socket) -> bytes:
    """What the server sent before closing the connection (raises if it keeps it open past the socket timeout)."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    sock.close()
    return data


STALL_HEADERS = b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n"
LYING_LENGTH = b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"prompt\": "


def _trickle(port: int, replies: list[bytes]) -> None:
    """A slow-body client: an honest Content-Length, then a byte every 0.2 s (50 s for the whole body)."""
    body = json.dumps({**VALID, "prompt": "y" * 200}).encode()
    sock = _stalled(port, b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body))
    try:
        for byte in body:
            sock.sendall(bytes([byte]))
            time.sleep(0.2)
    except OSError:  # the server hung up at its deadline
        pass
    replies.append(_reply(sock))


@pytest.mark.slow  # ~15 s of generation under hostile load
def test_hostile_clients_neither_hold_the_server_nor_delay_health_or_valid_streams(server):
    port = int(server.rsplit(":", 1)[1])
    start = time.monotonic()
    stalled = [_stalled(port, STALL_HEADERS if i % 2 else LYING_LENGTH) for i in range(8)]
    trickled: list[bytes] = []
    tricklers = [threading.Thread(target=_trickle, args=(port, trickled)) for _ in range(4)]
    for thread in tricklers:
        thread.start()
    client = OpenAIEngine(f"{server}/v1", "tiny", GenerationSettings(0.8, 0.95, 3), max_concurrency=4, retries=0)
    prompt = "Count to five."
    results: list = []
    valid = threading.Thread(target=lambda: results.extend(client.generate([GenJob(prompt, 12, s) for s in range(6)])))
    valid.start()
    health_s = []
    while valid.is_alive() and time.monotonic() - start < 30:
        t0 = time.monotonic()
        assert httpx.get(f"{server}/health", timeout=10).json() == {"status": "ok"}
        health_s.append(time.monotonic() - t0)
        time.sleep(0.2)
    valid.join(timeout=1)
    for thread in tricklers:
        thread.join(timeout=10)
    replies = [_reply(sock) for sock in stalled]
    elapsed = time.monotonic() - start
    assert len(results) == 6 and all(r.finish_reason in ("stop", "length") and 0 < r.n_tokens <= 12 for r in results)
    assert all(len(r.logprobs) == r.n_tokens for r in results)
    assert max(health_s) < 2.0, health_s
    assert len(trickled) == 4 and _hung_up(replies + trickled), replies + trickled
    assert elapsed < 30
    _wait_idle(server)


def test_connections_are_bounded_and_freed_at_the_deadline(server):
    port = int(server.rsplit(":", 1)[1])
    _wait_idle(server)
    start = time.monotonic()
    stalled = [_stalled(port, STALL_HEADERS) for _ in range(MAX_CONNECTIONS)]
    time.sleep(0.3)  # the server has accepted them all
    busy = httpx.get(f"{server}/health", timeout=10)
    assert busy.status_code == 503 and busy.headers["Retry-After"] == "1" and "busy" in busy.json()["error"]["message"]
    assert _hung_up([_reply(sock) for sock in stalled])
    _wait_idle(server)
    assert time.monotonic() - start < TIMEOUT_S + 10


def test_a_service_is_stopped_with_everything_it_started(tmp_path):
    """A server whose workers outlive a SIGTERM of the server alone (uvicorn workers, MLflow's job consumers): the
    block's end stops its whole process group, the leader's stop signal first, SIGKILL for what ignores it."""
    ready = tmp_path / "ready"
    script = (f"trap '' TERM; sleep 300 & (trap '' TERM; exec sleep 301) & touch {ready}; "
              f"trap 'exit 0' TERM; wait")
    with service(["bash", "-c", script], ready.exists, 30, "a server with workers", grace_s=2) as proc:
        children = [p for p in _group(proc.pid) if p != proc.pid]
        assert len(children) >= 2
    assert proc.returncode is not None and not _group(proc.pid)


def test_what_a_service_started_in_sessions_of_its_own_gets_ctrl_c_then_sigkill(tmp_path):
    """A Prefect worker starts each flow run in a session of its own, out of reach of a signal to the worker's
    group (flows.deploy.serve). Taken before the service stops, descendants() names them; signal_groups() sends
    each group Ctrl-C (a run that handles it ends), and kill_after() kills what ignores it once the grace is over."""
    import signal

    from deepprune.services import descendants, kill_after, signal_groups

    handled, ready = tmp_path / "handled", tmp_path / "ready"
    polite = ("import signal, sys, time, pathlib\n"
              f"signal.signal(signal.SIGINT, lambda *a: (pathlib.Path({str(handled)!r}).touch(), sys.exit(0)))\n"
              "time.sleep(300)\n")
    script = (f"setsid {sys.executable} -c {polite!r} & setsid bash -c \"trap '' INT; sleep 302\" & "
              f"sleep 0.5; touch {ready}; wait")
    with service(["bash", "-c", script.replace("\\n", "\n")], ready.exists, 30, "a worker", grace_s=2) as proc:
        deadline = time.monotonic() + 20
        while len({os.getpgid(p.pid) for p in descendants(proc.pid) if p.is_running()}) < 2:  # two own sessions
            assert time.monotonic() < deadline, [p.cmdline() for p in descendants(proc.pid)]
            time.sleep(0.1)
        runs = descendants(proc.pid)
        signal_groups(descendants(proc.pid, recursive=False), signal.SIGINT)
    started = time.monotonic()
    kill_after(runs, grace_s=2)
    assert handled.exists()  # the run that handles Ctrl-C got it
    assert not [p for p in runs if p.is_running() and p.status() != "zombie"]  # the one that ignores it: killed
    assert time.monotonic() - started < 10


def _group(pgid: int) -> list[int]:
    import psutil

    found = []
    for p in psutil.process_iter(["pid", "status"]):
        try:
            if os.getpgid(p.pid) == pgid and p.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(p.pid)
        except (ProcessLookupError, psutil.Error):
            pass
    return found


def test_services_started_together_run_at_once_and_stop_together(tmp_path):
    """services.started starts a process without waiting for it, so a pipeline starts its Prefect and MLflow servers
    at once (flows.server.servers): here each of two services answers only once the other has started, which
    waiting for the first before starting the second would never see. Both stop when the block ends."""
    import contextlib

    from deepprune.services import started

    a, b = tmp_path / "a", tmp_path / "b"
    script = "touch {mine}; trap 'exit 0' TERM; while true; do sleep 0.1; done"
    with contextlib.ExitStack() as stack:
        first = stack.enter_context(started(["bash", "-c", script.format(mine=a)], b.exists, 30, "first",
                                            grace_s=2))
        second = stack.enter_context(started(["bash", "-c", script.format(mine=b)], a.exists, 30, "second",
                                             grace_s=2))
        procs = [first.wait_ready(), second.wait_ready()]
        assert all(p.poll() is None for p in procs)
    assert all(p.returncode is not None for p in procs) and not any(_group(p.pid) for p in procs)


def test_a_service_that_exits_before_it_answers_is_named_with_its_log(tmp_path):
    from deepprune.services import started

    log = tmp_path / "server.log"
    with started(["bash", "-c", "echo nope; exit 3"], lambda: False, 30, "the flaky server", log) as handle:
        with pytest.raises(RuntimeError, match=r"the flaky server exited with 3 before it answered \(log: .*server.log"):
            handle.wait_ready()
    assert "nope" in log.read_text()
