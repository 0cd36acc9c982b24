"""Judge metrics. Positive class = same answer (label 1); the negative class is "different answers".

TNR at FNR = f: among thresholds that call at most a share f of the same-answer pairs "different"
(TPR >= 1 - f), the best share of different-answer pairs called different (DESIGN.md section 1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from deepprune.metric_names import COUNTS, accuracy_at_name, tnr_at_fnr_name, tnr_at_name, tpr_at_name


def auroc(labels: Sequence[int], scores: Sequence[float]) -> float:
    """Area under the ROC curve (the trapezoids under roc_points, so tied scores count half); NaN when only one
    class is present."""
    labels = np.asarray(labels)
    if len(np.unique(labels)) < 2:
        return float("nan")
    fpr, tpr, _ = roc_points(labels, scores)
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def roc_points(labels: Sequence[int], scores: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(FPR, TPR, thresholds) of the ROC curve: one point per distinct score, from the highest down (a pair counts
    as positive when its score is >= the threshold), after a first point (0, 0) at threshold +inf. The same points
    as scikit-learn's roc_curve(drop_intermediate=False) (tests/unit/test_losses_metrics.py compares them), written
    here because importing sklearn.metrics costs every stage process about 4 s."""
    labels = np.asarray(labels) == 1
    scores = np.asarray(scores, dtype=float)
    order = np.argsort(-scores, kind="mergesort")
    scores, labels = scores[order], labels[order]
    last = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1]  # the last index of each distinct score
    tps = np.cumsum(labels)[last].astype(float)
    fps = (last + 1) - tps
    tps, fps, thr = np.r_[0.0, tps], np.r_[0.0, fps], np.r_[np.inf, scores[last]]
    fpr = fps / fps[-1] if fps[-1] > 0 else np.full(fps.shape, np.nan)
    tpr = tps / tps[-1] if tps[-1] > 0 else np.full(tps.shape, np.nan)
    return fpr, tpr, thr


def roc_table(labels: Sequence[int], scores: Sequence[float], max_points: int = 200) -> dict[str, list]:
    """The ROC curve as small JSON-ready lists (fpr, tpr, threshold), at most max_points points: every pair with a
    finite score, the curve's two ends always kept, points in between taken evenly along it. A threshold above every
    score (sklearn's infinity) is null; with one class the lists are empty and auroc is null."""
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=float)
    keep = np.isfinite(scores)
    labels, scores = labels[keep], scores[keep]
    if len(np.unique(labels)) < 2:
        return {"fpr": [], "tpr": [], "threshold": [], "auroc": None, "n_pairs": int(len(labels))}
    fpr, tpr, thr = roc_points(labels, scores)
    if len(fpr) > max_points:
        rows = np.unique(np.linspace(0, len(fpr) - 1, max_points).round().astype(int))
        fpr, tpr, thr = fpr[rows], tpr[rows], thr[rows]
    return {"fpr": [round(float(v), 5) for v in fpr], "tpr": [round(float(v), 5) for v in tpr],
            "threshold": [round(float(v), 6) if math.isfinite(v) else None for v in thr],
            "auroc": auroc(labels, scores), "n_pairs": int(len(labels))}


def within_problem_auroc(labels: Sequence[int], scores: Sequence[float], problems: Sequence[object]) -> tuple[float, int]:
    """(mean AUROC among each problem's own pairs, number of problems averaged): only problems whose pairs hold both
    labels count; NaN and 0 when none does (metric_names.AUROC_WITHIN_PROBLEM says why this differs from AUROC)."""
    labels, scores, problems = np.asarray(labels), np.asarray(scores, dtype=float), np.asarray(problems, dtype=object)
    values = []
    for problem in dict.fromkeys(problems.tolist()):
        mine = problems == problem
        if len(np.unique(labels[mine])) == 2:
            values.append(auroc(labels[mine], scores[mine]))
    return (float(np.mean(values)), len(values)) if values else (float("nan"), 0)


def tnr_at_fnr(labels: Sequence[int], scores: Sequence[float], fnr: float = 0.2) -> float:
    """Best TNR among operating points whose FNR is at most fnr; NaN without both classes."""
    labels = np.asarray(labels)
    if len(set(labels.tolist())) < 2:
        return float("nan")
    fpr, tpr, _ = roc_points(labels, scores)
    ok = tpr >= 1.0 - fnr - 1e-12
    return float(1.0 - fpr[ok].min())


def accuracy_at_threshold(labels: Sequence[int], scores: Sequence[float], threshold: float) -> float:
    """Share of pairs labelled right when scores >= threshold are called "same answer"; NaN without pairs."""
    labels = np.asarray(labels)
    if not len(labels):
        return float("nan")
    return float(((np.asarray(scores) >= threshold) == (labels == 1)).mean())


def rates_at_threshold(labels: Sequence[int], scores: Sequence[float], threshold: float) -> tuple[float, float]:
    """(TNR, TPR) when scores >= threshold are called "same answer"."""
    labels = np.asarray(labels)
    pred = np.asarray(scores) >= threshold
    neg, pos = labels == 0, labels == 1
    tnr = float((~pred[neg]).mean()) if neg.any() else float("nan")
    tpr = float(pred[pos].mean()) if pos.any() else float("nan")
    return tnr, tpr


def judge_metrics(labels: Sequence[int], scores: Sequence[float], fnr: float, threshold: float) -> dict[str, float]:
    """The offline judge metrics on one set of pairs (names: deepprune.metric_names.judge_metric_names)."""
    tnr_thr, tpr_thr = rates_at_threshold(labels, scores, threshold)
    return {
        "auroc": auroc(labels, scores),
        tnr_at_fnr_name(fnr): tnr_at_fnr(labels, scores, fnr),
        tnr_at_name(threshold): tnr_thr,
        tpr_at_name(threshold): tpr_thr,
        accuracy_at_name(threshold): accuracy_at_threshold(labels, scores, threshold),
        "n_pairs": float(len(labels)),
        "n_different": float(int((np.asarray(labels) == 0).sum())),
    }


def summarize_folds(per_fold: Sequence[dict[str, float]]) -> dict[str, float]:
    """Mean and spread (sample std, min, max) of each metric over folds, ignoring folds where it is NaN."""
    out: dict[str, float] = {}
    for key in per_fold[0]:
        values = np.array([f[key] for f in per_fold], dtype=float)
        values = values[~np.isnan(values)]
        if key in COUNTS:
            out[key] = float(values.sum())
            continue
        out[key] = float(values.mean()) if len(values) else float("nan")
        out[f"{key}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        out[f"{key}_min"] = float(values.min()) if len(values) else float("nan")
        out[f"{key}_max"] = float(values.max()) if len(values) else float("nan")
        out[f"{key}_folds"] = float(len(values))
    return out


def finite_or_none(value: float) -> float | None:
    """JSON-safe number: NaN and infinities become None."""
    return None if value is None or not math.isfinite(value) else float(value)
