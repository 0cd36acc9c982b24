"""Where a stage's independent cells run (params `cluster`): threads of the stage process, or the workers of a Dask or
Ray cluster through Prefect's own integrations (prefect-dask, prefect-ray). A cell's task receives small things
(names, params, the stage's `Placement`) and reads its inputs by path on the worker, never large arrays pickled per
task; it calls `enter` first, so that a worker process computes and logs exactly as the stage process would."""

from __future__ import annotations

import importlib
import importlib.util
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect.task_runners import ThreadPoolTaskRunner

from deepprune.compute import fix_threads
from deepprune.config import ClusterConfig, TrackingConfig

_INTEGRATIONS = {"dask": ("prefect_dask", "DaskTaskRunner", "prefect-dask (pip install -e '.[team]')"),
                 "ray": ("prefect_ray", "RayTaskRunner", "prefect-ray")}


def make_task_runner(cfg: ClusterConfig) -> Any:
    """The Prefect task runner params `cluster` names: threads (default); a running Dask scheduler or Ray head at
    `address`; or, with no address, a local cluster of `max_workers` single-threaded processes for the stage."""
    if cfg.task_runner == "threads":
        return ThreadPoolTaskRunner(max_workers=cfg.max_workers)
    module, cls, package = _INTEGRATIONS[cfg.task_runner]
    if importlib.util.find_spec(module) is None:
        raise ImportError(f"params cluster.task_runner {cfg.task_runner!r} needs {package}, which is not installed "
                          f"(or set cluster.task_runner: threads)")
    runner = getattr(importlib.import_module(module), cls)
    if cfg.task_runner == "dask":
        if cfg.address:
            return runner(address=cfg.address)
        return runner(cluster_kwargs={"n_workers": cfg.max_workers, "threads_per_worker": 1, "processes": True,
                                      "dashboard_address": None})
    return runner(address=cfg.address) if cfg.address else runner()


@dataclass(frozen=True)
class Placement:
    """What a worker needs to run a stage's cell as the stage process would: the project root the stage reads its
    inputs under, the torch thread count (float results depend on it), and the MLflow store it logs to."""

    root: str
    threads: int
    tracking_uri: str
    tracking: TrackingConfig
    artifacts: str | None

    @classmethod
    def of_stage(cls, threads: int, tracking: TrackingConfig) -> "Placement":
        """The calling stage process's placement (its working directory is the project root)."""
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        import mlflow

        return cls(str(Path.cwd().resolve()), threads, mlflow.get_tracking_uri(), tracking,
                   os.environ.get("DEEPPRUNE_MLFLOW_ARTIFACTS"))

    def path(self, relative: str) -> Path:
        """A project path (deepprune.paths) as this worker reaches it."""
        return Path(self.root, relative)


def enter(placement: Placement) -> None:
    """Make this process compute and log as the stage's own: a no-op in the stage process (threads runner), the
    stage's settings in a cluster worker. A worker that cannot see the project fails the cell, naming itself."""
    if not Path(placement.root, "params.yaml").is_file():
        raise RuntimeError(f"cluster worker on {socket.gethostname()} (pid {os.getpid()}) cannot see the project at "
                           f"{placement.root}: run workers where the stage's project directory is reachable at the "
                           f"same path (the same machine, or a shared filesystem)")
    fix_threads(placement.threads)
    if placement.artifacts:
        os.environ["DEEPPRUNE_MLFLOW_ARTIFACTS"] = placement.artifacts
    if os.environ.get("MLFLOW_TRACKING_URI") != placement.tracking_uri:
        from deepprune.tracking import require_store

        os.environ["MLFLOW_TRACKING_URI"] = placement.tracking_uri
        require_store(placement.tracking)
        import mlflow

        mlflow.set_tracking_uri(placement.tracking_uri)
