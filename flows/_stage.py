"""What every stage flow shares: reading params, and an MLflow run tagged with commit, DVC stage and flow run."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from prefect import tags as prefect_tags
from prefect.runtime import flow_run

from deepprune import paths
from deepprune.compute import fix_threads
from deepprune.config import ConfigError, Params, TruncationConfig, load_params
from deepprune.io import write_json, write_jsonl
from deepprune.metric_names import split_timings
from deepprune.paths import staged_outputs
from deepprune.progress import Snapshot, TerminalSink, reporting
from deepprune.services import Unreachable
from deepprune.tracking import Run, fail_abandoned_runs, process_tags, require_store, start_run
from flows import artifact_root, project_root
from flows.server import (crash_abandoned_flow_runs, drain_prefect_workers, owner_tags, prefect_server,
                          stop_with_parent, terminate_as_interrupt)

ROC_POINTS, ROC_FIGURE = "roc_points.json", "roc.svg"  # every judge child run's artifacts, at the root
PARENT_RUN_ENV = "DEEPPRUNE_PARENT_RUN_ID"  # set by flows/pipeline.py around `dvc repro`
PIPELINE_FLOW_RUN_ENV = "DEEPPRUNE_PIPELINE_FLOW_RUN"  # the pipeline's Prefect flow-run name, a tag of its stages

# What this stage process measures (written to paths.timings at its end, never into a DVC output): when its own work
# began and ended (stage_run), and the timing keys its outputs would otherwise carry (write_output).
_CLOCK: dict[str, float] = {}
_MEASURED: dict[str, object] = {}


def write_output(path: str, doc: object) -> None:
    """Write a stage's JSON output without its timing keys (deepprune.metric_names.is_timing): outputs are a
    function of the inputs, so two runs write the same bytes; the timings go to this run's timings file."""
    kept, timed = split_timings(doc)
    write_json(path, kept)
    if timed is not None:
        _MEASURED[paths.published(str(path))] = timed


def write_output_rows(path: str, rows: Iterable[dict]) -> int:
    """write_output for a JSONL output: each row's timing keys go to the timings file, at the row's index."""
    kept, timed = split_timings(list(rows))
    if timed is not None:
        _MEASURED[paths.published(str(path))] = timed
    return write_jsonl(path, kept)


def _write_timings(stage: str, corpus: str | None) -> None:
    """This process's timings file: wall time from process start (imports included), the stage's own work, the
    overhead around it (start-up, imports, Prefect and MLflow set-up and teardown), and what its outputs measured.
    The file lands in the working directory's repository (the real one, also from a DVC experiment's temporary
    copy), where `make run` reads it for its closing table."""
    from flows.timings import process_start
    from flows.warm import STARTED_ENV  # a warm child's process began at its fork: count from its command's start

    end = time.time()
    warm = STARTED_ENV in os.environ
    start = float(os.environ[STARTED_ENV]) if warm else process_start()
    clock = {"process_start": start, **_CLOCK, "end": end}
    work = clock.get("work_end", end) - clock.get("work_start", end)
    marks = [m for m in ("process_start", "stage_start", "flow_start", "work_start", "work_end", "flow_end", "end")
             if m in clock]
    phases = {f"{a}__{b}_seconds": clock[b] - clock[a] for a, b in zip(marks, marks[1:])}
    write_json(project_root(Path.cwd()) / paths.timings(stage, corpus), {
        "stage": f"{stage}@{corpus}" if corpus else stage, "pid": os.getpid(), "warm": warm, "clock": clock,
        "wall_seconds": end - start, "work_seconds": work, "overhead_seconds": end - start - work,
        "phases": phases, "measured": _MEASURED})


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
    with a one-line error. A finished stage writes its timings file and exits at once (`leave`)."""
    _CLOCK["stage_start"] = time.time()  # interpreter start-up and imports are behind us
    terminate_as_interrupt()
    stop_with_parent()
    same_stage = [f"stage:{stage}", *(f"corpus:{a}" for a in args[:1])]
    tags = ["deepprune", *same_stage, *owner_tags()]
    if os.environ.get(PIPELINE_FLOW_RUN_ENV):
        tags.append(f"pipeline:{os.environ[PIPELINE_FLOW_RUN_ENV]}")
    try:
        tracking = stage_params().tracking  # refuse bad params before a server starts or an input is read
        require_store(tracking)
        with prefect_server(tracking), prefect_tags(*tags), _heartbeats():
            crashed = crash_abandoned_flow_runs(same_stage)
            if crashed:
                print(f"{stage}: marked {len(crashed)} flow run(s) CRASHED that a hard kill had left RUNNING "
                      f"({', '.join(crashed)})")
            with staged_outputs(stage, args[0] if args else None):
                run(*args)
        _write_timings(stage, args[0] if args else None)
    except (ConfigError, Unreachable) as exc:
        print(f"{stage}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print(f"{stage}: interrupted; finished work is kept and a rerun resumes", file=sys.stderr)
        raise SystemExit(130) from None
    leave(0)


def on_cluster(stage_flow: Any, *args: str, params_path: str = "params.yaml") -> Any:
    """Run a stage flow whose cells fan out (sweep points, ablation cells, transfer cells) on the task runner params
    `cluster` names: threads, or a Dask or Ray cluster."""
    from tasks.cluster import make_task_runner

    runner = make_task_runner(stage_params(params_path).cluster)
    return stage_flow.with_options(task_runner=runner)(*args, params_path)


def _heartbeats() -> contextlib.AbstractContextManager:
    """A stage's flow run sends Prefect no heartbeats unless the user set a frequency (env or Prefect profile).
    Prefect's heartbeat thread sleeps in 1 s steps and the flow run's end waits for it to wake: up to 1 s a stage
    run (benchmarks/bench_stage_overhead.py, "Prefect flow run closed"), for a signal that, by default every 180 s,
    comes once in a stage of a minute. A stage run killed hard is marked CRASHED by the next run of its stage
    (crash_abandoned_flow_runs) instead. A user who watches for silent flow runs with a Prefect automation sets
    PREFECT_FLOWS_HEARTBEAT_FREQUENCY, and the stages send them."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, get_current_settings, temporary_settings

    if "heartbeat_frequency" in get_current_settings().flows.model_fields_set:
        return contextlib.nullcontext()
    return temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None})


