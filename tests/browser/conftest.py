"""Browser tests (marked `browser`): one tiny run, built once for the package, looked at in chromium the way a
person looks at it. Skipped, saying why, where Debian's chromium is not installed (`.ci/run` installs it)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Browser

from scripts.browser import CHROMIUM, chromium
from tests.conftest import make_workspace, recorded_only

RECORDED = ("math", "date")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip every `browser` test when there is no chromium to drive."""
    if CHROMIUM.exists():
        return
    skip = pytest.mark.skip(reason=f"needs Debian's chromium at {CHROMIUM}: `apt-get install -y chromium`")
    for item in items:
        if "browser" in item.keywords:
            item.add_marker(skip)


@dataclass(frozen=True)
class TinyRun:
    """A tiny run's workspace, and the Prefect API its flows reported to (still serving)."""

    path: Path
    prefect_api: str


@pytest.fixture(scope="package")
def tiny_run(tmp_path_factory, tiny_lm) -> Iterator[TinyRun]:
    """The recorded corpora through every stage that needs no model to generate or fine-tune, then the report,
    against a Prefect server started for it (up until the package's tests end) and an MLflow store of its own.
    Built once: every browser test looks at the same run."""
    from flows.ablate import ablate_flow
    from flows.embed import embed_flow
    from flows.judge import judge_flow
    from flows.label import label_flow
    from flows.prune import prune_flow
    from flows.report import report_flow
    from flows.sample import sample_flow
    from deepprune.config import load_params
    from flows.server import prefect_server
    from flows.sweep import run_sweep
    from flows.transfer import transfer_flow

    path = tmp_path_factory.mktemp("tiny-run")
    with pytest.MonkeyPatch.context() as monkeypatch:
        make_workspace(path, monkeypatch, tiny_lm)
        recorded_only(path)
        monkeypatch.setenv("PREFECT_HOME", str(path / ".prefect"))  # a database of its own, thrown away after
        monkeypatch.delenv("PREFECT_API_URL", raising=False)
        with prefect_server(load_params(path / "params.yaml").tracking) as api_url:
            for corpus in RECORDED:
                for stage in (sample_flow, label_flow, embed_flow, judge_flow, prune_flow):
                    stage(corpus)
            run_sweep("date")
            ablate_flow("date")
            transfer_flow()
            report_flow()
            yield TinyRun(path, api_url)


@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched
