"""Metric names: the README names only metrics the judges write under the shipped params."""

import re

import pytest

from deepprune.config import load_params
from deepprune.metric_names import AUROC_WITHIN_PROBLEM, ablate_names, rate_names, summary_names
from tests.conftest import ROOT


def test_every_judge_metric_the_readme_names_is_one_the_stages_write():
    params = load_params(ROOT / "params.yaml")
    written = {*summary_names(params.judge.fnr, params.judge.threshold), AUROC_WITHIN_PROBLEM}  # + the judge stage's
    named = set(re.findall(r"\b((?:tnr|tpr|accuracy)_at_[\w.]*\d|auroc\w*)", (ROOT / "README.md").read_text()))
    assert named and "tnr_at_fnr_0.2" in named and "accuracy_at_0.5" in named
    assert named - written - {"tnr_at_fnr_0.1"} == set()  # 0.1: the README's example of another judge.fnr


def test_rate_names_follow_the_configured_fnr_and_threshold():
    assert rate_names(0.1, 0.7) == ("auroc", "tnr_at_fnr_0.1", "tnr_at_0.7", "tpr_at_0.7", "accuracy_at_0.7")
    assert set(ablate_names(0.2, 0.5)) <= {*summary_names(0.2, 0.5), AUROC_WITHIN_PROBLEM}


def test_timing_keys_are_split_from_results_in_any_nesting():
    from deepprune.metric_names import is_timing, split_timings

    assert is_timing("embed/seconds") and is_timing("sample/tokens_per_second") and is_timing("wall_seconds")
    assert is_timing("prune/judge_cost/score_seconds_per_pair")
    assert not is_timing("seconds/auroc") and not is_timing("prune/tokens") and not is_timing("per_second_guess")
    doc = {"a": 1, "prune/cons/seconds": 2.5, "summary": {"cons": {"seconds": 3.0, "accuracy": 0.5}},
           "rows": [{"wall_seconds": 1.0, "tokens": 2}, {"tokens": 3}], "nested": {"x": [1, 2]}}
    kept, timed = split_timings(doc)
    assert kept == {"a": 1, "summary": {"cons": {"accuracy": 0.5}}, "rows": [{"tokens": 2}, {"tokens": 3}],
                    "nested": {"x": [1, 2]}}
    assert timed == {"prune/cons/seconds": 2.5, "summary": {"cons": {"seconds": 3.0}}, "rows": [{"wall_seconds": 1.0}, {}]}
    assert split_timings({"a": [1, {"b": 2}]}) == ({"a": [1, {"b": 2}]}, None)


def test_the_timing_table_charges_everything_outside_the_stages_own_work():
    from flows.timings import format_table, summary

    rows = [{"stage": "sample@math", "wall_seconds": 10.0, "work_seconds": 8.0},
            {"stage": "report", "wall_seconds": 5.0, "work_seconds": 4.0}]
    s = summary(rows, total=20.0)
    assert s["work_seconds"] == 12.0 and s["stage_overhead_seconds"] == 3.0 and s["outside_stages_seconds"] == 5.0
    assert s["overhead_share"] == 8.0 / 20.0
    table = format_table(rows, total=20.0)
    assert "| sample@math | 10.0 | 8.0 | 2.0 | 20% |" in table
    assert "| **total** (2 stage runs) | 20.0 | 12.0 | 8.0 | 40.0% |" in table


def test_a_process_start_is_the_moment_it_started_not_the_boot_second_rounded_down():
    """Every stage's overhead counts from its process's start (flows.timings.process_start). psutil's create_time
    adds the start's ticks to /proc/stat's boot time, a whole second, so it is early by the boot time's fraction on
    every process of a machine (0.57 s on the build machine): here the start a child reads for itself lies within
    0.2 s before its first line of Python."""
    import json
    import subprocess
    import sys

    code = ("import time; first = time.time()\n"
            "from flows.timings import process_start\n"
            "import json; print(json.dumps([first, process_start()]))")
    first, start = json.loads(subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                                             check=True).stdout)
    assert first - 0.2 <= start <= first + 0.011  # ticks of 1/100 s


def test_prefix_cost_names_are_built_by_one_helper():
    from deepprune.metric_names import prefix_cost_name

    assert prefix_cost_name("reasoning_words_25", "median_tokens") == "label/prefix/reasoning_words_25/median_tokens"
    with pytest.raises(ValueError, match="no prefix cost 'median'"):
        prefix_cost_name("tokens_32", "median")
