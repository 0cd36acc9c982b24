"""A cross-encoder judge: the sentence encoder (the packaged all-MiniLM-L6-v2 by default) reads the two prefixes
together, as one input `[CLS] a [SEP] b [SEP]`, and a linear head on its mean-pooled output gives the logit of
P(same final answer). Unlike the embedding judges, attention runs across the two prefixes, so it can compare their
intermediate steps token by token; the price is one transformer pass per pair (not per prefix) and fine-tuning
the whole encoder, which on 2 CPU cores is slow (README, "The judges": pairs/s from benchmarks/bench_judges.py).

The two prefixes go in a canonical order (the smaller string first), so the score does not depend on which trace
is called a and which b, at the cost of one pass. The joined pair is cut to `judge.max_length` tokens, the longer
prefix first (256 by default: two 128-token prefixes of MATH, about 120 MiniLM tokens each, sometimes lose their
last tokens; raise it, up to MiniLM's 512, for longer prefixes). Trained with the same recipes as the embedding judges (focal
loss or cross-entropy, oversampling, judge.train.finetune_lr/finetune_epochs, judge.train.max_pairs_per_problem),
on its own copy of the encoder's weights: the shared encoder that embeds prefixes for the other judges is never
changed.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from deepprune.config import TrainConfig
from deepprune.judges.encoder import GLOBAL_RNG_FITS, SentenceEncoder
from deepprune.judges.losses import recipe_loss
from deepprune.pairs import oversample_minority
from deepprune.progress import track

KIND = "cross_encoder"


def canonical(texts_a: Sequence[str], texts_b: Sequence[str]) -> tuple[list[str], list[str]]:
    """Each pair's two texts, the smaller string first: (a, b) and (b, a) become the same input."""
    firsts, seconds = [], []
    for a, b in zip(texts_a, texts_b):
        first, second = (a, b) if a <= b else (b, a)
        firsts.append(first)
        seconds.append(second)
    return firsts, seconds


