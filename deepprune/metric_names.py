"""The one place judge metric names are built. Every writer (deepprune.metrics) and every reader (sweep.metric,
the ablate stage, the report, the README) takes its names from here, so a name cannot be written one way and
looked up another. Pure string functions: params validation imports this without numpy or sklearn."""

from __future__ import annotations

# Keys summarize_folds adds beside each metric's fold mean.
FOLD_SUFFIXES = ("_std", "_min", "_max", "_folds")
# Pair counts: summed over folds, not averaged.
COUNTS = ("n_pairs", "n_different")


def tnr_at_fnr_name(fnr: float) -> str:
    """'tnr_at_fnr_0.2': the best TNR among operating points whose FNR is at most fnr."""
    return f"tnr_at_fnr_{fnr:g}"


def tnr_at_name(threshold: float) -> str:
    """'tnr_at_0.5': the TNR when scores >= threshold are called 'same answer'."""
    return f"tnr_at_{threshold:g}"


def tpr_at_name(threshold: float) -> str:
    """'tpr_at_0.5': the TPR at the decision threshold."""
    return f"tpr_at_{threshold:g}"


def accuracy_at_name(threshold: float) -> str:
    """'accuracy_at_0.5': the share of pairs labelled right at the decision threshold."""
    return f"accuracy_at_{threshold:g}"


def rate_names(fnr: float, threshold: float) -> tuple[str, ...]:
    """The rate metrics judge_metrics produces for one (fnr, threshold), in order: the names a sweep may rank by."""
    return ("auroc", tnr_at_fnr_name(fnr), tnr_at_name(threshold), tpr_at_name(threshold), accuracy_at_name(threshold))


def judge_metric_names(fnr: float, threshold: float) -> tuple[str, ...]:
    """Every key of one judge_metrics result (one fold, or pooled out-of-fold scores)."""
    return (*rate_names(fnr, threshold), *COUNTS)


def summary_names(fnr: float, threshold: float) -> tuple[str, ...]:
    """Every key of a summarize_folds result: each rate's mean and spread, and the summed counts."""
    return tuple(f"{name}{suffix}" for name in rate_names(fnr, threshold) for suffix in ("", *FOLD_SUFFIXES)) + COUNTS


def ablate_names(fnr: float, threshold: float) -> tuple[str, ...]:
    """What the ablate stage keeps per (truncation, variant): every rate's mean, AUROC's and TNR's fold spread,
    and the pair count."""
    return (*rate_names(fnr, threshold), "auroc_std", f"{tnr_at_fnr_name(fnr)}_std", "n_pairs")


def check_rate_name(where: str, name: str, fnr: float, threshold: float) -> None:
    """Raise a ValueError naming the params key, the bad value and the valid names when `name` is not a rate."""
    valid = rate_names(fnr, threshold)
    if name not in valid:
        raise ValueError(f"{where}: {name!r} is not a metric the judges report with judge.fnr={fnr:g} and "
                         f"judge.threshold={threshold:g}; valid names: {', '.join(valid)}")
