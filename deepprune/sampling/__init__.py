"""Samplers: where traces come from. A lazy registry, so optional engines are imported only when chosen."""

from __future__ import annotations

from deepprune.sampling.base import Sampler, SampleRequest, get_sampler

__all__ = ["SampleRequest", "Sampler", "get_sampler"]
