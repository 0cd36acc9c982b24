"""Calibrated judge scores: P(the two traces reach the same answer), so DeepPrune's tau is a probability a user can
reason about (merge when the judge gives better than even odds at tau = 0.5) and the paper's Table 3 grid
(tau 0.75 / 0.63 / 0.5 / 0.25) spreads out instead of jumping.

Platt scaling (Platt 1999): p = sigmoid(a * logit(s) + b), fitted by maximum likelihood with Platt's smoothed
targets ((N+ + 1) / (N+ + 2) for positives, 1 / (N- + 2) for negatives), which keeps a small or separable sample
from pushing the map to 0 and 1. A monotone map with a > 0 leaves AUROC and TNR at a fixed FNR unchanged; what
changes is where the decision threshold and tau fall.

Where the map is fitted (never on the pairs it is applied to):
- in cross-validation, the map for held-out fold f is fitted on the out-of-fold scores of the other folds
  (`cross_fold_calibrate`): the training folds' pairs only, as sklearn's CalibratedClassifierCV fits on
  cross-validated predictions;
- the judge fitted on every pair (saved for the online and transfer stages) gets the map fitted on every pair's
  out-of-fold score.
NumPy only (sklearn's import costs a stage process seconds)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

EPS = 1e-6


def _logit(scores: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(scores, dtype=float), EPS, 1 - EPS)
    return np.log(p) - np.log1p(-p)


def fit_platt(scores: Sequence[float], labels: Sequence[int], iterations: int = 100) -> tuple[float, float]:
    """(a, b) of p = sigmoid(a * logit(score) + b), by Newton's method on the smoothed log-likelihood. With one
    class present (or no pairs) the identity map (1, 0): there is nothing to calibrate against."""
    z, y = _logit(np.asarray(scores, dtype=float)), np.asarray(labels, dtype=float)
    keep = np.isfinite(z)
    z, y = z[keep], y[keep]
    positives, negatives = float(y.sum()), float(len(y) - y.sum())
    if positives == 0 or negatives == 0:
        return 1.0, 0.0
    t = np.where(y > 0, (positives + 1) / (positives + 2), 1 / (negatives + 2))

    def loss(ab: np.ndarray) -> float:  # the smoothed negative log-likelihood, overflow-free
        u = ab[0] * z + ab[1]
        return float(np.sum(np.logaddexp(0, u) - t * u))

    ab = np.array([1.0, 0.0])
    current = loss(ab)
    for _ in range(iterations):  # Newton's method with backtracking: every step lowers the loss
        p = _sigmoid(ab[0] * z + ab[1])
        w = np.maximum(p * (1 - p), 1e-12)
        grad = np.array([np.dot(p - t, z), np.sum(p - t)])
        hess = np.array([[np.dot(w * z, z), np.sum(w * z)], [np.sum(w * z), np.sum(w)]]) + 1e-9 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        scale = 1.0
        while scale > 1e-8 and loss(ab - scale * step) > current:
            scale /= 2
        ab, previous = ab - scale * step, current
        current = loss(ab)
        if previous - current < 1e-12 * max(1.0, abs(previous)):
            break
    return float(ab[0]), float(ab[1])


def _sigmoid(u: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0, -u))


def apply_platt(scores: Sequence[float], ab: tuple[float, float]) -> np.ndarray:
    a, b = ab
    return _sigmoid(a * _logit(np.asarray(scores, dtype=float)) + b)


def cross_fold_calibrate(raw: np.ndarray, labels: np.ndarray, folds: np.ndarray) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Calibrated out-of-fold scores: fold f's scores through the map fitted on every other fold's (module
    docstring). Returns the scores and each fold's (a, b), in sorted fold order."""
    out = np.full(len(raw), np.nan)
    maps = []
    for fold in sorted(set(np.asarray(folds).tolist())):
        test = folds == fold
        ab = fit_platt(raw[~test], labels[~test])
        out[test] = apply_platt(raw[test], ab)
        maps.append(ab)
    return out, maps


def reliability(labels: Sequence[int], scores: Sequence[float], bins: int = 10) -> dict[str, list[float]]:
    """A reliability diagram's points: for each of `bins` equal-width score bins that holds pairs, the mean score,
    the share of same-answer pairs and the count."""
    s, y = np.asarray(scores, dtype=float), np.asarray(labels, dtype=float)
    keep = np.isfinite(s)
    s, y = s[keep], y[keep]
    which = np.minimum((s * bins).astype(int), bins - 1)
    out: dict[str, list[float]] = {"mean_score": [], "same_share": [], "count": []}
    for b in range(bins):
        inside = which == b
        if inside.any():
            out["mean_score"].append(float(s[inside].mean()))
            out["same_share"].append(float(y[inside].mean()))
            out["count"].append(float(inside.sum()))
    return out


def expected_calibration_error(labels: Sequence[int], scores: Sequence[float], bins: int = 10) -> float:
    """ECE: the count-weighted mean gap between the mean score and the same-answer share over the bins."""
    r = reliability(labels, scores, bins)
    total = sum(r["count"])
    if not total:
        return float("nan")
    return float(sum(c * abs(m - f) for m, f, c in zip(r["mean_score"], r["same_share"], r["count"])) / total)
