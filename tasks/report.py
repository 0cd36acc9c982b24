"""Tasks of the report stage."""

from __future__ import annotations

import json

from prefect import task

from deepprune.io import atomic_open, read_json
from deepprune.pairs import per_problem_same_share, read_pairs
from deepprune.plots import save_figure
from deepprune.report import CorpusResults
from tasks import IO_RETRIES, NO_CACHE


@task(cache_policy=NO_CACHE, **IO_RETRIES)
def load_corpus_results(corpus: str, labels_dir: str, judge_dir: str, prune_dir: str) -> CorpusResults:
    """One corpus's stage outputs, as the report needs them."""
    pairs = read_pairs(f"{labels_dir}/pairs.jsonl")
    with open(f"{judge_dir}/scores.jsonl", encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle]
    names = list(rows[0]["scores"]) if rows else []
    return CorpusResults(
        sample=read_json(f"reports/metrics/sample_{corpus}.json"),
        label=read_json(f"reports/metrics/label_{corpus}.json"),
        judge=read_json(f"reports/metrics/judge_{corpus}.json"),
        per_problem_share=list(per_problem_same_share(pairs).values()),
        labels=[r["label"] for r in rows],
        scores={n: [r["scores"][n] for r in rows] for n in names},
        folds=read_json(f"{judge_dir}/folds.json"),
        prune=read_json(f"{prune_dir}/results.json"))


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
