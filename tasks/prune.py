"""Tasks of the prune stage."""

from __future__ import annotations

import json

from prefect import task

from deepprune.answers import AnswerSpec
from deepprune.data.schema import Trace
from deepprune.pruning.data import build_problems
from deepprune.pruning.methods import Problem
from deepprune.pruning.simulate import MethodResult, MethodSpec, simulate
from tasks import IO_RETRIES, NO_CACHE


@task(cache_policy=NO_CACHE, **IO_RETRIES)
def load_problems(problems: dict[str, list[Trace]], scores_path: str, spec: AnswerSpec, judge: str,
                  cosine: str | None) -> list[Problem]:
    """The simulator's problems: traces, answer classes and the judge stage's out-of-fold scores."""
    with open(scores_path, encoding="utf-8") as handle:
        return build_problems(problems, (json.loads(line) for line in handle), spec, judge, cosine)


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
def run_simulation(problems: list[Problem], methods: list[MethodSpec], n: int, k: int, repetitions: int,
                   seed: int) -> dict[str, MethodResult]:
    """Every method on the same seeded draws."""
    return simulate(problems, methods, n, k, repetitions, seed)
