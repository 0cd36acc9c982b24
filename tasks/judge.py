"""Tasks of the embed, judge, judge_lm, sweep and ablate stages."""

from __future__ import annotations

from prefect import task

from deepprune import paths
from deepprune.config import JudgeConfig, VariantConfig
from deepprune.judges.embeddings import EmbeddingTable, embed_table, load_table, save_table
from deepprune.judges.encoder import EncoderJudge, SentenceEncoder
from deepprune.judges.evaluate import PairData, VariantResult, cross_validate, pair_data, train_final
from deepprune.pairs import Pair, prefix_texts, read_pairs, read_prefixes
from tasks import IO_RETRIES, NO_CACHE


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