def leave(code: int = 0) -> None:
    """End a finished stage process at once: its outputs, runs and timings are saved. Prefect's log and event
    workers are drained first (what its exit hooks would do); the interpreter then skips tearing down its
    thousands of modules (Prefect, MLflow, torch), which cost every stage process 1 to 4 s
    (benchmarks/bench_stage_overhead.py, "interpreter exit")."""
    drain_prefect_workers()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def stage_params(path: str | os.PathLike = "params.yaml") -> Params:
    """The validated params of this run; torch in this process computes with `threads` threads from here on."""
    params = load_params(path)
    fix_threads(params.threads)
    return params


class PrefectProgress:
    """A progress sink: the stage's loops as one Prefect progress artifact of its flow run (the run's Artifacts
    tab), created at the first report and updated after. A failure to publish is said once and fails nothing."""

    interval = 3.0  # seconds between updates of one loop (its last report always goes out)
    min_seconds = 0.0

    def __init__(self, stage: str, corpus: str | None) -> None:
        self.key = re.sub(r"[^a-z0-9-]+", "-", f"progress-{stage}-{corpus or 'all'}".lower())
        self.title = f"{stage}@{corpus}" if corpus else stage
        self.artifact_id: Any = None
        self.broken = False

    def report(self, snapshot: Snapshot) -> None:
        if self.broken:
            return
        from prefect.artifacts import create_progress_artifact, update_progress_artifact

        fraction = snapshot.fraction if snapshot.fraction is not None else float(snapshot.final)
        description = f"**{self.title}** {snapshot.line()}"
        try:
            if self.artifact_id is None:
                self.artifact_id = create_progress_artifact(100 * fraction, key=self.key, description=description)
            else:
                update_progress_artifact(self.artifact_id, 100 * fraction, description=description)
        except Exception as exc:  # the server is busy or gone: the stage goes on, its progress stays in the terminal
            self.broken = True
            print(f"{self.title}: progress no longer published to Prefect ({type(exc).__name__}: {exc})",
                  file=sys.stderr)


@contextlib.contextmanager
def stage_run(stage: str, corpus: str | None, params: dict[str, Any]) -> Iterator[Run]:
    """The MLflow run of one stage execution, in experiment 'deepprune/<stage>'; the stage's long loops report their
    progress to the terminal and to a Prefect progress artifact of this flow run."""
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
    _CLOCK["flow_start"] = time.time()  # the flow run exists; the MLflow run does not yet
    abandoned = fail_abandoned_runs(f"deepprune/{stage}", {"dvc_stage": dvc_stage})
    if abandoned:
        print(f"{dvc_stage}: marked {len(abandoned)} run(s) FAILED that a hard kill had left RUNNING")
    with start_run(f"deepprune/{stage}", dvc_stage, tags=tags, parent_run_id=parent,
                   artifact_root=artifact_root()) as run:
        run.log_params(params)
        _CLOCK["work_start"] = time.time()
        with reporting(f"{stage}[{corpus}]" if corpus else stage, TerminalSink(), PrefectProgress(stage, corpus)):
            yield run
        _CLOCK["work_end"] = time.time()
    _CLOCK["flow_end"] = time.time()  # the MLflow run has ended; the flow run ends after


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
