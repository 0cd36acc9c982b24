"""DeepConf's confidence (Fu et al. 2025; DESIGN.md section 4), one implementation for every path: offline scores,
the warm-up threshold, and the streaming stop rule a live or replay engine calls token by token.

Window rule as the reference computes it (facebookresearch/deepconf, helper.py `compute_least_grouped`): the
group confidences of a trace are the means of its *full* windows of w consecutive token confidences (positions
1..w, 2..w+1, ...); a trace shorter than the window has one group, its whole-trace mean (an empty trace scores 0,
as there). A trace's score is its lowest group confidence. We do not round to 3 decimals as the reference does.

Streaming: the stop rule fires at the first *full* window whose mean falls below the threshold, so a trace
shorter than the window is never stopped while it generates (its window never fills, as in the reference's
patched vLLM). It is then scored by its whole-trace mean like any other, and the controller lets it vote only if
that score reaches the threshold (the reference filters finished traces by min_conf >= threshold the same way).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def token_confidence(logprobs: Sequence[Sequence[float]]) -> np.ndarray:
    """DeepConf's token confidence: minus the mean of the top-k log-probabilities at each position."""
    return np.array([-(sum(row) / len(row)) if len(row) else 0.0 for row in logprobs], dtype=float)


def group_confidences(token_conf: Sequence[float], window: int) -> np.ndarray:
    """Means of every full window of `window` tokens; a shorter trace: its whole-trace mean (empty: [0])."""
    conf = np.asarray(token_conf, dtype=float)
    if len(conf) == 0:
        return np.zeros(1)
    if len(conf) < window:
        return np.array([conf.sum() / len(conf)])
    csum = np.concatenate([[0.0], np.cumsum(conf)])  # sequential sums: the streaming rule adds in the same order
    return (csum[window:] - csum[:-window]) / window


def trace_score(token_conf: Sequence[float], window: int) -> float:
    """DeepConf's trace score: the lowest group confidence."""
    return float(group_confidences(token_conf, window).min())


def deepconf_threshold(scores: Sequence[float], eta: float) -> float:
    """The (100 - eta)-th percentile of warm-up scores: DeepConf-low (eta = 10) keeps the top 10%,
    DeepConf-high (eta = 90) the top 90%."""
    return float(np.percentile(np.asarray(scores, dtype=float), 100.0 - eta))


class ConfidenceStop:
    """The streaming stop rule as an engine's `on_token` callback: False (stop) at the first full window whose
    mean token confidence falls below `threshold`."""

    __slots__ = ("threshold", "window", "_csum")

    def __init__(self, threshold: float, window: int) -> None:
        self.threshold, self.window = threshold, window
        self._csum = [0.0]

    def __call__(self, event) -> bool:
        top = event.top_logprobs
        csum = self._csum
        csum.append(csum[-1] + (-(sum(top) / len(top)) if len(top) else 0.0))
        count = len(csum) - 1
        if count < self.window:
            return True
        return (csum[count] - csum[count - self.window]) / self.window >= self.threshold
