"""Tasks of the sweep stage: one task per grid point, run by the configured Prefect task runner; each calls the
point's own flow, so every point is a Prefect flow run (and an MLflow child run) of its own."""

from __future__ import annotations

import importlib.util
from typing import Any

from prefect import task
from prefect.task_runners import ThreadPoolTaskRunner

from deepprune.config import SweepConfig
from tasks import NO_CACHE


def make_task_runner(cfg: SweepConfig) -> Any:
    """threads (default), or Dask / Ray when their Prefect integrations are installed."""
    if cfg.task_runner == "threads":
        return ThreadPoolTaskRunner(max_workers=cfg.max_workers)
    module, cls, package = {"dask": ("prefect_dask", "DaskTaskRunner", "prefect-dask"),
                            "ray": ("prefect_ray", "RayTaskRunner", "prefect-ray")}[cfg.task_runner]
    if importlib.util.find_spec(module) is None:
        raise ImportError(f"sweep.task_runner {cfg.task_runner!r} needs `pip install {package}` (or use 'threads')")
    runner = getattr(importlib.import_module(module), cls)
    if cfg.task_runner == "dask":
        return runner(cluster_kwargs={"n_workers": cfg.max_workers, "threads_per_worker": 1})
    return runner()


@task(cache_policy=NO_CACHE)
def run_point(point_flow: Any, **kwargs: Any) -> dict[str, float]:
    """Evaluate one sweep point by running its flow."""
    return point_flow(**kwargs)
