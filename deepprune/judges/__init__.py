"""Judges: predict from two unfinished traces whether they will reach the same final answer.

A lazy registry: params name a judge `kind` (`judge.variants.<name>.kind`); its module is imported only
when it is used. The embedding judges work on prefix embeddings of aligned pairs:
`fit(emb_a, emb_b, labels, texts_a, texts_b)` then `score(emb_a, emb_b)` -> higher means "same answer".
The cross-encoder reads both prefix texts together (`score(emb_a, emb_b, texts_a, texts_b)`, the embeddings unread).
The causal-LM judge reads the prefix texts themselves: `fit_texts(texts_a, texts_b, labels)` and
`score_texts(texts_a, texts_b)` (params section `judge_lm`, evaluated by `evaluate.evaluate_causal_lm`).
"""

from __future__ import annotations

import importlib
from typing import Any

# kind -> "module:class"
JUDGES: dict[str, str] = {
    "sbert_cosine": "deepprune.judges.encoder:CosineJudge",
    "encoder": "deepprune.judges.encoder:EncoderJudge",
    "cross_encoder": "deepprune.judges.cross_encoder:CrossEncoderJudge",
    "causal_lm": "deepprune.judges.causal_lm:CausalLMJudge",
}


def judge_class(kind: str) -> Any:
    """The judge class registered under kind, or a clear error naming the known kinds."""
    if kind not in JUDGES:
        raise KeyError(f"unknown judge kind {kind!r}; known: {sorted(JUDGES)}")
    module, attr = JUDGES[kind].split(":")
    return getattr(importlib.import_module(module), attr)
