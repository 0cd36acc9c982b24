"""Platt calibration: it recovers a known distortion, keeps the ranking, and never sees the fold it maps."""

import numpy as np
import pytest

from deepprune.judges.calibration import (apply_platt, cross_fold_calibrate, expected_calibration_error, fit_platt,
                                          reliability)
from deepprune.metrics import auroc


def _distorted(n: int, seed: int = 0):
    """Labels drawn from a true probability p; the judge reports p squashed towards 0 (as focal loss with alpha 0.25
    pushes a head's outputs): sigmoid(2 * logit(p) - 1.5)."""
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.02, 0.98, n)
    y = (rng.uniform(size=n) < p).astype(int)
    z = np.log(p / (1 - p))
    return y, 1 / (1 + np.exp(-(2 * z - 1.5))), p


def test_platt_recovers_the_inverse_of_a_known_distortion_and_keeps_the_ranking():
    y, s, p = _distorted(20000)
    a, b = fit_platt(s, y)
    assert a == pytest.approx(0.5, abs=0.03) and b == pytest.approx(0.75, abs=0.06)  # the inverse of 2z - 1.5
    calibrated = apply_platt(s, (a, b))
    assert auroc(y, calibrated) == pytest.approx(auroc(y, s))
    assert expected_calibration_error(y, calibrated) < 0.02 < 0.1 < expected_calibration_error(y, s)
    assert np.abs(calibrated - p).max() < 0.05


def test_one_class_gets_the_identity_map():
    assert fit_platt([0.2, 0.7, 0.9], [1, 1, 1]) == (1.0, 0.0)
    np.testing.assert_allclose(apply_platt([0.2, 0.7], (1.0, 0.0)), [0.2, 0.7])


def test_each_fold_is_mapped_by_a_map_fitted_on_the_other_folds_only():
    y, s, _ = _distorted(3000, seed=1)
    folds = np.arange(3000) % 3
    calibrated, maps = cross_fold_calibrate(s, y, folds)
    for fold, ab in enumerate(maps):
        assert ab == fit_platt(s[folds != fold], y[folds != fold])
        np.testing.assert_allclose(calibrated[folds == fold], apply_platt(s[folds == fold], ab))
    poisoned = y.copy()
    poisoned[folds == 0] = 1 - poisoned[folds == 0]  # fold 0's own labels do not move fold 0's map
    again, _ = cross_fold_calibrate(s, poisoned, folds)
    np.testing.assert_array_equal(again[folds == 0], calibrated[folds == 0])


def test_reliability_bins_hold_every_pair():
    y, s, _ = _distorted(500, seed=2)
    r = reliability(y, s, bins=10)
    assert sum(r["count"]) == 500 and len(r["mean_score"]) <= 10
    assert all(0 <= v <= 1 for v in r["mean_score"] + r["same_share"])
