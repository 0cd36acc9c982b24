"""Problem sets for live sampling (AIME 2024, AIME 2025, GPQA-Diamond, MATH-500, GSM8K; data/raw/SOURCES.md)
and the prompts built from them. Each loader maps its file's own fields onto one shape."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from deepprune.data.schema import TraceFormatError, iter_records

# dataset -> (default file, answer extractor)
DATASETS: dict[str, tuple[str, str]] = {
    "aime24": ("data/raw/problems/aime24.jsonl", "boxed_math"),
    "aime25": ("data/raw/problems/aime25.jsonl", "boxed_math"),
    "math500": ("data/raw/problems/math500.jsonl", "boxed_math"),
    "gsm8k": ("data/raw/problems/gsm8k_test.jsonl", "boxed_math"),
    "gpqa": ("data/raw/problems/gpqa_diamond.json.gz", "letter"),
}
_AIME25_SUFFIX = "\nPlease reason step by step, and put your final answer within \\boxed{}."


@dataclass(frozen=True)
class ProblemItem:
    problem_id: str
    question: str
    gold: str
    kind: str  # "math" (boxed answer) or "choice" (a letter)


class ProblemFormatError(TraceFormatError):
    """A problem-set record that cannot be used; the message names file, line and field, as for traces."""


def _field(record: dict, name: str, path: Path, line: int) -> object:
    if name not in record or record[name] in (None, ""):
        raise ProblemFormatError(path, line, name, "missing")
    return record[name]


def load_problems(dataset: str, path: str | Path | None = None, limit: int | None = None) -> list[ProblemItem]:
    """The first `limit` problems of a named set, in file order."""
    if dataset not in DATASETS:
        raise KeyError(f"unknown problem set {dataset!r}; known: {sorted(DATASETS)}")
    path = Path(path or DATASETS[dataset][0])
    if not path.exists():
        raise FileNotFoundError(f"problem set {dataset!r}: {path} does not exist")
    out: list[ProblemItem] = []
    fmt = "json" if path.name.endswith((".json", ".json.gz")) else "jsonl"
    unit = "line" if fmt == "jsonl" else "record"
    first_line: dict[tuple[str, str], int] = {}  # (field, value) -> the line (record) that first gave it
    for line, rec in iter_records(path, fmt):
        if limit is not None and len(out) >= limit:
            break
        if isinstance(rec, TraceFormatError):
            raise rec
        keys: list[tuple[str, str]] = []  # what makes this problem itself: its question, and its id if it has one
        if dataset == "gsm8k":
            answer = str(_field(rec, "answer", path, line))
            if "####" not in answer:
                raise ProblemFormatError(path, line, "answer", "no '#### <number>' at its end")
            item = ProblemItem(f"gsm8k-{line - 1}", str(_field(rec, "question", path, line)),
                               answer.rsplit("####", 1)[1].strip().replace(",", ""), "math")
            keys.append(("question", item.question))
        elif dataset == "gpqa":
            turns = _field(rec, "prompt", path, line)
            if not isinstance(turns, list) or not turns or "value" not in turns[0]:
                raise ProblemFormatError(path, line, "prompt", "expected a list of {from, value} turns")
            item = ProblemItem(f"gpqa-{line - 1}", str(turns[0]["value"]), str(_field(rec, "final_answer", path, line)),
                               "choice")
            keys.append(("prompt", item.question))
        elif dataset == "aime25":
            question = str(_field(rec, "prompt", path, line))
            question = question[: -len(_AIME25_SUFFIX)] if question.endswith(_AIME25_SUFFIX) else question
            item = ProblemItem(f"aime25-{line - 1}", question, str(_field(rec, "answer", path, line)), "math")
            keys.append(("prompt", item.question))
        else:  # aime24, math500
            id_field = "unique_id" if rec.get("unique_id") else "id" if rec.get("id") else None
            pid = rec[id_field] if id_field else line - 1
            item = ProblemItem(f"{dataset}-{pid}", str(_field(rec, "problem", path, line)),
                               str(_field(rec, "answer", path, line)), "math")
            keys.append(("problem", item.question))
            if id_field:
                keys.append((id_field, item.problem_id))
        for name, value in keys:
            first = first_line.setdefault((name, value), line)
            if first != line:  # a problem read twice would be sampled twice, under one id or two
                raise ProblemFormatError(path, line, name, f"problem {item.problem_id!r} repeats {unit} {first}")
        out.append(item)
    return out


def build_messages(item: ProblemItem, templates: dict[str, str], system: str | None = None) -> list[dict[str, str]]:
    """Chat messages for one problem: the template for its kind ({question} filled in)."""
    template = templates.get(item.kind)
    if template is None:
        raise KeyError(f"no prompt template for {item.kind!r} problems in sample.prompts ({sorted(templates)})")
    messages = [{"role": "system", "content": system}] if system else []
    return messages + [{"role": "user", "content": template.replace("{question}", item.question)}]
