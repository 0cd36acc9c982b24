"""What every stage flow shares: reading params, and an MLflow run tagged with commit, DVC stage and flow run."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prefect.runtime import flow_run

from deepprune.config import Params, load_params
from deepprune.tracking import Run, start_run
from flows import ROOT

PARENT_RUN_ENV = "DEEPPRUNE_PARENT_RUN_ID"  # set by flows/pipeline.py around `dvc repro`


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


def stage_params(path: str | os.PathLike = "params.yaml") -> Params:
    """The validated params of this run."""
    return load_params(path)


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
    with start_run(f"deepprune/{stage}", dvc_stage, tags=tags, parent_run_id=parent,
                   artifact_root=os.environ.get("DEEPPRUNE_MLFLOW_ARTIFACTS", str(ROOT / ".mlflow" / "artifacts"))) as run:
        run.log_params(params)
        yield run


@contextlib.contextmanager
def child_run(parent: Run, name: str, params: dict[str, Any]) -> Iterator[Run]:
    """A nested run under a stage run (one per judge variant), so the MLflow compare view lines them up."""
    tags = {k: v for k, v in parent.tags.items() if not k.startswith("mlflow.")}
    tags["variant"] = name
    with start_run(parent.experiment, f"{parent.name}/{name}", tags=tags, parent_run_id=parent.run_id,
                   nested=True) as run:
        run.log_params(params)
        yield run
