"""The GPU checks of scripts/ as tests: the causal-LM judge fine-tuned in bf16 on CUDA, and live generation with
online pruning on CUDA. Each runs its script as a user would (the core package only) and reads its report."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = [pytest.mark.gpu, pytest.mark.slow]


def _run(script: str, *args: str, timeout: int = 300) -> str:
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / script), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done.stdout


def test_causal_lm_judge_fine_tunes_and_scores_in_bf16_on_cuda():
    out = _run("gpu_judge_check.py", "--size", "small", "--steps", "4", "--pairs", "64", "--batch", "8", "--k", "64")
    report = json.loads(out[out.index("{"):])
    assert report["device"] == "cuda" and report["dtype"] == "torch.bfloat16"
    assert report["score_pairs_per_s"] > 0 and report["train_pairs_per_s"] > 0
    assert all(math.isfinite(loss) for loss in report["train_loss_first_last"])
    assert 0 < report["peak_gpu_memory_gib"] < 40


def test_online_pruning_generates_on_cuda():
    out = _run("gpu_online_check.py", "--size", "small", "--n", "32", "--prompts", "1", "--max-tokens", "64",
               "--k", "16", "--batch", "32")
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["judge_pairs_scored"] >= 32 * 32  # DeepPrune's judge scored every pair of prefixes
    assert summary["total_wall_s"] > 0 and summary["peak_gpu_memory_gib"] > 0
    assert "cons" in out and "deepprune" in out
