"""The one place judge metric names are built. Every writer (deepprune.metrics) and every reader (sweep.metric,
the ablate stage, the report, the README) takes its names from here, so a name cannot be written one way and
looked up another. Pure string functions: params validation imports this without numpy or sklearn."""

from __future__ import annotations

# Keys summarize_folds adds beside each metric's fold mean.
FOLD_SUFFIXES = ("_std", "_min", "_max", "_folds")
# Pair counts: summed over folds, not averaged.
COUNTS = ("n_pairs", "n_different")


# The mean, over problems whose pairs hold both labels, of the AUROC among that problem's pairs alone: what a judge
# knows about which traces of one problem agree, the only thing DeepPrune's clustering uses. Pooled AUROC also
# rewards knowing which problems are consistent (all pairs high there), which prunes no trace more safely.
AUROC_WITHIN_PROBLEM = "auroc_within_problem"
AUROC_WITHIN_PROBLEM_COUNT = f"{AUROC_WITHIN_PROBLEM}_problems"  # how many problems that mean is over


# On each random-pruning row of the prune stage: the accuracy, in points, of the method whose budget it matches minus
# its own, paired by draw; `_lo` and `_hi` add its 95% interval over the draws, as for every prune figure.
MATCHED_MINUS_RANDOM = "matched_minus_random_pts"


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
    the pair count, and the AUROC within a problem (of the pooled out-of-fold scores)."""
    return (*rate_names(fnr, threshold), "auroc_std", f"{tnr_at_fnr_name(fnr)}_std", "n_pairs", AUROC_WITHIN_PROBLEM)


def check_rate_name(where: str, name: str, fnr: float, threshold: float) -> None:
    """Raise a ValueError naming the params key, the bad value and the valid names when `name` is not a rate."""
    valid = rate_names(fnr, threshold)
    if name not in valid:
        raise ValueError(f"{where}: {name!r} is not a metric the judges report with judge.fnr={fnr:g} and "
                         f"judge.threshold={threshold:g}; valid names: {', '.join(valid)}")


# ---- what a prefix costs online (the label stage, deepprune.truncate.prefix_cost_stats) -------------------------


def prefix_cost_name(prefix: str, kind: str) -> str:
    """'label/prefix/<prefix>/<kind>', kind 'complete_before_end' (share of traces on which the prefix is complete
    before the trace ends), 'median_tokens' (tokens written by then) or 'shared_opening' (the median, over all
    of the corpus's pairs, of the share of the longer prefix that both prefixes open with, character for character:
    what a judge cannot tell apart)."""
    if kind not in ("complete_before_end", "median_tokens", "shared_opening"):
        raise ValueError(f"no prefix cost {kind!r}")
    return f"label/prefix/{prefix}/{kind}"


# ---- timings ---------------------------------------------------------------------------------------------------


def is_timing(key: str) -> bool:
    """A key that holds a measurement of this run on this machine, not a function of the inputs: its last part
    (after the last '/') contains 'seconds' or ends in '_per_second' (`embed/seconds`, `wall_seconds`,
    `sample/tokens_per_second`, `prune/judge_cost/score_seconds_per_pair`). docs/DECISIONS.md states the rule."""
    last = key.rsplit("/", 1)[-1]
    return "seconds" in last or last.endswith("_per_second")


def split_timings(doc: object) -> tuple[object, object]:
    """(doc without its timing keys, the timing keys alone in doc's shape), through nested dicts and lists. The
    second part is None when doc holds no timing key; a list keeps its length (an empty dict where an item has
    none), so a row's timings stay beside its index."""
    if isinstance(doc, dict):
        kept: dict = {}
        timed: dict = {}
        for key, value in doc.items():
            if isinstance(key, str) and is_timing(key):
                timed[key] = value
                continue
            kept[key], inner = split_timings(value)
            if inner is not None:
                timed[key] = inner
        return kept, (timed or None)
    if isinstance(doc, (list, tuple)):
        parts = [split_timings(item) for item in doc]
        timed_items = [t for _, t in parts]
        kept_items = [k for k, _ in parts]
        kept_doc = kept_items if isinstance(doc, list) else tuple(kept_items)
        if all(t is None for t in timed_items):
            return kept_doc, None
        return kept_doc, [t if t is not None else {} for t in timed_items]
    return doc, None
