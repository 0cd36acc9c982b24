"""The README's "Bring your own traces", followed as written: its YAML block is read from the README, pointed at a
small slice of held-out-style traces (a JSONL file shaped as the block's field map expects, with a '#### 5/1/2021'
gold), given its own prefixes and truncation and a gold pattern (the README's commented options), then
`dvc repro prune@mine` and `python -m flows.report --corpus mine` run as the README says. Only that corpus's
stages run; the gold is graded through its pattern; its prefixes, judges and prune use its own k."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import yaml

from deepprune.config import read_params
from tests.conftest import ROOT
from tests.integration.conftest import run

pytestmark = pytest.mark.slow


def _readme_block() -> dict:
    """The corpus the README's "Bring your own traces" section adds, as its YAML block spells it."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Bring your own traces"):]
    block = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    return yaml.safe_load(block)["corpora"]["mine"]


def _commented(key: str) -> dict:
    """A commented option of the README's block (`# answer: {...}`), as YAML."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Bring your own traces"):]
    line = next(line for line in section.splitlines() if line.strip().startswith(f"# {key}:"))
    return yaml.safe_load(line.strip()[2:])[key]


def _slice(path: Path, problems: int = 6) -> None:
    """Date questions of the shipped corpus, one trace per record in the README's field names, gold as '#### m/d/y'."""
    source = json.loads((ROOT / "data/raw/traces/verifycot_date_gpt35_246x10.json").read_text(encoding="utf-8"))
    with path.open("w", encoding="utf-8") as out:
        for record in source[:problems]:
            month, day, year = record["final_answer"].split("/")
            for text in record["model_outputs"][:6]:
                out.write(json.dumps({"question": {"id": f"q{record['example_idx']}"}, "completion": text,
                                      "answer": f"The date is below.\n#### {int(month)}/{int(day)}/{year}"}) + "\n")


def test_a_new_corpus_by_field_mapping_alone_runs_and_reports_on_its_own(repo_copy):
    repo, env = repo_copy
    corpus = _readme_block()
    _slice(repo / "mine.jsonl")
    corpus["path"] = str(repo / "mine.jsonl")
    corpus["limit"] = None
    corpus["answer"] = _commented("answer")
    for optional in ("n_tokens", "finish_reason", "logprobs"):  # the README marks these optional; the slice has none
        corpus["fields"].pop(optional)
    corpus["tokens_k"], corpus["truncation"] = [16, 32], {"strategy": "tokens", "k": 16}
    params = read_params(repo / "params.yaml")
    params["corpora"]["mine"] = corpus
    (repo / "params.yaml").write_text(yaml.safe_dump(params))

    out = run([sys.executable, "-m", "dvc", "repro", "prune@mine"], repo, env)
    ran = {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}
    assert ran == {f"{stage}@mine" for stage in ("sample", "label", "embed", "judge", "prune")}

    traces = [json.loads(line) for line in (repo / "data/traces/mine.jsonl").open(encoding="utf-8")]
    assert len(traces) == 36 and {t["gold"] for t in traces} >= {"The date is below.\n#### 11/22/2002"}
    assert any(t["correct"] for t in traces) and all(t["correct"] is not None for t in traces if t["answer"])
    prefixes = json.loads((repo / "data/labels/mine/prefixes.jsonl").open(encoding="utf-8").readline())["prefixes"]
    assert set(prefixes) == {"tokens_16", "tokens_32", "reasoning_words_5"}  # its own tokens_k, label's words
    prune = json.loads((repo / "reports/metrics/prune_mine.json").read_text())
    assert prune["prune/k"] == 16 and prune["prune/problems"] == 6
    cons = prune["prune/cons/accuracy"]
    assert 0 < cons <= 1  # graded against the gold read through its pattern

    run([sys.executable, "-m", "flows.report", "--corpus", "mine"], repo, env)
    page = (repo / "reports/corpora/mine/index.html").read_text(encoding="utf-8")
    assert "<h3>mine</h3>" in page and "<h3>math</h3>" not in page and "16 tokens (mine)" in page
    assert not (repo / "reports/index.html").exists()  # the pipeline's report is not touched
