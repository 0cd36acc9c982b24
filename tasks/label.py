"""Tasks of the label stage."""

from __future__ import annotations

from prefect import task

from deepprune.answers import AnswerSpec
from deepprune.config import LabelConfig
from deepprune.data.schema import ReadReport, Trace, group_by_problem, read_traces
from deepprune.io import write_jsonl
from deepprune.pairs import Pair, assign_folds, build_pairs, with_folds
from deepprune.tokens import get_tokenizer
from deepprune.truncate import PrefixTokens, Prefixes, cut_prefixes
from tasks import IO_RETRIES, NO_CACHE


@task(cache_policy=NO_CACHE, **IO_RETRIES)
def load_traces(path: str, skip_invalid: bool) -> tuple[dict[str, list[Trace]], ReadReport]:
    """Validated traces grouped by problem, with what was skipped."""
    traces, report = read_traces(path, skip_invalid=skip_invalid)
    return group_by_problem(traces), report


@task(cache_policy=NO_CACHE)
def label_pairs(problems: dict[str, list[Trace]], spec: AnswerSpec, folds: int, seed: int) -> list[Pair]:
    """All within-problem pairs, labelled by answer equivalence, with grouped folds."""
    pairs = build_pairs(problems, spec)
    return with_folds(pairs, assign_folds(pairs, folds, seed))


@task(cache_policy=NO_CACHE)
def make_prefixes(problems: dict[str, list[Trace]], cfg: LabelConfig, tokens_k: list[int],
                  tokenizer: str) -> tuple[Prefixes, PrefixTokens]:
    """Every configured prefix of every trace (`tokens_k`: the corpus's own, else label.tokens_k), and the tokens
    each costs its trace (deepprune.truncate.cut_prefixes)."""
    texts = {(t.problem_id, t.trace_id): t.text for ts in problems.values() for t in ts}
    return cut_prefixes(texts, tokens_k, cfg.reasoning_words_k, cfg.reasoning_words, get_tokenizer(tokenizer))


@task(cache_policy=NO_CACHE, **IO_RETRIES)
def save_rows(path: str, rows: list[dict]) -> int:
    """Write rows as JSONL atomically."""
    return write_jsonl(path, rows)
