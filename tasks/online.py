"""Tasks of the online stage: the judge that drives DeepPrune online, and the side-by-side run itself."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from prefect import task

from deepprune import paths
from deepprune.answers import AnswerSpec
from deepprune.config import Params
from deepprune.judges.encoder import CosineJudge, SentenceEncoder, load_encoder_judge
from deepprune.pruning.controller import Similarity
from deepprune.pruning.online import Comparison, OnlineProblem, compare_methods, judge_similarity, online_methods
from tasks import IO_RETRIES, NO_CACHE


def judge_model_path(params: Params) -> str | None:
    """The saved model the online judge loads (None for sbert_cosine, which has nothing to load)."""
    cfg = params.online.judge
    if params.judge.variants[cfg.variant].kind == "sbert_cosine":
        return None
    return paths.judge_model(cfg.corpus, cfg.variant)


@task(cache_policy=NO_CACHE)
def load_online_judge(params: Params) -> Similarity:
    """DeepPrune's similarity: the saved encoder judge of online.judge (each prefix encoded once, all pairs scored)."""
    encoder = SentenceEncoder(params.judge.encoder_path, params.judge.max_length)
    path = judge_model_path(params)
    if path is None:
        judge: Any = CosineJudge(encoder, params.judge.train, "ce", False, params.seed)
    else:
        if not os.path.exists(path):
            raise FileNotFoundError(f"online.judge: {path} does not exist; run the judge stage of corpus "
                                    f"{params.online.judge.corpus!r} first (dvc repro judge@{params.online.judge.corpus})")
        judge = load_encoder_judge(path, encoder)
    return judge_similarity(judge, encoder, params.judge.batch_size)


@task(cache_policy=NO_CACHE, **IO_RETRIES)
def run_online(engine: Any, problems: Sequence[OnlineProblem], n: int, max_tokens: int, params: Params,
               similarity: Similarity, spec: AnswerSpec, shard_dir: str) -> Comparison:
    """cons@N, DeepPrune online per tau and DeepConf online through the pruning controller, side by side. A
    transient server error is retried; (method, problem) outcomes already finished are read back from their
    shards, not generated again."""
    cfg = params.online
    dc = cfg.deepconf
    methods = online_methods(cfg.taus, cfg.r, cfg.q, cfg.max_clusters, cfg.vote, dc.warmup, dc.eta, dc.window,
                             dc.consensus)
    return compare_methods(engine, problems, n, max_tokens, cfg.k, similarity, methods, spec, seed=params.seed,
                           shard_dir=shard_dir)
