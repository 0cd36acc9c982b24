"""Prefix strategies."""

from deepprune.tokens import get_tokenizer
from deepprune.truncate import build_prefixes, first_k_reasoning_words, first_k_tokens, reasoning_word_pattern

TEXT = ("We need x. First, compute 2+2 = 4. Wait, that is not needed here! So the sum is 7. "
        "Therefore x = 7.\nHowever we should check it. Finally \\boxed{7}")


def test_first_k_tokens_is_a_token_prefix():
    tok = get_tokenizer("qwen")
    ids = tok.encode(TEXT)
    prefix = first_k_tokens(TEXT, 10, tok)
    assert TEXT.startswith(prefix)
    assert tok.encode(prefix) == ids[:10]
    assert first_k_tokens(TEXT, 10_000, tok) == TEXT


def test_first_k_reasoning_words_takes_segments_in_order():
    pattern = reasoning_word_pattern(["first", "wait", "so", "therefore", "however", "finally"])
    assert first_k_reasoning_words(TEXT, 2, pattern) == "First, compute 2+2 = 4. Wait, that is not needed here!"
    full = first_k_reasoning_words(TEXT, 10, pattern)
    assert full.split(" ")[0] == "First,"
    assert "However we should check it." in full
    assert full.endswith("Finally \\boxed{7}")


def test_reasoning_words_match_whole_words_only():
    pattern = reasoning_word_pattern(["so", "then"])
    assert first_k_reasoning_words("Also, the solution is then 3. Whatsoever.", 5, pattern) == "then 3."
    assert first_k_reasoning_words("no cue words here", 3, pattern) == ""


def test_build_prefixes_names_every_strategy():
    tok = get_tokenizer("qwen")
    out = build_prefixes({("p", "0"): TEXT}, [4, 8], [1], ["wait"], tok)
    assert set(out[("p", "0")]) == {"tokens_4", "tokens_8", "reasoning_words_1"}
    assert out[("p", "0")]["reasoning_words_1"] == "Wait, that is not needed here!"
    assert len(tok.encode(out[("p", "0")]["tokens_4"])) == 4
