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


def _labelled_files(corpus: str) -> list[str]:
    return [paths.pairs(corpus), paths.prefixes(corpus), paths.embeddings(corpus)]


def labelled(placement: Placement, corpus: str) -> Labelled:
    """A corpus's labelled pairs, prefixes and embeddings, read once per process from the project's paths."""
    files = _labelled_files(corpus)

    def read() -> Labelled:
        return Labelled(read_pairs(placement.path(files[0])), read_prefixes(placement.path(files[1])),
                        load_table(placement.path(files[2])), files[1])

    return read_once(placement, ["labelled", corpus], files, read)


def corpus_data(placement: Placement, corpus: str, prefix: str) -> PairData:
    """A corpus's pairs at one prefix, built once per process (every cell of that prefix shares the arrays)."""
    return read_once(placement, ["pair_data", corpus, prefix], _labelled_files(corpus),
                     lambda: labelled(placement, corpus).data(prefix))


def cell_encoder(placement: Placement, cfg: JudgeConfig) -> SentenceEncoder:
    """The sentence encoder a cell uses: the one of this process, loaded once, when the cell only reads it; a fresh
    one of its own when the cell's recipe fine-tunes it (judge.train.finetune_encoder), so that concurrent cells
    never train one encoder under each other."""
    if cfg.train.finetune_encoder:
        return SentenceEncoder(cfg.encoder_path, cfg.max_length)
    return read_once(placement, ["encoder", cfg.encoder_path, cfg.max_length], [],
                     lambda: SentenceEncoder(cfg.encoder_path, cfg.max_length))


def ablation_truncation(placement: Placement, params: Params, corpus: str, prefix: str) -> list[AblationRow]:
    """One cell of the ablate stage: params `ablate.variants` cross-validated on the corpus's pairs cut at `prefix`."""
    return ablation_cell(corpus_data(placement, corpus, prefix), params.judge, list(params.ablate.variants),
                         cell_encoder(placement, params.judge), params.seed, prefix)


def transfer_pair(placement: Placement, params: Params, train: str, test: str, prefix: str,
                  variants: Sequence[str]) -> dict[str, np.ndarray]:
    """One cell of the transfer stage: every pair of `test`, cut at its own truncation (`prefix`), scored by each of
    `variants` as the judge stage fitted it on all of `train`."""
    cfg = params.judge
    data = corpus_data(placement, test, prefix)
    scores = {}
    for variant in variants:
        path = placement.path(paths.judge_model(train, variant))
        if has_finetuned_encoder(path):  # its own encoder weights: encode the texts with them, on a copy
            own = load_encoder_judge(path, SentenceEncoder(cfg.encoder_path, cfg.max_length))
            scores[variant] = own.score(own.encoder.embed(data.texts_a, cfg.batch_size),
                                        own.encoder.embed(data.texts_b, cfg.batch_size), data.texts_a, data.texts_b)
        else:
            judge = load_encoder_judge(path, cell_encoder(placement, cfg))
            scores[variant] = judge.score(data.emb_a, data.emb_b, data.texts_a, data.texts_b)
    return scores
