"""Sweep grids: distinct points only, recipes applied to the right config, bad keys named; encoder judges trained
in parallel threads stay reproducible."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import numpy as np
import pytest

from deepprune.config import Params, SweepConfig, TrainConfig, read_params
from deepprune.judges.encoder import EncoderJudge
from deepprune.judges.sweep import SweepPoint, base_recipe, best_point, encoder_recipe, expand_grid, grid_points, lm_recipe
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def params() -> Params:
    return Params.model_validate(read_params(ROOT / "params.yaml"))


def test_grid_runs_each_distinct_recipe_once(params):
    sweep = SweepConfig(grid={"loss": ["ce", "focal"], "focal.alpha": [0.25, 0.5], "focal.gamma": [0.0, 2.0],
                              "oversample": [False, True], "oversample_ratio": [0.5, 1.0]})
    points = expand_grid(sweep, base_recipe(sweep, params.judge, params.judge_lm), "encoder")
    # ce ignores alpha and gamma; without oversampling the ratio is moot: ce 1 + 2, focal 4 x (1 + 2)
    assert len(points) == 3 + 12
    assert len({p.name for p in points}) == len(points)
    assert len({p.settings for p in points}) == len(points)
    assert "ce_noos" in [p.name for p in points]


def test_points_that_differ_only_in_keys_their_judge_ignores_run_once(params):
    """The sweep tells points apart by the rule variant_recipe uses (evaluate.unused_train_keys), whatever the swept
    judge: a cross-encoder has no head epochs, an encoder that does not fine-tune has no finetune_lr."""
    from deepprune.config import VariantConfig
    from deepprune.judges.evaluate import variant_recipe

    cross = params.judge.model_copy(update={
        "variants": {**params.judge.variants, "cross": VariantConfig(kind="cross_encoder", loss="focal")},
        "primary": "cross"})
    heads = SweepConfig(grid={"epochs": [5, 10], "finetune_lr": [1e-5, 2e-5]})
    points = grid_points(heads, cross, params.judge_lm)
    assert [p.name for p in points] == ["finetune_lr=1e-05", "finetune_lr=2e-05"]
    encoder = grid_points(heads, params.judge, params.judge_lm)  # the primary does not fine-tune its encoder
    assert [p.name for p in encoder] == ["epochs=5", "epochs=10"]
    # and the two points the cross-encoder's grid merged are one recipe, so one seed
    recipes = []
    for epochs in (5, 10):
        variant, cfg = encoder_recipe(SweepPoint("p", (("epochs", epochs), ("finetune_lr", 1e-5))), cross)
        recipes.append(variant_recipe(variant, cfg.train))
    assert recipes[0] == recipes[1]


def test_encoder_recipe_sets_variant_and_train_keys(params):
    point = SweepPoint("p", (("focal.alpha", 0.75), ("focal.gamma", 1.0), ("loss", "focal"), ("oversample", True),
                             ("oversample_ratio", 0.25), ("epochs", 7)))
    variant, cfg = encoder_recipe(point, params.judge)
    assert (variant.loss, variant.oversample) == ("focal", True)
    assert (cfg.train.focal.alpha, cfg.train.focal.gamma, cfg.train.oversample_ratio, cfg.train.epochs) == (0.75, 1.0, 0.25, 7)
    assert list(cfg.variants) == ["p"]
    # the swept judge is the primary variant: its kind and text features stay, only the point's keys change
    numbers = params.judge.model_copy(update={"primary": "encoder_shared_numbers"})
    variant, _ = encoder_recipe(point, numbers)
    assert (variant.kind, variant.features, variant.loss) == ("encoder", ["shared_numbers"], "focal")
    lm = lm_recipe(SweepPoint("q", (("focal.gamma", 0.0), ("steps", 3))), params.judge_lm)
    assert (lm.train.focal.gamma, lm.train.steps) == (0.0, 3)


def test_bad_grid_keys_and_values_are_named(params):
    with pytest.raises(KeyError, match="sweep.grid.focal.beta"):
        encoder_recipe(SweepPoint("p", (("focal.beta", 1.0),)), params.judge)
    with pytest.raises(ValueError, match="alpha"):
        encoder_recipe(SweepPoint("p", (("focal.alpha", 1.5),)), params.judge)
    with pytest.raises(ValueError, match="no values"):
        SweepConfig(grid={"loss": []})


def test_best_point_prefers_the_higher_mean_then_the_smaller_spread():
    a, b, c = SweepPoint("a", ()), SweepPoint("b", ()), SweepPoint("c", ())
    results = [(a, {"auroc": 0.7, "auroc_std": 0.1}), (b, {"auroc": 0.8, "auroc_std": 0.2}),
               (c, {"auroc": 0.8, "auroc_std": 0.05})]
    assert best_point(results, "auroc")[0] is c
    assert best_point([(a, {"auroc": float("nan")}), (b, {"auroc": 0.1})], "auroc")[0] is b


def test_sweep_metric_tnr_at_fnr_picks_another_point_than_auroc():
    from deepprune.metric_names import tnr_at_fnr_name
    from deepprune.metrics import judge_metrics, summarize_folds

    labels = [1] * 5 + [0] * 5
    # a: one different-answer pair scores above a same-answer one: AUROC 23/25 = 0.92, TNR at FNR 0.2 = 4/5
    a_scores = [0.9, 0.8, 0.7, 0.6, 0.5] + [0.65, 0.1, 0.1, 0.1, 0.1]
    # b: one same-answer pair scores below every different one: AUROC 20/25 = 0.8, TNR at FNR 0.2 = 1
    b_scores = [0.9, 0.8, 0.7, 0.6, 0.01] + [0.5] * 5
    a, b = SweepPoint("a", ()), SweepPoint("b", ())
    results = [(p, summarize_folds([judge_metrics(labels, s, 0.2, 0.5)])) for p, s in ((a, a_scores), (b, b_scores))]
    assert results[0][1]["auroc"] == pytest.approx(0.92) and results[1][1][tnr_at_fnr_name(0.2)] == 1.0
    assert best_point(results, "auroc")[0] is a
    assert best_point(results, "tnr_at_fnr_0.2")[0] is b


def test_best_point_refuses_an_unknown_or_everywhere_nan_metric():
    a, b = SweepPoint("a", ()), SweepPoint("b", ())
    with pytest.raises(ValueError, match="'tnr_at_fnr' is in no sweep point's summary; they hold auroc"):
        best_point([(a, {"auroc": 0.7}), (b, {"auroc": 0.8})], "tnr_at_fnr")
    # undefined everywhere (one class of pairs): no point is best, rather than the first grid point
    assert best_point([(a, {"auroc": float("nan")}), (b, {"auroc": float("nan")})], "auroc") is None


def test_encoder_judges_trained_in_parallel_threads_are_reproducible():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(400, 8)).astype(np.float32), rng.normal(size=(400, 8)).astype(np.float32)
    y = (a[:, 0] * b[:, 0] > 0).astype(np.int64)
    cfg = TrainConfig(epochs=20, batch_size=64, hidden=16, dropout=0.3)
    encoder = SimpleNamespace(dim=8, path="stub", source="stub")
    alone = EncoderJudge(encoder, cfg, "focal", True, seed=5).fit(a, b, y).score(a, b)
    results: dict[int, np.ndarray] = {}

    def train(i: int) -> None:
        results[i] = EncoderJudge(encoder, cfg, "focal", True, seed=5 if i % 2 == 0 else 6).fit(a, b, y).score(a, b)

    threads = [threading.Thread(target=train, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert np.array_equal(results[0], alone) and np.array_equal(results[2], alone)
    assert not np.array_equal(results[1], alone)  # another seed: another judge
