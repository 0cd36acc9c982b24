"""dvc.yaml's outs and metrics are the paths deepprune.paths gives, for every stage and every corpus it runs on."""

from __future__ import annotations

import re
from typing import Any

import yaml

from deepprune import paths
from deepprune.config import read_params
from tests.conftest import ROOT

# stage -> (outs, metrics) for one foreach item (a corpus), as deepprune.paths names them
EXPECTED = {
    "sample": lambda c: ([paths.traces(c), paths.traces_meta(c)], [paths.metrics("sample", c)]),
    "label": lambda c: ([paths.labels_dir(c)], [paths.metrics("label", c)]),
    "embed": lambda c: ([paths.embeddings(c)], [paths.metrics("embed", c)]),
    "judge": lambda c: ([paths.judge_dir(c)], [paths.metrics("judge", c)]),
    "judge_lm": lambda c: ([paths.judge_lm_dir(c)], [paths.metrics("judge_lm", c)]),
    "sweep": lambda c: ([paths.sweep_dir(c)], [paths.metrics("sweep", c)]),
    "ablate": lambda c: ([paths.ablate_dir(c)], [paths.metrics("ablate", c)]),
    "prune": lambda c: ([paths.prune_dir(c)], [paths.metrics("prune", c)]),
    "online": lambda c: ([paths.online_dir(c)], [paths.metrics("online", c)]),
    "report": lambda _: ([paths.report_index(), paths.figures_dir()], []),
}


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
    expected_names = {f"{s}@{c}" for s in EXPECTED if s != "report" for c in per_corpus.get(s, params["corpora"])}
    assert set(stages) == expected_names | {"report"}
    for name, stage in stages.items():
        outs, metrics = EXPECTED[name.split("@")[0]](name.partition("@")[2])
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
