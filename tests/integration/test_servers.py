"""The README's server commands, started for real on 127.0.0.1 and stopped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request

import pytest

from deepprune.services import free_port
from tests.conftest import ROOT

pytestmark = pytest.mark.slow  # `make prefect-ui` builds the venv first where there is none


def _get_json(url: str, seconds: float = 120) -> dict:
    deadline = time.time() + seconds
    while True:
        try:
            return json.load(urllib.request.urlopen(url, timeout=2))
        except OSError:
            assert time.time() < deadline, f"{url} did not answer"
            time.sleep(1)


def test_make_prefect_ui_on_another_port_serves_a_ui_that_calls_that_port():
    """`make prefect-ui PREFECT_PORT=N`: the UI must call the API on N (Prefect builds it from 4200 otherwise)."""
    port = free_port()
    env = dict(os.environ)
    env.pop("PREFECT_API_URL", None)
    env.pop("PREFECT_UI_API_URL", None)
    proc = subprocess.Popen(["make", "-s", "prefect-ui", f"PREFECT_PORT={port}"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        settings = _get_json(f"http://127.0.0.1:{port}/ui-settings")
        assert settings["api_url"] == f"http://127.0.0.1:{port}/api"
        assert _get_json(f"http://127.0.0.1:{port}/api/health") is True
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
