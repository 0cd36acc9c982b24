"""The sampler interface: every backend turns a request into schema-valid traces.

A backend yields traces problem by problem, so the stage can write per-problem results as they come
(live backends checkpoint that way); `replay` re-reads a recorded corpus and recomputes what we own
(extracted answers, grading, token counts) with our own functions.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from deepprune.config import CorpusConfig, SampleConfig
from deepprune.data.schema import Trace


@dataclass(frozen=True)
class SampleRequest:
    """What to sample: a corpus (or problem set), how many problems, and the seed."""

    dataset: str
    corpus: CorpusConfig
    settings: SampleConfig
    seed: int
    stats: dict[str, float] = field(default_factory=dict, compare=False)  # the backend's counters
    shard_dir: str | None = None  # live backends: where finished problems are checkpointed
    info: dict[str, Any] = field(default_factory=dict, compare=False)  # what the backend reports (engine identity)

    @property
    def limit(self) -> int | None:
        """How many problems to keep (the first, in file order): the corpus's own `limit`, else `sample.limit`."""
        return self.corpus.limit if self.corpus.limit is not None else self.settings.limit


class Sampler(Protocol):
    """A backend that produces traces, grouped by problem, in a deterministic order."""

    name: str

    def sample(self, request: SampleRequest) -> Iterator[list[Trace]]:
        """Yield the traces of one problem at a time."""
        ...


# name -> "module:factory"; modules are imported only when their backend is asked for
_REGISTRY: dict[str, str] = {"replay": "deepprune.sampling.replay:ReplaySampler",
                             "live": "deepprune.sampling.live:LiveSampler"}


def get_sampler(name: str) -> Sampler:
    """Instantiate a backend by name, or fail naming the known ones."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown sample backend {name!r}; known: {sorted(_REGISTRY)}")
    module, attr = _REGISTRY[name].split(":")
    factory: Callable[[], Sampler] = getattr(importlib.import_module(module), attr)
    return factory()
