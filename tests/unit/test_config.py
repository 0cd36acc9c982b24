"""params.yaml is validated strictly."""

from pathlib import Path

import pytest
import yaml

from deepprune.config import ConfigError, load_params

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_params_are_valid():
    params = load_params(ROOT / "params.yaml")
    assert set(params.corpora) == {"math", "date", "live"}
    assert params.corpora["live"].importer == "live" and params.corpora["live"].dataset == "gsm8k"
    assert params.judge.primary in params.judge.variants


@pytest.mark.parametrize("edit, message", [
    (lambda p: p["judge"]["train"].update(epochz=3), "judge.train.epochz"),
    (lambda p: p["judge"].update(primary="nope"), "primary 'nope'"),
    (lambda p: p["corpora"]["date"]["answer"].pop("pattern"), "needs a pattern"),
    (lambda p: p["label"].update(folds=1), "label.folds"),
    (lambda p: p["online"].update(corpora=["math"]), "online.corpora: 'math' is a recorded corpus"),
    (lambda p: p["online"]["judge"].update(corpus="nope"), "online.judge.corpus: 'nope'"),
    (lambda p: p["online"].update(k=999), r"online.k \(999\) must be below"),
])
def test_bad_params_name_the_key(tmp_path, edit, message):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    edit(raw)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=message):
        load_params(path)
