"""Tasks of the judge stage."""

from __future__ import annotations

import json

from prefect import task

from deepprune.config import JudgeConfig, VariantConfig
from deepprune.judges.encoder import EncoderJudge, SentenceEncoder
from deepprune.judges.evaluate import PairData, VariantResult, cross_validate, embed_pairs, train_final
from deepprune.pairs import Pair, read_pairs
from tasks import IO_RETRIES, NO_CACHE


@task(cache_policy=NO_CACHE, **IO_RETRIES)
def load_labels(labels_dir: str, prefix: str) -> tuple[list[Pair], dict[tuple[str, str], str]]:
    """The labelled pairs and each trace's chosen prefix, as the label stage wrote them."""
    pairs = read_pairs(f"{labels_dir}/pairs.jsonl")
    prefixes = {}
    with open(f"{labels_dir}/prefixes.jsonl", encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            row = json.loads(line)
            if prefix not in row["prefixes"]:
                raise KeyError(f"{labels_dir}/prefixes.jsonl:{line_no}: no prefix {prefix!r}; the label stage built "
                               f"{sorted(row['prefixes'])} (add its k to params label.*_k)")
            prefixes[(row["problem_id"], row["trace_id"])] = row["prefixes"][prefix]
    return pairs, prefixes


@task(cache_policy=NO_CACHE, **IO_RETRIES)
def load_encoder(path: str | None, max_length: int) -> SentenceEncoder:
    """The sentence encoder (the packaged MiniLM unless params name another local directory)."""
    return SentenceEncoder(path, max_length)


@task(cache_policy=NO_CACHE)
def encode_pairs(pairs: list[Pair], prefixes: dict[tuple[str, str], str], encoder: SentenceEncoder,
                 batch_size: int) -> PairData:
    """Embed every distinct prefix once; arrays aligned with the pairs."""
    return embed_pairs(pairs, prefixes, encoder, batch_size)


@task(cache_policy=NO_CACHE)
def evaluate_judges(data: PairData, cfg: JudgeConfig, encoder: SentenceEncoder, seed: int) -> dict[str, VariantResult]:
    """Every variant's held-out scores and metrics over the grouped folds."""
    return cross_validate(data, cfg, encoder, seed)


@task(cache_policy=NO_CACHE)
def fit_final_judge(data: PairData, cfg: JudgeConfig, variant: VariantConfig, encoder: SentenceEncoder,
                    seed: int) -> EncoderJudge:
    """A trained variant fitted on every pair of the corpus."""
    return train_final(data, cfg, variant, encoder, seed)
