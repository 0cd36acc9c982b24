"""Tasks of the prune stage."""

from __future__ import annotations

import json
from typing import Any

from prefect import task

from deepprune.answers import AnswerSpec
from deepprune.data.schema import Trace
from deepprune.pairs import read_prefix_tokens
from deepprune.pruning.controller import MethodSpec
from deepprune.pruning.simulate import MethodResult, ReplayProblem, build_problems, pick_taus, simulate
from tasks import IO_RETRIES, NO_CACHE


@task(cache_policy=NO_CACHE, **IO_RETRIES)
def load_problems(problems: dict[str, list[Trace]], scores_path: str, spec: AnswerSpec, judge: str,
                  cosine: str | None, prefixes_path: str | None = None,
                  prefix: str | None = None) -> tuple[list[ReplayProblem], Any]:
    """The recorded problems and the replay engine that serves them, with the judge stage's out-of-fold scores;
    with `prefixes_path`, each trace's cost of `prefix` as the label stage measured it (a prefix cut by the text)."""
    costs = read_prefix_tokens(prefixes_path, prefix) if prefixes_path and prefix else None
    with open(scores_path, encoding="utf-8") as handle:
        return build_problems(problems, (json.loads(line) for line in handle), spec, judge, cosine, costs)


@task(cache_policy=NO_CACHE, **IO_RETRIES)
def measure_judge_cost(model_path: str, prefixes_path: str, prefix: str, encoder_path: str | None,
                       max_length: int, sample: int = 32) -> dict[str, float]:
    """Time the saved judge on a sample of real prefixes: seconds per prefix encoded and per pair scored."""
    from deepprune.judges.encoder import SentenceEncoder, load_encoder_judge
    from deepprune.judges.evaluate import time_judge

    with open(prefixes_path, encoding="utf-8") as handle:
        texts = [json.loads(line)["prefixes"][prefix] for _, line in zip(range(sample), handle)]
    encoder = SentenceEncoder(encoder_path, max_length)
    return time_judge(encoder, load_encoder_judge(model_path, encoder), texts)


@task(cache_policy=NO_CACHE)
def run_simulation(problems: list[ReplayProblem], engine: Any, methods: list[MethodSpec], n: int, k: int,
                   repetitions: int, seed: int, fold_taus: dict[int, float] | None = None) -> dict[str, MethodResult]:
    """Every method through the pruning controller over the replay engine, on the same seeded draws."""
    return simulate(problems, engine, methods, n, k, repetitions, seed, fold_taus=fold_taus)


@task(cache_policy=NO_CACHE)
def tune_taus(problems: list[ReplayProblem], engine: Any, common: dict[str, Any], grid: list[float],
              target_change_pts: float, n: int, k: int, repetitions: int, seed: int) -> dict[str, Any]:
    """DeepPrune's tau per grouped fold, picked on the other folds' problems (deepprune.pruning.simulate.pick_taus)."""
    return pick_taus(problems, engine, common, grid, target_change_pts, n, k, repetitions, seed)
