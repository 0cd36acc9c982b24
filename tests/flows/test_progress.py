"""A stage flow's progress, end to end: the line on the terminal and the progress artifact of its flow run, read
back through the Prefect API; and a Prefect that cannot take the artifact fails nothing."""

from __future__ import annotations

import pytest
from prefect.testing.utilities import prefect_test_harness

from deepprune import paths
from deepprune.io import read_json
from deepprune.progress import Snapshot, TerminalSink
from flows._stage import PrefectProgress


@pytest.fixture(scope="module")
def prefect_api():
    with prefect_test_harness(server_startup_timeout=120):
        yield


def test_sample_flow_publishes_its_progress_to_the_terminal_and_to_prefect(prefect_api, workspace, monkeypatch,
                                                                         capfd):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    from flows.sample import sample_flow

    monkeypatch.setattr(TerminalSink, "min_seconds", 0.0)  # the tiny run ends within a second: show it anyway
    state = sample_flow("math", return_state=True)
    # the stage's metrics from its output, not state.result(): under an event loop an earlier test left running
    # (Playwright's), Prefect's sync-compatible result() hands back a coroutine
    assert state.is_completed() and read_json(workspace / paths.metrics("sample", "math"))["sample/problems"] == 8
    flow_run_id = state.state_details.flow_run_id
    assert "sample[math] replaying: 8/8 problems (100.0%)" in capfd.readouterr().err
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(
            any_=[flow_run_id])))
    progress = [a for a in artifacts if a.type == "progress"]
    assert len(progress) == 1  # one artifact per stage flow run, updated in place
    assert progress[0].key == "progress-sample-math" and progress[0].data == 100.0
    assert progress[0].description.startswith("**sample@math** sample[math] replaying: 8/8 problems (100.0%)")
    assert "traces/s" in progress[0].description and "done in" in progress[0].description


def test_a_prefect_that_refuses_the_artifact_fails_nothing(monkeypatch, capsys):
    import prefect.artifacts

    calls = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise ConnectionError("no server")

    monkeypatch.setattr(prefect.artifacts, "create_progress_artifact", refuse)
    sink = PrefectProgress("embed", "Date_2")
    assert sink.key == "progress-embed-date-2"  # what Prefect accepts in a key: lowercase, digits, dashes
    for done in (1, 2):
        sink.report(Snapshot("embed[Date_2] encoding", done, 2, "texts", 1.0))
    assert len(calls) == 1 and sink.broken  # tried once, then left alone
    assert "progress no longer published to Prefect (ConnectionError: no server)" in capsys.readouterr().err
