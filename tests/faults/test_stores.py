"""Tracking stores that are down (issue 12): a stage whose MLflow tracking server or Prefect API does not answer
fails before it computes, within 30 s, naming the store and the local default; MLflow gives up on a server lost
later within params `tracking`'s bound; a flow run a hard kill left RUNNING is marked CRASHED by the next run.

Every server here is real and on 127.0.0.1: a closed port (refused), a listening socket that never answers
(silent), a stub HTTP server, a Prefect server."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from deepprune.config import load_params
from deepprune.services import free_port
from flows.server import crash_abandoned_flow_runs, owner_tags, prefect_server
from tests.conftest import ROOT

BOUND_S = 30  # the requirement: a stage reporting to a store that does not answer fails within this
PROBE = """
import sys
from prefect import flow
from flows._stage import run_stage, stage_run

@flow(name="probe")
def probe(corpus: str) -> None:
    with stage_run("probe", corpus, {}):
        sys.stdout.write("WORKED\\n")

run_stage("probe", probe, "x")
"""


@contextlib.contextmanager
def _silent_port() -> Iterator[int]:
    """A port that accepts connections (the kernel's backlog) and never answers a request."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield sock.getsockname()[1]


@contextlib.contextmanager
def _unanswered_port(kind: str) -> Iterator[int]:
    if kind == "silent":
        with _silent_port() as port:
            yield port
    else:
        yield free_port()  # nothing listens: refused


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["refused", "silent"])
@pytest.mark.parametrize("variable, url, server", [
    ("MLFLOW_TRACKING_URI", "http://127.0.0.1:{port}", "the MLflow tracking server at"),
    ("PREFECT_API_URL", "http://127.0.0.1:{port}/api", "the Prefect API at"),
])
def test_a_stage_whose_store_does_not_answer_fails_fast_naming_it(tmp_path, kind, variable, url, server):
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PYTHONPATH": str(ROOT),
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    for key in ("PREFECT_API_URL", "DEEPPRUNE_PARENT_RUN_ID", "DEEPPRUNE_PIPELINE_FLOW_RUN",
                "MLFLOW_HTTP_REQUEST_TIMEOUT", "PREFECT_API_REQUEST_TIMEOUT"):
        env.pop(key, None)
    with _unanswered_port(kind) as port:
        env[variable] = url.format(port=port)
        start = time.monotonic()
        proc = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=300)
        elapsed = time.monotonic() - start
    print(f"{variable} {kind}: exit {proc.returncode} after {elapsed:.1f} s: {proc.stderr.strip()[-300:]}")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"{server} {env[variable]} does not answer" in proc.stderr
    assert f"unset {variable}" in proc.stderr
    assert "WORKED" not in proc.stdout  # it failed before the stage's work
    assert elapsed < BOUND_S


class _Answers(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_mlflow_gives_up_on_a_server_lost_after_the_check_within_the_params_bound(monkeypatch):
    """The reachability check passes; the server then goes away. MLflow's own retries (7, 4 min 21 s on a closed
    port) are bounded by params `tracking`, applied through MLflow's variables: a misspelt one would not bound."""
    from mlflow.exceptions import MlflowException

    from deepprune.tracking import require_store, start_run

    for name in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"):
        monkeypatch.delenv(name, raising=False)  # the params' values apply, and are removed after the test
    stub = HTTPServer(("127.0.0.1", 0), _Answers)
    threading.Thread(target=stub.serve_forever, daemon=True).start()
    uri = f"http://127.0.0.1:{stub.server_port}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    require_store(load_params(ROOT / "params.yaml").tracking)  # it answers: no error
    stub.shutdown()
    stub.server_close()
    start = time.monotonic()
    with pytest.raises(MlflowException, match=f"127.0.0.1.*{stub.server_port}"):
        with start_run("deepprune/lost", "lost"):
            pass
    elapsed = time.monotonic() - start
    print(f"MLflow gave up after {elapsed:.1f} s")
    assert elapsed < BOUND_S


def test_a_user_set_mlflow_variable_wins_over_params(monkeypatch):
    from deepprune.tracking import require_store

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///unused.db")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "7")
    for name in ("MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"):
        monkeypatch.delenv(name, raising=False)
    tracking = load_params(ROOT / "params.yaml").tracking
    require_store(tracking)
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "7"
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == str(tracking.timeout_s)


@pytest.mark.slow
def test_a_flow_run_a_hard_kill_left_running_is_marked_crashed(tmp_path, monkeypatch):
    """Only a run of the same stage and corpus, on this host, whose process is gone, is marked."""
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import StateType
    from prefect.settings import PREFECT_API_REQUEST_TIMEOUT, PREFECT_CLIENT_MAX_RETRIES
    from prefect.states import Running

    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    for name in ("PREFECT_API_URL", "PREFECT_CLIENT_MAX_RETRIES", "PREFECT_API_REQUEST_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    tracking = load_params(ROOT / "params.yaml").tracking
    gone = subprocess.Popen(["true"])
    gone.wait()  # its pid now names no process
    dead_here = [f"host:{socket.gethostname()}", f"pid:{gone.pid}"]
    stage = ["stage:probe", "corpus:x"]

    @flow(name="probe")
    def probe() -> None:
        pass

    with prefect_server(tracking), get_client(sync_client=True) as client:
        # this process's Prefect client is bounded by params too, not only the processes it starts
        assert (PREFECT_CLIENT_MAX_RETRIES.value(), PREFECT_API_REQUEST_TIMEOUT.value()) == (tracking.retries, tracking.timeout_s)
        runs = {name: client.create_flow_run(probe, name=name, tags=tags, state=Running()).id for name, tags in {
            "killed": [*stage, *dead_here],
            "alive": [*stage, *owner_tags()],
            "other-corpus": ["stage:probe", "corpus:y", *dead_here],
            "other-host": [*stage, "host:elsewhere", f"pid:{gone.pid}"],
            "untagged": stage,
        }.items()}
        marked = crash_abandoned_flow_runs(stage)
        states = {name: client.read_flow_run(run_id).state for name, run_id in runs.items()}
    assert marked == ["killed"]
    assert states["killed"].type == StateType.CRASHED and "process is gone" in states["killed"].message
    assert {name: state.type for name, state in states.items() if name != "killed"} == {
        name: StateType.RUNNING for name in runs if name != "killed"}
