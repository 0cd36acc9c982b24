"""Pair features read from the prefix texts themselves, beside the embeddings (params
`judge.variants.<name>.features`).

An embedding of a 128-token prefix blurs the intermediate results a trace has reached; two traces that will agree
often share them. `shared_numbers` compares the numbers two prefixes write (integers, decimals, fractions and
dates such as 12/31/2021 read as one number, a minus sign kept where it is a sign, not a subtraction; a comma is
a thousands separator only before exactly three digits, so (1,2) and 2,3,5 stay separate numbers):
- the Jaccard overlap of the two prefixes' sets of numbers;
- whether their last numbers are equal (the latest intermediate result);
- the Jaccard overlap of the numbers in the later half of each prefix (where the traces have got to).
Every feature is symmetric in the two prefixes and lies in [0, 1]. Nothing here is specific to a corpus: held-out
corpora get the same features (measured gains: README, "The judges").
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import numpy as np

_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:[./:]\d+)*|\d+(?:[./:]\d+)*")  # "-2" in x=-2, "2" in 3-2
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")


def numbers(text: str) -> list[str]:
    """The numbers a text writes, in order (a trailing full stop is the sentence's, not the number's)."""
    return [n.rstrip(".") for n in _NUMBER.findall(_THOUSANDS.sub("", text))]


def _jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 0.0


def shared_numbers(texts_a: Sequence[str], texts_b: Sequence[str]) -> np.ndarray:
    """(n, 3) float32: overall overlap, last number equal, later-half overlap, for row-aligned prefix pairs."""
    out = np.zeros((len(texts_a), 3), dtype=np.float32)
    cache: dict[str, list[str]] = {}
    for i, (a, b) in enumerate(zip(texts_a, texts_b)):
        na = cache[a] if a in cache else cache.setdefault(a, numbers(a))
        nb = cache[b] if b in cache else cache.setdefault(b, numbers(b))
        out[i, 0] = _jaccard(set(na), set(nb))
        out[i, 1] = float(bool(na) and bool(nb) and na[-1] == nb[-1])
        out[i, 2] = _jaccard(set(na[len(na) // 2:]), set(nb[len(nb) // 2:]))
    return out


# name -> (function of the two prefix lists, number of columns)
TEXT_FEATURES: dict[str, tuple[Callable[[Sequence[str], Sequence[str]], np.ndarray], int]] = {
    "shared_numbers": (shared_numbers, 3),
}


def feature_width(names: Sequence[str]) -> int:
    """Columns the named features add to a pair's embedding features."""
    return sum(TEXT_FEATURES[name][1] for name in names)


def text_features(names: Sequence[str], texts_a: Sequence[str] | None, texts_b: Sequence[str] | None,
                  rows: int) -> np.ndarray:
    """The named features of `rows` aligned pairs, side by side ((rows, 0) when none are named). A judge that uses
    features cannot score from embeddings alone: missing texts are an error, never zeros."""
    if not names:
        return np.zeros((rows, 0), dtype=np.float32)
    if texts_a is None or texts_b is None or len(texts_a) != rows or len(texts_b) != rows:
        raise ValueError(f"text features {list(names)} need both prefix texts of each of the {rows} pairs")
    return np.concatenate([TEXT_FEATURES[name][0](texts_a, texts_b) for name in names], axis=1)
