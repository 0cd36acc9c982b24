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


def test_a_prefix_costs_the_tokens_written_until_it_is_complete():
    """What a judge's prefix costs a trace online: a first-k-tokens prefix k tokens; a first-k-reasoning-words
    prefix the tokens up to the end of its k-th segment's sentence; None when the trace ends first."""
    from deepprune.tokens import get_tokenizer
    from deepprune.truncate import cut_prefixes, reasoning_words_end

    pattern = reasoning_word_pattern(["wait", "so"])
    text = "We add the two numbers. Wait, the second is 7. So the sum is 12. Done, the answer is 12."
    assert reasoning_words_end(text, 1, pattern) == text.index(" So")  # just after "... is 7."
    assert reasoning_words_end(text, 2, pattern) == text.index(" Done")
    assert reasoning_words_end(text, 3, pattern) is None  # two reasoning words only
    tok = get_tokenizer("qwen")
    total = len(tok.encode(text))
    texts, costs = cut_prefixes({("p", "0"): text}, [4, total + 5], [1, 2, 3], ["wait", "so"], tok)
    cost = costs[("p", "0")]
    assert cost["tokens_4"] == 4 and cost[f"tokens_{total + 5}"] is None  # the trace ends before that prefix
    assert cost["reasoning_words_1"] == len(tok.encode(text[:reasoning_words_end(text, 1, pattern)]))
    assert cost["reasoning_words_1"] < cost["reasoning_words_2"] < total and cost["reasoning_words_3"] is None
    assert texts[("p", "0")]["reasoning_words_2"] == "Wait, the second is 7. So the sum is 12."
    # a trace whose k-th segment closes it has finished by the time the prefix is complete
    assert cut_prefixes({("p", "1"): "Wait, it is 3."}, [], [1], ["wait"], tok)[1][("p", "1")] == \
        {"reasoning_words_1": None}


def test_prefix_cost_stats_say_how_often_a_prefix_is_complete_before_its_trace_ends():
    from deepprune.truncate import prefix_cost_stats

    costs = {("p", "0"): {"tokens_8": 8, "reasoning_words_2": None}, ("p", "1"): {"tokens_8": 8, "reasoning_words_2": 30},
             ("p", "2"): {"tokens_8": None, "reasoning_words_2": 50}, ("p", "3"): {"tokens_8": 8, "reasoning_words_2": None}}
    stats = prefix_cost_stats(costs)
    assert stats["label/prefix/tokens_8/complete_before_end"] == 0.75 and stats["label/prefix/tokens_8/median_tokens"] == 8
    assert stats["label/prefix/reasoning_words_2/complete_before_end"] == 0.5
    assert stats["label/prefix/reasoning_words_2/median_tokens"] == 40
    none = prefix_cost_stats({("p", "0"): {"reasoning_words_9": None}})
    assert none == {"label/prefix/reasoning_words_9/complete_before_end": 0.0,
                    "label/prefix/reasoning_words_9/median_tokens": None}


def test_shared_opening_is_the_median_share_of_the_longer_prefix_a_pair_opens_with():
    from deepprune.truncate import shared_opening_stats

    prefixes = {("p", "0"): {"tokens_4": "Let x be 3", "words_1": "so 3"},
                ("p", "1"): {"tokens_4": "Let x be 4", "words_1": None},
                ("p", "2"): {"tokens_4": "We have 5", "words_1": "so 5"},
                ("q", "0"): {"tokens_4": "same", "words_1": "same"},
                ("q", "1"): {"tokens_4": "same", "words_1": "same"}}
    pairs = [("p", "0", "1"), ("p", "0", "2"), ("p", "1", "2"), ("q", "0", "1")]
    stats = shared_opening_stats(prefixes, pairs)
    # tokens_4: 9/10, 0/10, 0/10, 4/4 -> median 0.45; words_1 (missing on trace 1): 3/4, 1.0 -> median 0.875
    assert stats == {"label/prefix/tokens_4/shared_opening": 0.45, "label/prefix/words_1/shared_opening": 0.875}
