"""What every stage flow shares: reading params, and an MLflow run tagged with commit, DVC stage and flow run."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from prefect import tags as prefect_tags
from prefect.runtime import flow_run

from deepprune.compute import fix_threads
from deepprune.config import ConfigError, Params, TruncationConfig, load_params
from deepprune.paths import staged_outputs
from deepprune.services import Unreachable
from deepprune.tracking import Run, fail_abandoned_runs, process_tags, require_store, start_run
from flows import ROOT
from flows.server import (crash_abandoned_flow_runs, owner_tags, prefect_server, stop_with_parent,
                          terminate_as_interrupt)

ROC_POINTS, ROC_FIGURE = "roc_points.json", "roc.svg"  # every judge child run's artifacts, at the root
PARENT_RUN_ENV = "DEEPPRUNE_PARENT_RUN_ID"  # set by flows/pipeline.py around `dvc repro`
PIPELINE_FLOW_RUN_ENV = "DEEPPRUNE_PIPELINE_FLOW_RUN"  # the pipeline's Prefect flow-run name, a tag of its stages


def git_commit(cwd: Path | None = None) -> str:
    """HEAD's commit (with '-dirty' when the work tree has changes), or 'unknown' outside git."""
    try:
        run = lambda *a: subprocess.run(["git", *a], cwd=cwd or Path.cwd(), capture_output=True, text=True,
                                        timeout=10, check=True).stdout.strip()
        sha = run("rev-parse", "HEAD")
        dirty = run("status", "--porcelain", "--untracked-files=no")
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run_stage(stage: str, run: Callable[..., Any], *args: str) -> None:
    """A stage process's entry point (the `main()` its DVC cmd calls): it reports to the pipeline's Prefect server
    (or starts one for itself, stopped with it), handles SIGTERM as Ctrl-C, stops when its parent dies, tags its
    flow run with the stage, the corpus, the pipeline run and this process, marks CRASHED the flow runs of the
    same stage that a hard kill left RUNNING, and writes its folder outputs aside until it has finished
    (deepprune.paths.staged_outputs). Bad params and a tracking store that does not answer end it before any work,
    with a one-line error."""
    terminate_as_interrupt()
    stop_with_parent()
    same_stage = [f"stage:{stage}", *(f"corpus:{a}" for a in args[:1])]
    tags = ["deepprune", *same_stage, *owner_tags()]
    if os.environ.get(PIPELINE_FLOW_RUN_ENV):
        tags.append(f"pipeline:{os.environ[PIPELINE_FLOW_RUN_ENV]}")
    try:
        tracking = stage_params().tracking  # refuse bad params before a server starts or an input is read
        require_store(tracking)
        with prefect_server(tracking), prefect_tags(*tags):
            crashed = crash_abandoned_flow_runs(same_stage)
            if crashed:
                print(f"{stage}: marked {len(crashed)} flow run(s) CRASHED that a hard kill had left RUNNING "
                      f"({', '.join(crashed)})")
            with staged_outputs(stage, args[0] if args else None):
                run(*args)
    except (ConfigError, Unreachable) as exc:
        print(f"{stage}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print(f"{stage}: interrupted; finished work is kept and a rerun resumes", file=sys.stderr)
        raise SystemExit(130) from None


def stage_params(path: str | os.PathLike = "params.yaml") -> Params:
    """The validated params of this run; torch in this process computes with `threads` threads from here on."""
    params = load_params(path)
    fix_threads(params.threads)
    return params


@contextlib.contextmanager
def stage_run(stage: str, corpus: str | None, params: dict[str, Any]) -> Iterator[Run]:
    """The MLflow run of one stage execution, in experiment 'deepprune/<stage>'."""
    dvc_stage = f"{stage}@{corpus}" if corpus else stage
    tags = {
        "git_commit": git_commit(),
        "dvc_stage": dvc_stage,
        "prefect_flow_run_id": str(flow_run.id or "none"),
        "prefect_flow_run_name": str(flow_run.name or "none"),
        "corpus": corpus or "all",
    }
    parent = os.environ.get(PARENT_RUN_ENV) or None
    if parent:
        tags["pipeline_run_id"] = parent
    tags.update(process_tags())
    abandoned = fail_abandoned_runs(f"deepprune/{stage}", {"dvc_stage": dvc_stage})
    if abandoned:
        print(f"{dvc_stage}: marked {len(abandoned)} run(s) FAILED that a hard kill had left RUNNING")
    with start_run(f"deepprune/{stage}", dvc_stage, tags=tags, parent_run_id=parent,
                   artifact_root=os.environ.get("DEEPPRUNE_MLFLOW_ARTIFACTS", str(ROOT / ".mlflow" / "artifacts"))) as run:
        run.log_params(params)
        yield run


def cell_params(params: Params, corpus: str, truncation: TruncationConfig, **recipe: Any) -> dict[str, Any]:
    """The params that define one child run's cell, under the same names in every stage: seed, corpus, the
    label stage's grouped folds, the truncation (strategy and k), then the cell's own recipe."""
    return {"seed": params.seed, "corpus": corpus, "folds": params.label.folds,
            "truncation": {"strategy": truncation.strategy, "k": truncation.k}, **recipe}


def log_roc(run: Run, curves: Mapping[str, tuple[Sequence[int], Sequence[float]]], title: str) -> None:
    """A child run's ROC curves ({judge: (labels, held-out scores)}) as its own small artifacts, under the same
    names in every child run so MLflow's compare view finds them in common: ROC_POINTS (fpr, tpr and threshold,
    at most 200 points a curve) and ROC_FIGURE (an SVG of a few KB)."""
    from deepprune.metrics import roc_table
    from deepprune.plots import roc_svg

    tables = {name: roc_table(labels, scores) for name, (labels, scores) in curves.items()}
    run.log_texts({ROC_POINTS: json.dumps(tables, indent=1) + "\n", ROC_FIGURE: roc_svg(tables, title)})


@contextlib.contextmanager
def child_run(parent: Run, name: str, params: dict[str, Any]) -> Iterator[Run]:
    """A nested run under a stage run (one per judge variant), so the MLflow compare view lines them up."""
    tags = {k: v for k, v in parent.tags.items() if not k.startswith("mlflow.")}
    tags["variant"] = name
    with start_run(parent.experiment, f"{parent.name}/{name}", tags=tags, parent_run_id=parent.run_id,
                   nested=True) as run:
        run.log_params(params)
        yield run
