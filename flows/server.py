"""The Prefect server a run reports to: one per pipeline (or per stage run outside a pipeline), on 127.0.0.1.

Prefect starts a temporary server of its own in every flow process that has no PREFECT_API_URL; a `kill -9` of
that process leaves the server running, and Ctrl-C reaches the server before the flow (one process group), which
then retries a dead API for minutes. This module starts the server itself instead:
- in its own session, so Ctrl-C in the terminal reaches the flow, which reports its state, and only then the
  server is stopped;
- with the kernel's parent-death signal (Linux PR_SET_PDEATHSIG), so it dies with the process that started it,
  however that process ends;
- stopped on exit, and reused by every stage a pipeline starts (they inherit PREFECT_API_URL).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from deepprune.services import service
from flows import ROOT

API_ENV = "PREFECT_API_URL"
STARTUP_TIMEOUT_S = 120.0


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def healthy(base_url: str) -> bool:
    """Whether `{base_url}/health` answers 200 now (the Prefect API and the MLflow server both serve it)."""
    try:
        with urllib.request.urlopen(f"{base_url}/health", timeout=2) as reply:
            return reply.status == 200
    except OSError:
        return False


@contextlib.contextmanager
def prefect_server(startup_timeout_s: float = STARTUP_TIMEOUT_S) -> Iterator[str]:
    """The API URL to report to: PREFECT_API_URL when set (a pipeline's server, or the user's), else a server
    started here for the duration of the block and stopped after it, whatever ends the block."""
    if os.environ.get(API_ENV):
        yield os.environ[API_ENV]
        return
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    home = Path(os.environ.get("PREFECT_HOME", ROOT / ".prefect"))
    env = {**os.environ, "PREFECT_UI_API_URL": api_url, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    cmd = [str(Path(sys.executable).parent / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with service(cmd, lambda: healthy(api_url), startup_timeout_s, "the Prefect server", home / "server.log", env,
                 grace_s=10.0):
        # Prefect read its settings when it was imported: the environment (for child processes) is not enough,
        # this process's settings must point at the server too, or its flows start a temporary server of their own
        os.environ[API_ENV] = api_url
        try:
            with temporary_settings(updates={PREFECT_API_URL: api_url}):
                try:
                    yield api_url
                finally:  # send the run's last log lines while the server still listens
                    from prefect.logging.handlers import APILogWorker

                    with contextlib.suppress(Exception):
                        APILogWorker.drain_all(timeout=5)
        finally:
            os.environ.pop(API_ENV, None)


def stop_with_parent(poll_s: float = 0.5, grace_s: float = 10.0) -> None:
    """When the process that started this one dies (`kill -9` of dvc), stop: SIGTERM to self, so flows and runs
    end as on Ctrl-C, then a hard exit if that has not ended the process within grace_s."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace_s)
        os._exit(128 + signal.SIGTERM)

    threading.Thread(target=watch, name="stop-with-parent", daemon=True).start()


def terminate_as_interrupt() -> None:
    """SIGTERM ends the process the way Ctrl-C does (KeyboardInterrupt): `finally` blocks run, the Prefect flow
    run and the MLflow run are closed, the server is stopped."""
    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)
