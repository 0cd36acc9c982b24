"""Offline evaluation of judges on held-out problems: grouped K-fold, one set of embeddings for every variant."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from deepprune.config import JudgeConfig, VariantConfig
from deepprune.judges import judge_class
from deepprune.judges.encoder import EncoderJudge, SentenceEncoder
from deepprune.metrics import judge_metrics, summarize_folds
from deepprune.pairs import Pair


@dataclass
class VariantResult:
    """One judge variant: out-of-fold scores for every pair, metrics per fold and summarised."""

    name: str
    oof_scores: np.ndarray
    per_fold: list[dict[str, float]]
    summary: dict[str, float]
    pooled: dict[str, float]
    train_loss: list[list[float]] = field(default_factory=list)


def _variant_scores(variant: VariantConfig, cfg: JudgeConfig, encoder: SentenceEncoder, seed: int,
                    data: "PairData", train: np.ndarray, test: np.ndarray,
                    frozen_state: dict | None) -> tuple[np.ndarray, list[float]]:
    """Fit one variant on the train rows and score the test rows."""
    judge = judge_class(variant.kind)(encoder, cfg.train, variant.loss, variant.oversample, seed)
    judge.fit(data.emb_a[train], data.emb_b[train], data.labels[train],
              texts_a=[data.texts_a[i] for i in train], texts_b=[data.texts_b[i] for i in train])
    if judge.trainable and cfg.train.finetune_encoder:
        # the encoder itself changed: embed the held-out prefixes again, then restore it for the next fold
        scores = judge.score(encoder.embed([data.texts_a[i] for i in test], cfg.batch_size),
                             encoder.embed([data.texts_b[i] for i in test], cfg.batch_size))
        encoder.model.load_state_dict(frozen_state)
        return scores, judge.train_log
    return judge.score(data.emb_a[test], data.emb_b[test]), judge.train_log


@dataclass
class PairData:
    """Pairs as arrays: prefix texts, their embeddings (computed once), labels and folds."""

    texts_a: list[str]
    texts_b: list[str]
    emb_a: np.ndarray
    emb_b: np.ndarray
    labels: np.ndarray
    folds: np.ndarray


def embed_pairs(pairs: Sequence[Pair], prefixes: Mapping[tuple[str, str], str], encoder: SentenceEncoder,
                batch_size: int) -> PairData:
    """Each distinct prefix encoded once; rows aligned with pairs."""
    texts_a = [prefixes[(p.problem_id, p.trace_a)] for p in pairs]
    texts_b = [prefixes[(p.problem_id, p.trace_b)] for p in pairs]
    emb = encoder.embed(texts_a + texts_b, batch_size)
    return PairData(texts_a, texts_b, emb[: len(pairs)], emb[len(pairs):],
                    np.array([p.label for p in pairs], dtype=np.int64), np.array([p.fold for p in pairs]))


def cross_validate(data: PairData, cfg: JudgeConfig, encoder: SentenceEncoder, seed: int) -> dict[str, VariantResult]:
    """Every variant's out-of-fold scores and metrics, with the same folds and the same pairs."""
    labels, folds = data.labels, data.folds
    if (folds < 0).any():
        raise ValueError("pairs have no fold assigned (run the label stage)")
    frozen_state = ({k: v.clone() for k, v in encoder.model.state_dict().items()}
                    if cfg.train.finetune_encoder else None)
    results: dict[str, VariantResult] = {}
    fold_ids = sorted(set(folds.tolist()))
    for offset, (name, variant) in enumerate(sorted(cfg.variants.items())):
        oof = np.full(len(labels), np.nan)
        per_fold, logs = [], []
        for fold in fold_ids:
            test = np.flatnonzero(folds == fold)
            train = np.flatnonzero(folds != fold)
            scores, log = _variant_scores(variant, cfg, encoder, seed + 1000 * offset + fold, data, train, test,
                                          frozen_state)
            oof[test] = scores
            logs.append(log)
            per_fold.append(judge_metrics(labels[test], scores, cfg.fnr, cfg.threshold))
        results[name] = VariantResult(name, oof, per_fold, summarize_folds(per_fold),
                                      judge_metrics(labels, oof, cfg.fnr, cfg.threshold), logs)
    return results


def train_final(data: PairData, cfg: JudgeConfig, variant: VariantConfig, encoder: SentenceEncoder,
                seed: int) -> EncoderJudge:
    """A trained variant fitted on every pair (the judge that later stages load)."""
    judge = EncoderJudge(encoder, cfg.train, variant.loss, variant.oversample, seed)
    return judge.fit(data.emb_a, data.emb_b, data.labels, texts_a=data.texts_a, texts_b=data.texts_b)


def time_judge(encoder: SentenceEncoder, judge: EncoderJudge, texts: Sequence[str], repeats: int = 3,
               batch_size: int = 32) -> dict[str, float]:
    """Measured cost of judging online: seconds to encode one prefix, and to score one pair from embeddings
    (medians over repeats, batched as a server would batch them)."""
    import time

    texts = list(texts)
    encode, score = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        emb = encoder.embed([f"{t} " for t in texts], batch_size)  # fresh strings: nothing cached
        encode.append((time.perf_counter() - start) / len(texts))
        a, b = np.repeat(emb, len(emb), axis=0), np.tile(emb, (len(emb), 1))
        start = time.perf_counter()
        judge.score(a, b)
        score.append((time.perf_counter() - start) / len(a))
    return {"encode_seconds_per_prefix": float(np.median(encode)), "score_seconds_per_pair": float(np.median(score))}
