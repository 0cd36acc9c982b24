"""Tasks of the sweep stage: one task per grid point, run by the task runner of params `cluster` (tasks.cluster);
each calls the point's own flow, so every point is a Prefect flow run (and an MLflow child run) of its own."""

from __future__ import annotations

from typing import Any

from prefect import task

from tasks import NO_CACHE
from tasks.cluster import Placement, enter


@task(cache_policy=NO_CACHE)
def run_point(point_flow: Any, placement: Placement, **kwargs: Any) -> Any:
    """Evaluate one sweep point by running its flow, where the task runner put it."""
    enter(placement)
    return point_flow(placement=placement, **kwargs)
