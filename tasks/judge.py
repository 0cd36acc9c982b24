"""Tasks of the embed, judge, judge_lm, sweep, ablate and transfer stages, and the cells of the ablate and transfer
stages that run where params `cluster` puts them (tasks.cluster.run_cell)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from prefect import task

from deepprune import paths
from deepprune.config import JudgeConfig, Params, VariantConfig
from deepprune.judges.embeddings import EmbeddingTable, embed_table, load_table, save_table
from deepprune.judges.encoder import EncoderJudge, SentenceEncoder, has_finetuned_encoder, load_encoder_judge
from deepprune.judges.evaluate import (AblationRow, PairData, VariantResult, ablation_cell, cross_validate, pair_data,
                                       train_final)
from deepprune.pairs import Pair, prefix_texts, read_pairs, read_prefixes
from deepprune.truncate import prefix_name
from tasks import IO_RETRIES, NO_CACHE
from tasks.cluster import Placement, read_once


@task(cache_policy=NO_CACHE, **IO_RETRIES)
def load_labels(corpus: str) -> tuple[list[Pair], dict[tuple[str, str], dict[str, str]]]:
    """The labelled pairs and every prefix of every trace, as the label stage wrote them."""
    return read_pairs(paths.pairs(corpus)), read_prefixes(paths.prefixes(corpus))


@task(cache_policy=NO_CACHE, **IO_RETRIES)
def load_encoder(path: str | None, max_length: int) -> SentenceEncoder:
    """The sentence encoder (the packaged MiniLM unless params name another local directory)."""
    return SentenceEncoder(path, max_length)


@task(cache_policy=NO_CACHE)
def encode_prefixes(prefixes: dict[tuple[str, str], dict[str, str]], encoder: SentenceEncoder,
                    batch_size: int) -> EmbeddingTable:
    """Every prefix of every trace, each distinct text encoded once."""
    return embed_table(prefixes, encoder, batch_size)


@task(cache_policy=NO_CACHE, **IO_RETRIES)
def save_embeddings(path: str, table: EmbeddingTable) -> None:
    save_table(path, table)


@task(cache_policy=NO_CACHE, **IO_RETRIES)
def load_embeddings(path: str) -> EmbeddingTable:
    return load_table(path)


@task(cache_policy=NO_CACHE)
def make_pair_data(pairs: list[Pair], prefixes: dict[tuple[str, str], dict[str, str]], table: EmbeddingTable,
                   prefix: str, labels_path: str) -> PairData:
    """Arrays aligned with the pairs for one prefix (texts and their precomputed embeddings)."""
    return pair_data(pairs, prefix_texts(prefixes, prefix, labels_path), table.lookup(prefix))


@task(cache_policy=NO_CACHE)
def evaluate_judges(data: PairData, cfg: JudgeConfig, encoder: SentenceEncoder, seed: int) -> dict[str, VariantResult]:
    """Every variant's held-out scores and metrics over the grouped folds."""
    return cross_validate(data, cfg, encoder, seed)


@task(cache_policy=NO_CACHE)
def fit_final_judge(data: PairData, cfg: JudgeConfig, variant: VariantConfig, encoder: SentenceEncoder,
                    seed: int, raw_oof) -> EncoderJudge:  # type: ignore[no-untyped-def]
    """A trained variant fitted on every pair of the corpus, calibrated on the out-of-fold scores."""
    return train_final(data, cfg, variant, encoder, seed, raw_oof)


@dataclass(frozen=True)
class Labelled:
    """A corpus as the label and embed stages left it: its pairs, every prefix of every trace, their embeddings."""

    pairs: list[Pair]
    prefixes: dict[tuple[str, str], dict[str, str]]
    table: EmbeddingTable
    labels_path: str  # named in errors about a missing prefix

    def data(self, prefix: str) -> PairData:
        """The pairs' arrays at one prefix (texts and their embeddings)."""
        return pair_data(self.pairs, prefix_texts(self.prefixes, prefix, self.labels_path), self.table.lookup(prefix))


def labelled(placement: Placement, corpus: str) -> Labelled:
    """A corpus's labelled pairs, prefixes and embeddings, read once per process from the project's paths."""
    files = [paths.pairs(corpus), paths.prefixes(corpus), paths.embeddings(corpus)]

    def read() -> Labelled:
        return Labelled(read_pairs(placement.path(files[0])), read_prefixes(placement.path(files[1])),
                        load_table(placement.path(files[2])), files[1])

    return read_once(placement, ["labelled", corpus], files, read)


def shared_encoder(placement: Placement, path: str | None, max_length: int) -> SentenceEncoder:
    """The sentence encoder, loaded once per process (cells only read it: a judge that fine-tuned its own encoder
    loads a copy, tasks.judge.transfer_cell)."""
    return read_once(placement, ["encoder", path, max_length], [], lambda: SentenceEncoder(path, max_length))


def ablation_truncation(placement: Placement, params: Params, corpus: str, prefix: str) -> list[AblationRow]:
    """One cell of the ablate stage: params `ablate.variants` cross-validated on the corpus's pairs cut at `prefix`."""
    data = labelled(placement, corpus).data(prefix)
    encoder = shared_encoder(placement, params.judge.encoder_path, params.judge.max_length)
    return ablation_cell(data, params.judge, list(params.ablate.variants), encoder, params.seed, prefix)


def transfer_pair(placement: Placement, params: Params, train: str, test: str,
                  variants: Sequence[str]) -> dict[str, np.ndarray]:
    """One cell of the transfer stage: every pair of `test`, cut at its own truncation, scored by each of `variants`
    as the judge stage fitted it on all of `train`."""
    cfg = params.judge
    truncation = params.truncation(test)
    data = labelled(placement, test).data(prefix_name(truncation.strategy, truncation.k))
    scores = {}
    for variant in variants:
        path = placement.path(paths.judge_model(train, variant))
        if has_finetuned_encoder(path):  # its own encoder weights: encode the texts with them, on a copy
            own = load_encoder_judge(path, SentenceEncoder(cfg.encoder_path, cfg.max_length))
            scores[variant] = own.score(own.encoder.embed(data.texts_a, cfg.batch_size),
                                        own.encoder.embed(data.texts_b, cfg.batch_size))
        else:
            judge = load_encoder_judge(path, shared_encoder(placement, cfg.encoder_path, cfg.max_length))
            scores[variant] = judge.score(data.emb_a, data.emb_b)
    return scores
