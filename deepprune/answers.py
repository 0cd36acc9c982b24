"""Answer extraction and equivalence: one function serves labels, votes and grading (DESIGN.md section 1)."""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass

BOXED_COMMANDS = ("\\boxed", "\\fbox")
_LETTER_PATTERNS = (
    re.compile(r"answer\s*(?:is|:)?\s*[:\s]*\(?\**\s*([A-J])\s*\)?\**(?![A-Za-z])", re.IGNORECASE),
    re.compile(r"^\s*\(?([A-J])\)?\s*$"),
)
# LaTeX decorations that never change a value; units are stripped only as trailing \text{...}/\mbox{...}.
_DECORATIONS = (
    (re.compile(r"\\(?:left|right)(?=[()\[\]|.])"), ""),
    (re.compile(r"\\[,;:! ]"), ""),
    (re.compile(r"\^\s*\{?\\circ\}?"), ""),
    (re.compile(r"\\%|%"), ""),
    (re.compile(r"\\\$|\$"), ""),
    (re.compile(r"\\(?:d|t)frac"), r"\\frac"),
    (re.compile(r"(?:\\text|\\mbox|\\mathrm)\{\s*(?:units?|cm|m|km|mm|inches|inch|feet|ft|degrees?|dollars?|cents?|"
                r"hours?|minutes?|seconds?|days?|meters?|miles?|pounds?|square\s+\w+|sq\s+\w+)\s*\}\s*(?:\^\{?\d\}?)?\s*$"), ""),
    (re.compile(r"\\text\{\s*(.*?)\s*\}"), r"\1"),
)


@dataclass(frozen=True)
class AnswerSpec:
    """How answers of one dataset are extracted and compared."""

    extractor: str = "boxed_math"  # boxed_math | letter | regex
    pattern: str | None = None  # regex extractor: the last match's group 1 (or whole match) is the answer
    normalizer: str = "strip"  # strip | lower | date_mdy | number
    gold_pattern: str | None = None  # the gold field's answer: the last match's group 1 (None: the whole field)


def find_last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (or \\fbox{...}) in text, with nested braces matched."""
    best = -1
    for cmd in BOXED_COMMANDS:
        best = max(best, text.rfind(cmd + "{"), text.rfind(cmd + " {"))
    if best < 0:
        return None
    start = text.index("{", best) + 1
    depth = 1
    for pos in range(start, len(text)):
        ch = text[pos]
        if ch == "{" and text[pos - 1] != "\\":
            depth += 1
        elif ch == "}" and text[pos - 1] != "\\":
            depth -= 1
            if depth == 0:
                content = text[start:pos].strip()
                return content or None
    return None  # unbalanced: the trace stopped inside the box


def normalize_math(answer: str) -> str:
    """Strip LaTeX decorations and units that do not change a mathematical value."""
    out = answer.strip()
    for pattern, repl in _DECORATIONS:
        out = pattern.sub(repl, out)
    out = out.strip().rstrip(".").strip()
    return re.sub(r"\s+", " ", out)


def _normalize(value: str, normalizer: str) -> str | None:
    value = value.strip()
    if normalizer == "strip":
        return value or None
    if normalizer == "lower":
        return value.lower() or None
    if normalizer == "number":
        digits = value.replace(",", "").rstrip(".")
        try:
            num = float(digits)
        except ValueError:
            return value or None
        return str(int(num)) if num.is_integer() else repr(num)
    if normalizer == "date_mdy":
        match = re.fullmatch(r"(\d{1,2})/(\d{1,2})/(\d{4})", value)
        return f"{int(match[1]):02d}/{int(match[2]):02d}/{match[3]}" if match else None
    raise ValueError(f"unknown answer normalizer {normalizer!r} (known: strip, lower, number, date_mdy)")


def extract_answer(text: str, spec: AnswerSpec) -> str | None:
    """The final answer a trace commits to, normalised for its format; None when it gives none."""
    if spec.extractor == "boxed_math":
        boxed = find_last_boxed(text)
        return normalize_math(boxed) if boxed is not None else None
    if spec.extractor == "letter":
        boxed = find_last_boxed(text)
        candidates = [boxed] if boxed else []
        candidates.append(text)
        for cand in candidates:
            for pattern in _LETTER_PATTERNS:
                matches = pattern.findall(cand)
                if matches:
                    return matches[-1].upper()
        return None
    if spec.extractor == "regex":
        if not spec.pattern:
            raise ValueError("the regex answer extractor needs a pattern")
        matches = list(re.finditer(spec.pattern, text))
        if not matches:
            return None
        last = matches[-1]
        return _normalize(last.group(1) if last.groups() else last.group(0), spec.normalizer)
    raise ValueError(f"unknown answer extractor {spec.extractor!r} (known: boxed_math, letter, regex)")


@functools.lru_cache(maxsize=65536)
def _parse_math(answer: str):
    from math_verify import parse  # heavy import (sympy), kept lazy

    return parse("$" + answer + "$", parsing_timeout=5)


@functools.lru_cache(maxsize=262144)
def _math_equal(a: str, b: str) -> bool:
    from math_verify import verify

    if a == b:
        return True
    pa, pb = _parse_math(a), _parse_math(b)
    if not pa or not pb:
        return False
    try:
        return bool(verify(pa, pb, timeout_seconds=5)) or bool(verify(pb, pa, timeout_seconds=5))
    except Exception:  # math-verify raises on exotic sympy objects: such answers are simply not equal
        return False


def answers_equivalent(a: str | None, b: str | None, spec: AnswerSpec) -> bool:
    """True when two extracted answers are the same answer; a missing answer never agrees."""
    if a is None or b is None:
        return False
    if spec.extractor == "boxed_math":
        return _math_equal(a, b)
    return a == b


def answer_classes(answers: Sequence[str | None], spec: AnswerSpec) -> list[int]:
    """Class id per answer: equivalent answers share an id, in order of first appearance; None is a class alone."""
    reps: list[str] = []
    classes: list[int] = []
    next_single = -1
    for ans in answers:
        if ans is None:
            classes.append(next_single)
            next_single -= 1
            continue
        for idx, rep in enumerate(reps):
            if answers_equivalent(ans, rep, spec):
                classes.append(idx)
                break
        else:
            reps.append(ans)
            classes.append(len(reps) - 1)
    return classes


def is_correct(answer: str | None, gold: str | None, spec: AnswerSpec) -> bool | None:
    """Grade an answer against the gold answer (None when there is no gold, or the gold field holds no match of
    `gold_pattern`: a gold like '#### 5/1/2021' is read through its own pattern, then normalized as answers are)."""
    if gold is not None and spec.gold_pattern:
        matches = list(re.finditer(spec.gold_pattern, gold))
        gold = matches[-1].group(1) if matches else None
    if gold is None:
        return None
    gold_norm = normalize_math(gold) if spec.extractor == "boxed_math" else (
        _normalize(gold, spec.normalizer) if spec.extractor == "regex" else gold.strip().upper())
    return answers_equivalent(answer, gold_norm, spec)
