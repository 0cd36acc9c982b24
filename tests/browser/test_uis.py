"""The UIs as a person uses them, on the tiny run, with every request off the machine blocked: MLflow's compare
view lines up the judge variants' metrics, and the Prefect UI lists the stage flow runs by their DVC stage names
and opens the one an MLflow run points to."""

from __future__ import annotations

import contextlib
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from playwright.sync_api import Browser, Page, expect

from deepprune.config import load_params
from deepprune.services import free_port, service
from flows._stage import ROC_FIGURE, ROC_POINTS
from flows.server import healthy
from scripts.browser import offline_page
from tests.browser.conftest import TinyRun
from tests.conftest import mlflow_runs

pytestmark = [pytest.mark.browser, pytest.mark.slow]

UI_TIMEOUT_MS = 120_000  # the UIs fetch and render on 2 cores shared with whatever else runs
PLOT_LINK = "a[title='Plot chart']"  # each metric name in MLflow's compare view links to its chart


@contextlib.contextmanager
def mlflow_ui(run: TinyRun) -> Iterator[str]:
    """`make mlflow-ui`'s command on the tiny run's store, on a free port, with one worker (four start slowly on two
    cores), stopped after the block; its base URL."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    store = f"sqlite:///{run.path / 'mlflow.db'}"
    cmd = [str(Path(sys.executable).parent / "mlflow"), "ui", "--backend-store-uri", store, "--default-artifact-root",
           str(run.path / "mlartifacts"), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with service(cmd, lambda: healthy(base), 300, "mlflow ui", run.path / "mlflow-ui.log"):
        yield base


def compared_metrics(page: Page) -> set[str]:
    """The metric rows of MLflow's compare view. Its table is virtualised (only rows in view are in the page), so
    scroll it as a person would and collect every name that comes into view."""
    names = page.locator(".ReactVirtualized__Grid").filter(has=page.locator(PLOT_LINK)).first
    seen: set[str] = set()
    for top in range(0, names.evaluate("grid => grid.scrollHeight") + 1, 100):
        names.evaluate("(grid, top) => { grid.scrollTop = top; }", top)
        page.evaluate("() => new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)))")
        seen.update(names.locator(PLOT_LINK).all_inner_texts())
    return seen


def test_mlflow_compare_view_lines_up_the_judge_variants(tiny_run: TinyRun, browser: Browser):
    """Where the README sends a person: the experiments list, where, once *Model training* is chosen, an experiment
    opens on its Runs table, and the compare view of one judge stage's variant runs, where every metric they
    share is a row, the params that define each cell are rows, and their ROC points and figure are common
    artifacts."""
    runs = mlflow_runs(f"sqlite:///{tiny_run.path / 'mlflow.db'}", "deepprune/judge")
    variants = [r for r in runs if r.data.tags.get("mlflow.parentRunId") and r.data.tags["corpus"] == "date"]
    shared = set.intersection(*(set(r.data.metrics) for r in variants))
    assert len(variants) == len(load_params(tiny_run.path / "params.yaml").judge.variants) and "auroc" in shared
    experiment = variants[0].info.experiment_id
    with mlflow_ui(tiny_run) as base, offline_page(browser, lambda url: url.startswith(base)) as (page, visit):
        page.goto(f"{base}/#/experiments")
        page.get_by_text("Model training", exact=True).click(timeout=UI_TIMEOUT_MS)  # once: the browser keeps it
        page.get_by_role("link", name="deepprune/judge", exact=True).click(timeout=UI_TIMEOUT_MS)
        expect(page.get_by_text("judge@date", exact=True)).to_be_visible(timeout=UI_TIMEOUT_MS)  # the Runs table
        ids, experiments = json.dumps([r.info.run_id for r in variants]), json.dumps([experiment])
        page.goto(f"{base}/#/compare-runs?runs={quote(ids)}&experiments={quote(experiments)}")
        for run in variants:
            expect(page.get_by_text(run.info.run_name, exact=True)).to_be_visible(timeout=UI_TIMEOUT_MS)
        rows = compared_metrics(page)
        assert shared <= rows, sorted(shared - rows)
        for name in ("seed", "corpus", "folds", "truncation.strategy", "truncation.k", "loss"):  # param rows
            expect(page.get_by_text(name, exact=True).first).to_be_attached(timeout=UI_TIMEOUT_MS)
        for name in (ROC_POINTS, ROC_FIGURE):  # the compare view lists the files every run has
            expect(page.get_by_text(name, exact=True).first).to_be_visible(timeout=UI_TIMEOUT_MS)
        expect(page.get_by_text("No common artifacts to display.")).to_have_count(0)
        assert visit.blocked == []


def test_prefect_ui_lists_the_stage_flow_runs_by_name(tiny_run: TinyRun, browser: Browser):
    """The flow-runs page of the server the tiny run reported to: `judge@date` is there, and opens the flow run
    whose id the stage's MLflow run carries."""
    runs = mlflow_runs(f"sqlite:///{tiny_run.path / 'mlflow.db'}", "deepprune/judge")
    flow_run_id = next(r.data.tags["prefect_flow_run_id"] for r in runs if r.data.tags.get("dvc_stage") == "judge@date"
                       and not r.data.tags.get("mlflow.parentRunId"))
    base = tiny_run.prefect_api.removesuffix("/api")
    with offline_page(browser, lambda url: url.startswith(base)) as (page, visit):
        page.goto(f"{base}/runs")
        page.get_by_role("link", name="judge@date", exact=True).click(timeout=UI_TIMEOUT_MS)
        expect(page).to_have_url(re.compile(f"/runs/flow-run/{flow_run_id}"), timeout=UI_TIMEOUT_MS)
        expect(page.get_by_text("Completed").first).to_be_visible(timeout=UI_TIMEOUT_MS)
        assert visit.blocked == []
