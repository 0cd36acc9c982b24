"""Tasks of the report stage."""

from __future__ import annotations

import json
import os
from typing import Any

from prefect import task

from deepprune import paths
from deepprune.io import atomic_open, read_json
from deepprune.judges.evaluate import same_pairs_metrics
from deepprune.pairs import per_problem_same_share, read_pairs
from deepprune.plots import save_figure
from deepprune.report import CorpusResults
from tasks import IO_RETRIES, NO_CACHE


@task(cache_policy=NO_CACHE, **IO_RETRIES)
def load_corpus_results(corpus: str, compare: list[str], fnr: float, threshold: float, judge_lm: bool,
                        online: bool) -> CorpusResults:
    """One corpus's stage outputs, as the report needs them; `judge_lm` and `online` say whether params ran those
    stages on it (params decide, not a file a run under other params left behind). The `compare` judges are scored
    on exactly the pairs the causal-LM judge was evaluated on."""
    optional = lambda path: read_json(path) if os.path.exists(path) else None
    pairs = read_pairs(paths.pairs(corpus))
    with open(paths.judge_scores(corpus), encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle]
    names = list(rows[0]["scores"]) if rows else []
    judge_lm = read_json(paths.metrics("judge_lm", corpus)) if judge_lm else None
    if judge_lm is not None and compare:
        with open(paths.judge_lm_scores(corpus), encoding="utf-8") as handle:
            lm_rows = [json.loads(line) for line in handle]
        by_pair = {(r["problem_id"], r["trace_a"], r["trace_b"]): r["scores"] for r in rows}
        for name, summary in same_pairs_metrics(lm_rows, by_pair, compare, fnr, threshold).items():
            judge_lm.update({f"judge_lm/{name}/{k}": v for k, v in summary.items()})
    return CorpusResults(
        sample=read_json(paths.metrics("sample", corpus)),
        label=read_json(paths.metrics("label", corpus)),
        judge=read_json(paths.metrics("judge", corpus)),
        per_problem_share=list(per_problem_same_share(pairs).values()),
        labels=[r["label"] for r in rows],
        scores={n: [r["scores"][n] for r in rows] for n in names},
        folds=read_json(paths.judge_folds(corpus)),
        prune=read_json(paths.prune_results(corpus)),
        judge_lm=judge_lm,
        sweep=optional(paths.sweep_results(corpus)),
        ablate=optional(paths.ablate_results(corpus)),
        online=({"metrics": read_json(paths.metrics("online", corpus)), "meta": read_json(paths.online_meta(corpus))}
                if online else None))


@task(cache_policy=NO_CACHE, **IO_RETRIES)
def read_transfer(path: str) -> dict[str, Any] | None:
    """The transfer stage's matrix, or None where it has not run (a report of a workspace without it)."""
    return read_json(path) if os.path.exists(path) else None


@task(cache_policy=NO_CACHE, **IO_RETRIES)
def write_figure(fig, path: str) -> str:
    """Save one figure as self-contained HTML."""
    save_figure(fig, path)
    return path


@task(cache_policy=NO_CACHE, **IO_RETRIES)
def write_page(text: str, path: str) -> str:
    """Write the report page atomically."""
    with atomic_open(path) as handle:
        handle.write(text)
    return path
