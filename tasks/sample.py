"""Tasks of the sample stage."""

from __future__ import annotations

from prefect import task

from deepprune.data.schema import Trace, write_traces
from deepprune.sampling import SampleRequest, get_sampler
from tasks import IO_RETRIES, NO_CACHE


@task(cache_policy=NO_CACHE, **IO_RETRIES)
def sample_traces(request: SampleRequest) -> list[list[Trace]]:
    """Replay a recorded corpus, or sample a live one with the configured engine; traces grouped by problem.
    Transient engine errors (a 5xx, an unreachable server) are retried; finished problems are not regenerated."""
    backend = "live" if request.corpus.importer == "live" else "replay"
    return list(get_sampler(backend).sample(request))


@task(cache_policy=NO_CACHE, **IO_RETRIES)
def save_traces(path: str, problems: list[list[Trace]]) -> int:
    """Write the trace file atomically; returns the trace count."""
    return write_traces(path, (t for group in problems for t in group))
