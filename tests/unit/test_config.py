"""params.yaml is validated strictly."""

from pathlib import Path

import pytest
import yaml

from deepprune.config import ConfigError, load_params, read_params

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
    (lambda p: p["sweep"].update(metric="tnr_at_fnr"),
     r"sweep.metric: 'tnr_at_fnr' is not a metric .*judge.fnr=0.2.*valid names: auroc, tnr_at_fnr_0.2, tnr_at_0.5, "
     r"tpr_at_0.5, accuracy_at_0.5"),
    (lambda p: p["sweep"].update(metric="tnr_at_fnr_0.2") or p["judge"].update(fnr=0.1),
     r"sweep.metric: 'tnr_at_fnr_0.2' .*valid names: auroc, tnr_at_fnr_0.1,"),
])
def test_bad_params_name_the_key(tmp_path, edit, message):
    raw = read_params(ROOT / "params.yaml")
    edit(raw)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=message):
        load_params(path)


def test_params_keep_their_meaning_through_dvcs_own_yaml_writer(tmp_path):
    """`dvc exp run -S key=value` rewrites params.yaml with DVC's writer (YAML 1.2: quotes dropped where 1.2 needs
    none, null written as an empty value, long lines re-wrapped); every value must read back the same."""
    from dvc.utils.serialize import modify_yaml

    path = tmp_path / "params.yaml"
    path.write_text((ROOT / "params.yaml").read_text())
    with modify_yaml(path) as doc:
        doc["prune"]["repetitions"] = 10
    assert "yes: yes" in path.read_text()  # unquoted: a YAML 1.1 reader would see the boolean True here
    expected = read_params(ROOT / "params.yaml")
    expected["prune"]["repetitions"] = 10
    assert read_params(path) == expected
    params = load_params(path)
    assert (params.judge_lm.prompt.yes, params.judge_lm.prompt.no, params.prune.repetitions) == ("yes", "no", 10)


def _write(tmp_path, edit):
    raw = read_params(ROOT / "params.yaml")
    edit(raw)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("metric", ["tnr_at_fnr_0.2", "accuracy_at_0.5", "auroc"])
def test_sweep_metric_takes_every_name_the_judge_summary_has(tmp_path, metric):
    assert load_params(_write(tmp_path, lambda p: p["sweep"].update(metric=metric))).sweep.metric == metric
