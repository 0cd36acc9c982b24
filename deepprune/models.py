"""Models built from a config, with no download: a byte-level BPE tokenizer trained on local text and a randomly
initialised Qwen3-architecture causal LM. For throughput checks on machines that cannot fetch weights (the GPU
check scripts) and for fast tests; the weights are random, so their scores and text mean nothing."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

# Qwen-style chat template (system / user / assistant turns, generation prompt), written for our tokenizer.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# Qwen3 shapes by name; "0.5b" is about 0.5B parameters with a 32k vocabulary.
QWEN3_SIZES: dict[str, dict[str, int]] = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16),
    "small": dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=8, num_attention_heads=8,
                  num_key_value_heads=4, head_dim=64),
    "0.5b": dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                 num_key_value_heads=8, head_dim=128),
}


def train_tokenizer(texts: Iterable[str], vocab_size: int = 8192, words: Iterable[str] = ("yes", "no")) -> Any:
    """A byte-level BPE tokenizer trained on texts, with Qwen's chat special tokens and `words` kept whole."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator(list(texts) + [" ".join(words)] * 50, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                        bos_token=None)
    tokenizer.add_tokens([w for w in words if len(tokenizer.encode(w, add_special_tokens=False)) != 1])
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def random_qwen3(tokenizer: Any, size: str = "small", seed: int = 0, dtype: Any = None, device: str = "cpu") -> Any:
    """A randomly initialised Qwen3ForCausalLM sized for the tokenizer."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    if size not in QWEN3_SIZES:
        raise KeyError(f"unknown size {size!r}; known: {sorted(QWEN3_SIZES)}")
    torch.manual_seed(seed)
    config = Qwen3Config(vocab_size=len(tokenizer), max_position_embeddings=8192, tie_word_embeddings=True,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **QWEN3_SIZES[size])
    model = Qwen3ForCausalLM(config)
    return model.to(device=device, dtype=dtype or torch.float32).eval()


def parameter_count(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())