class CrossEncoderJudge:
    """Fine-tunes its own copy of the sentence encoder on the concatenated pair, with a linear head."""

    trainable = True
    reads_embeddings = False  # scored from the texts alone (evaluate.time_judge times no encoding for it)

    def __init__(self, encoder: SentenceEncoder, cfg: TrainConfig, loss: str, oversample: bool, seed: int,
                 features: Sequence[str] = ()) -> None:
        if features:
            raise ValueError(f"the cross-encoder reads the texts whole; features {list(features)} are for kind encoder")
        self.encoder, self.cfg, self.loss, self.oversample, self.seed = encoder, cfg, loss, oversample, seed
        self.tokenizer, self.max_length = encoder.tokenizer, encoder.max_length
        self.model = copy.deepcopy(encoder.model)
        self.model.eval()
        generator = torch.Generator().manual_seed(seed)
        self.head = torch.nn.utils.skip_init(nn.Linear, encoder.dim, 1)  # no draw from torch's global generator
        nn.init.normal_(self.head.weight, std=0.02, generator=generator)
        nn.init.zeros_(self.head.bias)
        self.train_log: list[float] = []
        self.calibration: tuple[float, float] | None = None  # Platt (a, b) applied by score

    def _logits(self, firsts: Sequence[str], seconds: Sequence[str]) -> torch.Tensor:
        batch = self.tokenizer(list(firsts), list(seconds), padding=True, truncation="longest_first",
                               max_length=self.max_length, return_tensors="pt")
        hidden = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return self.head(pooled).squeeze(-1)

    def fit(self, emb_a: np.ndarray, emb_b: np.ndarray, labels: np.ndarray,
            texts_a: Sequence[str] | None = None, texts_b: Sequence[str] | None = None) -> "CrossEncoderJudge":
        """Fine-tune encoder and head on the pairs' texts (the embeddings are not read)."""
        if texts_a is None or texts_b is None:
            raise ValueError("the cross-encoder trains on the prefix texts")
        with GLOBAL_RNG_FITS:  # the encoder's dropout draws from torch's global generator
            self._fit(list(texts_a), list(texts_b), np.asarray(labels))
        return self

    def _fit(self, texts_a: list[str], texts_b: list[str], labels: np.ndarray) -> None:
        firsts, seconds = canonical(texts_a, texts_b)
        rng = np.random.default_rng(self.seed)
        torch.manual_seed(self.seed)
        opt = torch.optim.AdamW([{"params": self.head.parameters(), "lr": self.cfg.lr},
                                 {"params": self.model.parameters(), "lr": self.cfg.finetune_lr}],
                                weight_decay=self.cfg.weight_decay)
        y = torch.from_numpy(labels.astype(np.float32))
        batch_size = min(self.cfg.batch_size, 16)  # the encoder's activations dominate memory and time
        orders = [oversample_minority(labels, self.cfg.oversample_ratio, rng) if self.oversample
                  else np.arange(len(labels)) for _ in range(self.cfg.finetune_epochs)]
        self.model.train()
        with track("cross-encoder training", sum(len(o) for o in orders), "pairs") as progress:
            for order in orders:
                order = order[rng.permutation(len(order))]
                epoch_loss = 0.0
                for start in range(0, len(order), batch_size):
                    batch = order[start:start + batch_size]
                    logits = self._logits([firsts[i] for i in batch], [seconds[i] for i in batch])
                    loss = recipe_loss(logits, y[torch.from_numpy(batch)], self.loss, self.cfg)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    epoch_loss += loss.item() * len(batch)
                    progress.advance(len(batch))
                self.train_log.append(epoch_loss / max(1, len(order)))
        self.model.eval()

    @torch.inference_mode()
    def score(self, emb_a: np.ndarray, emb_b: np.ndarray, texts_a: Sequence[str] | None = None,
              texts_b: Sequence[str] | None = None, batch_size: int = 32) -> np.ndarray:
        """P(same final answer) for aligned prefix pairs, read from their texts (each distinct pair once)."""
        if texts_a is None or texts_b is None:
            raise ValueError("the cross-encoder scores the prefix texts; none were given")
        firsts, seconds = canonical(texts_a, texts_b)
        unique = sorted(set(zip(firsts, seconds)), key=lambda p: (-len(p[0]) - len(p[1]), p))  # less padding
        logits: dict[tuple[str, str], float] = {}
        with track("cross-encoder scoring", len(unique), "pairs") as progress:
            for start in range(0, len(unique), batch_size):
                chunk = unique[start:start + batch_size]
                values = self._logits([p[0] for p in chunk], [p[1] for p in chunk]).double().numpy()
                logits.update(zip(chunk, values))
                progress.advance(len(chunk))
        raw = np.array([logits[p] for p in zip(firsts, seconds)], dtype=np.float64)
        scores = 1.0 / (1.0 + np.exp(-raw))
        if self.calibration is None:
            return scores
        from deepprune.judges.calibration import apply_platt

        return apply_platt(scores, self.calibration)

    def save(self, path: str | os.PathLike, metadata: dict[str, str | float | int | bool]) -> None:
        """Head and fine-tuned encoder weights as safetensors, with the config as metadata."""
        from safetensors.torch import save

        from deepprune.io import atomic_open

        tensors = {f"head.{k}": v.contiguous() for k, v in self.head.state_dict().items()}
        tensors.update({f"cross.{k}": v.contiguous() for k, v in self.model.state_dict().items()})
        meta = {"config": json.dumps({**metadata, "kind": KIND, "loss": self.loss, "oversample": self.oversample,
                                      "seed": self.seed, "encoder_path": self.encoder.source, "dim": self.encoder.dim,
                                      "train": self.cfg.model_dump(), "calibration": self.calibration},
                                     sort_keys=True)}
        with atomic_open(path, "wb") as handle:
            handle.write(save(tensors, metadata=meta))

    @classmethod
    def from_saved(cls, meta: dict, tensors: dict[str, torch.Tensor], encoder: SentenceEncoder) -> "CrossEncoderJudge":
        judge = cls(encoder, TrainConfig.model_validate(meta["train"]), meta["loss"], meta["oversample"],
                    int(meta["seed"]))
        judge.model.load_state_dict({k[len("cross."):]: v for k, v in tensors.items() if k.startswith("cross.")})
        judge.head.load_state_dict({k[len("head."):]: v for k, v in tensors.items() if k.startswith("head.")})
        calibration = meta.get("calibration")
        judge.calibration = None if calibration is None else (float(calibration[0]), float(calibration[1]))
        return judge
