"""Metric names: the README names only metrics the judges write under the shipped params."""

import re

from deepprune.config import load_params
from deepprune.metric_names import ablate_names, rate_names, summary_names
from tests.conftest import ROOT


def test_every_judge_metric_the_readme_names_is_one_the_stages_write():
    params = load_params(ROOT / "params.yaml")
    written = set(summary_names(params.judge.fnr, params.judge.threshold))
    named = set(re.findall(r"\b((?:tnr|tpr|accuracy)_at_[\w.]*\d|auroc\w*)", (ROOT / "README.md").read_text()))
    assert named and "tnr_at_fnr_0.2" in named and "accuracy_at_0.5" in named
    assert named - written - {"tnr_at_fnr_0.1"} == set()  # 0.1: the README's example of another judge.fnr


def test_rate_names_follow_the_configured_fnr_and_threshold():
    assert rate_names(0.1, 0.7) == ("auroc", "tnr_at_fnr_0.1", "tnr_at_0.7", "tpr_at_0.7", "accuracy_at_0.7")
    assert set(ablate_names(0.2, 0.5)) <= set(summary_names(0.2, 0.5))
