"""Stage flow runs and Prefect's heartbeats: a stage sends none unless the user sets a frequency."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import ROOT


def test_stage_flow_runs_send_heartbeats_only_when_the_user_sets_a_frequency():
    """Prefect's heartbeat thread sleeps in 1 s steps and a flow run's end waits for it (flows._stage._heartbeats):
    the stages turn heartbeats off, unless a frequency is set in the environment or the Prefect profile."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, get_current_settings, temporary_settings

    from flows._stage import _heartbeats

    with _heartbeats():  # what the flow engine reads when it starts a flow run's heartbeat thread
        assert get_current_settings().flows.heartbeat_frequency is None
    assert get_current_settings().flows.heartbeat_frequency is not None  # restored after
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: 60}), _heartbeats():
        assert get_current_settings().flows.heartbeat_frequency == 60
    code = ("from prefect.settings import get_current_settings\nfrom flows._stage import _heartbeats\n"
            "with _heartbeats():\n    print(get_current_settings().flows.heartbeat_frequency)")
    env = {**os.environ, "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "45", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "45"
