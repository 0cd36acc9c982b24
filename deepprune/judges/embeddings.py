"""Prefix embeddings computed once per corpus (the `embed` stage) and shared by every judge, sweep point and
truncation ablation that works on embeddings: encoding is the expensive part (about 35 ms a prefix on 2 cores),
the heads train in seconds."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from deepprune.judges.encoder import SentenceEncoder
from deepprune.pairs import Pair


@dataclass
class EmbeddingTable:
    """One row per trace, one matrix per prefix name, rows aligned with keys."""

    keys: list[tuple[str, str]]
    matrices: dict[str, np.ndarray]
    encoder_path: str = ""

    def lookup(self, name: str) -> dict[tuple[str, str], np.ndarray]:
        if name not in self.matrices:
            raise KeyError(f"no embeddings for prefix {name!r}; the embed stage computed {sorted(self.matrices)}")
        matrix = self.matrices[name]
        return {key: matrix[i] for i, key in enumerate(self.keys)}


def embed_table(prefixes: Mapping[tuple[str, str], Mapping[str, str]], encoder: SentenceEncoder,
                batch_size: int = 32, names: Sequence[str] | None = None) -> EmbeddingTable:
    """Every named prefix of every trace, each distinct text encoded once (prefixes of one trace often
    coincide: a short trace's 64- and 128-token prefixes are the whole trace)."""
    keys = sorted(prefixes)
    names = sorted(names or {n for row in prefixes.values() for n in row})
    texts = [prefixes[key][name] for name in names for key in keys]
    emb = encoder.embed(texts, batch_size)
    matrices = {name: emb[i * len(keys):(i + 1) * len(keys)] for i, name in enumerate(names)}
    return EmbeddingTable(keys, matrices, encoder.source)


def save_table(path: str | os.PathLike, table: EmbeddingTable) -> None:
    """One .npz, written atomically."""
    from deepprune.io import atomic_open

    arrays = {f"prefix::{name}": m for name, m in table.matrices.items()}
    arrays["keys"] = np.array([json.dumps(k) for k in table.keys])
    arrays["encoder_path"] = np.array(table.encoder_path)
    with atomic_open(path, "wb") as handle:
        np.savez(handle, **arrays)


def load_table(path: str | os.PathLike) -> EmbeddingTable:
    with np.load(path) as data:
        keys = [tuple(json.loads(k)) for k in data["keys"].tolist()]
        matrices = {k[len("prefix::"):]: data[k] for k in data.files if k.startswith("prefix::")}
        return EmbeddingTable(keys, matrices, str(data["encoder_path"]))  # type: ignore[arg-type]


def pair_arrays(pairs: Sequence[Pair], vectors: Mapping[tuple[str, str], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Row-aligned embeddings of each pair's two traces."""
    dim = len(next(iter(vectors.values()))) if vectors else 0
    emb_a = np.stack([vectors[(p.problem_id, p.trace_a)] for p in pairs]) if pairs else np.zeros((0, dim))
    emb_b = np.stack([vectors[(p.problem_id, p.trace_b)] for p in pairs]) if pairs else np.zeros((0, dim))
    return emb_a.astype(np.float32), emb_b.astype(np.float32)
