"""Tasks of the judge_lm stage (the causal-LM judge) and of causal-LM sweep points."""

from __future__ import annotations

from typing import Any

import numpy as np
from prefect import task

from deepprune.config import JudgeLMConfig
from deepprune.judges.causal_lm import load_causal_lm
from deepprune.judges.evaluate import LMEvaluation, evaluate_causal_lm
from tasks import IO_RETRIES, NO_CACHE


@task(cache_policy=NO_CACHE, **IO_RETRIES)
def load_lm(path: str | None, dtype: str, device: str) -> tuple[Any, Any]:
    """The judge's causal LM and tokenizer (the packaged SmolLM2-135M-Instruct unless params name another)."""
    return load_causal_lm(path, dtype, device)


@task(cache_policy=NO_CACHE)
def evaluate_lm_judge(texts_a: list[str], texts_b: list[str], labels: np.ndarray, folds: np.ndarray,
                      cfg: JudgeLMConfig, seed: int, fnr: float, threshold: float, zero_shot: bool,
                      checkpoint_root: str | None, model: Any, tokenizer: Any,
                      keep_judges: bool = False) -> LMEvaluation:
    """Fine-tuned and zero-shot causal-LM judge on the same held-out pairs."""
    return evaluate_causal_lm(texts_a, texts_b, labels, folds, cfg, seed, fnr, threshold, zero_shot=zero_shot, checkpoint_root=checkpoint_root, model=model,
                              tokenizer=tokenizer, keep_judges=keep_judges)
