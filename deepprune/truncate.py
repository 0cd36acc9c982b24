"""Prefix strategies: what a judge may see of an unfinished trace (DESIGN.md section 1)."""

from __future__ import annotations

import os
import re
import statistics
from collections.abc import Iterable, Mapping, Sequence

from deepprune.metric_names import prefix_cost_name
from deepprune.progress import track
from deepprune.tokens import Tokenizer

_SENTENCE_END = re.compile(r"[.!?\n]")


def first_k_tokens(text: str, k: int, tokenizer: Tokenizer, ids: Sequence[int] | None = None) -> str:
    """The text of the first k tokens of a trace (the whole trace when it is shorter); ids: text's encoding."""
    ids = list(ids) if ids is not None else tokenizer.encode(text)
    if len(ids) <= k:
        return text
    return tokenizer.decode(ids[:k])


def reasoning_word_pattern(words: Sequence[str]) -> re.Pattern[str]:
    """Whole-word, case-insensitive matcher for the reasoning words."""
    alternatives = "|".join(sorted((re.escape(w) for w in words), key=len, reverse=True))
    return re.compile(rf"\b(?:{alternatives})\b", re.IGNORECASE)


def _reasoning_segments(text: str, k: int, pattern: re.Pattern[str]) -> list[tuple[int, int]]:
    """(start, end) of the segments starting at the first k reasoning words, each up to its sentence end; a
    segment that starts inside an earlier one is not counted again."""
    segments: list[tuple[int, int]] = []
    covered_until = -1
    for match in pattern.finditer(text):
        if len(segments) >= k:
            break
        start = match.start()
        end_match = _SENTENCE_END.search(text, match.end())
        end = end_match.end() if end_match else len(text)
        if start < covered_until:
            continue
        segments.append((start, end))
        covered_until = end
    return segments


def first_k_reasoning_words(text: str, k: int, pattern: re.Pattern[str]) -> str:
    """The segments starting at the first k reasoning words, each up to its sentence end, joined in order.

    A segment that starts inside an earlier segment is not repeated; a trace with no reasoning word gives "".
    """
    return " ".join(text[start:end].strip() for start, end in _reasoning_segments(text, k, pattern))


def reasoning_words_end(text: str, k: int, pattern: re.Pattern[str]) -> int | None:
    """Where the first-k-reasoning-words prefix is complete: the character after its k-th segment, which a trace
    being generated must reach before the judge can read that prefix; None when the trace has fewer than k."""
    segments = _reasoning_segments(text, k, pattern)
    return segments[-1][1] if len(segments) == k else None


def prefix_name(strategy: str, k: int) -> str:
    """Column name of a prefix: 'tokens_128', 'reasoning_words_25'."""
    return f"{strategy}_{k}"


def parse_prefix_name(name: str) -> tuple[str, int]:
    """(strategy, k) of a prefix name such as 'tokens_128' or 'reasoning_words_25'."""
    strategy, _, k = name.rpartition("_")
    if strategy not in ("tokens", "reasoning_words") or not k.isdigit():
        raise ValueError(f"not a prefix name: {name!r}")
    return strategy, int(k)


def build_prefixes(texts: dict[tuple[str, str], str], tokens_k: Sequence[int], reasoning_words_k: Sequence[int],
                   reasoning_words: Sequence[str], tokenizer: Tokenizer) -> dict[tuple[str, str], dict[str, str]]:
    """Every prefix of every trace, keyed by (problem id, trace id), then prefix name. Each text is encoded once."""
    return cut_prefixes(texts, tokens_k, reasoning_words_k, reasoning_words, tokenizer)[0]


Prefixes = dict[tuple[str, str], dict[str, str]]
PrefixTokens = dict[tuple[str, str], dict[str, "int | None"]]


def cut_prefixes(texts: dict[tuple[str, str], str], tokens_k: Sequence[int], reasoning_words_k: Sequence[int],
                 reasoning_words: Sequence[str], tokenizer: Tokenizer) -> tuple[Prefixes, PrefixTokens]:
    """build_prefixes, and what each prefix costs the trace: the tokens (the tokenizer's, the corpus's unit) it has
    written when the prefix is complete, which is when a judge can first read it online; None when the trace ends
    before its prefix is complete: it has finished, and nothing is left to prune. A first-k-tokens prefix costs k on
    a trace of at least k tokens (exactly k: paused there, as a live engine reports it); a first-k-reasoning-words
    prefix the tokens up to the end of its k-th segment, measured per trace, and None also when that segment closes
    the trace."""
    pattern = reasoning_word_pattern(reasoning_words)
    out: Prefixes = {}
    costs: PrefixTokens = {}
    with track("building prefixes", len(texts), "traces") as progress:
        for key, text in texts.items():
            ids = tokenizer.encode(text)
            row = {prefix_name("tokens", k): first_k_tokens(text, k, tokenizer, ids) for k in tokens_k}
            cost: dict[str, int | None] = {prefix_name("tokens", k): k if len(ids) >= k else None for k in tokens_k}
            for k in reasoning_words_k:
                name = prefix_name("reasoning_words", k)
                row[name] = first_k_reasoning_words(text, k, pattern)
                end = reasoning_words_end(text, k, pattern)
                written = len(tokenizer.encode(text[:end])) if end is not None and end < len(text) else None
                cost[name] = written if written is not None and written < len(ids) else None
            out[key], costs[key] = row, cost
            progress.advance()
    return out, costs


def shared_opening_stats(prefixes: Mapping[tuple[str, str], Mapping[str, str]],
                         pairs: Iterable[tuple[str, str, str]]) -> dict[str, float | None]:
    """Per prefix, the median over pairs (problem_id, trace_a, trace_b) of the share of the longer of the two
    prefixes that both open with, character for character (1: the same text). Traces that restate the question
    the same way share most of a short prefix, and a judge reads only what follows."""
    names = sorted({name for row in prefixes.values() for name in row})
    shares: dict[str, list[float]] = {name: [] for name in names}
    for problem_id, a, b in pairs:
        row_a, row_b = prefixes[(problem_id, a)], prefixes[(problem_id, b)]
        for name in names:
            text_a, text_b = row_a.get(name), row_b.get(name)
            if text_a is None or text_b is None:
                continue
            longer = max(len(text_a), len(text_b))
            shares[name].append(len(os.path.commonprefix([text_a, text_b])) / longer if longer else 1.0)
    return {prefix_cost_name(name, "shared_opening"): float(statistics.median(values)) if values else None
            for name, values in shares.items()}


def prefix_cost_stats(costs: PrefixTokens) -> dict[str, float | None]:
    """Per prefix, over every trace: the share whose prefix is complete before the trace ends (a judge can read it
    while something is left to save) and the median tokens written by then, over those traces (None: none is).
    A prefix complete on few traces only reads like an early judge in an AUROC table."""
    names = sorted({name for row in costs.values() for name in row})
    out: dict[str, float | None] = {}
    for name in names:
        written = [row[name] for row in costs.values() if row.get(name) is not None]
        out[prefix_cost_name(name, "complete_before_end")] = len(written) / len(costs) if costs else None
        out[prefix_cost_name(name, "median_tokens")] = float(statistics.median(written)) if written else None
    return out

