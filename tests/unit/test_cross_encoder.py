"""The cross-encoder judge (deepprune/judges/cross_encoder.py) on the packaged MiniLM: it reads both prefixes
together, learns a rule that needs both, scores in either order alike, round-trips, and cross-validates."""

import numpy as np
import pytest

from deepprune.config import JudgeConfig, TrainConfig
from deepprune.judges.cross_encoder import CrossEncoderJudge
from deepprune.judges.encoder import SentenceEncoder, load_encoder_judge
from deepprune.judges.evaluate import PairData, cross_validate, train_final, variant_recipe
from deepprune.metrics import auroc

COLOURS = ["red", "blue", "green", "yellow", "black", "white"]


@pytest.fixture(scope="module")
def encoder():
    return SentenceEncoder(None, 48)


def _pairs(n: int, seed: int):
    """Two prefixes agree when they end on the same colour: neither prefix alone says whether they do."""
    rng = np.random.default_rng(seed)
    first = rng.integers(0, 6, n)
    same = rng.random(n) < 0.5
    second = np.where(same, first, (first + 1 + rng.integers(0, 5, n)) % 6)
    ta = [f"step {rng.integers(9)}: so the answer is {COLOURS[c]}" for c in first]
    tb = [f"we try {rng.integers(9)} and the answer is {COLOURS[c]}" for c in second]
    return ta, tb, same.astype(np.int64)


CFG = TrainConfig(lr=1e-3, finetune_lr=1e-4, finetune_epochs=2, batch_size=16)


def test_the_cross_encoder_learns_what_needs_both_prefixes_and_scores_either_order_alike(encoder, tmp_path):
    ta, tb, y = _pairs(200, 0)
    ha, hb, hy = _pairs(80, 1)
    before = {k: v.clone() for k, v in encoder.model.state_dict().items()}
    judge = CrossEncoderJudge(encoder, CFG, "focal", True, seed=0).fit(None, None, y, ta, tb)
    scores = judge.score(None, None, ha, hb)
    assert auroc(hy, scores) > 0.9
    np.testing.assert_array_equal(scores, judge.score(None, None, hb, ha))
    assert all((encoder.model.state_dict()[k] == v).all() for k, v in before.items())  # the shared encoder is untouched
    path = tmp_path / "cross.safetensors"
    judge.calibration = (1.5, -0.2)
    judge.save(path, {"variant": "minilm_cross"})
    loaded = load_encoder_judge(path, encoder)
    assert isinstance(loaded, CrossEncoderJudge) and loaded.calibration == (1.5, -0.2)
    np.testing.assert_allclose(loaded.score(None, None, ha, hb), judge.score(None, None, ha, hb), rtol=1e-6)
    with pytest.raises(ValueError, match="scores the prefix texts"):
        loaded.score(None, None)


def test_a_cross_encoder_variant_cross_validates_calibrated_and_its_recipe_names_its_fine_tuning(encoder):
    ta, tb, y = _pairs(150, 2)
    folds = np.arange(150) % 3
    data = PairData(ta, tb, np.zeros((150, 0), np.float32), np.zeros((150, 0), np.float32), y, folds,
                    np.array([str(i // 5) for i in range(150)], dtype=object))
    cfg = JudgeConfig.model_validate({
        "truncation": {"strategy": "tokens", "k": 32}, "primary": "minilm_cross", "baseline": "minilm_cross",
        "variants": {"minilm_cross": {"kind": "cross_encoder", "loss": "ce", "oversample": False}},
        "train": CFG.model_dump() | {"finetune_epochs": 1}})
    result = cross_validate(data, cfg, encoder, seed=0)["minilm_cross"]
    assert result.raw_oof is not None and np.isfinite(result.oof_scores).all()
    assert result.summary["auroc"] > 0.7
    recipe = variant_recipe(cfg.variants["minilm_cross"], cfg.train)
    assert recipe["train"]["finetune_lr"] == 1e-4 and "finetune_encoder" not in recipe["train"]
    assert not {"epochs", "hidden", "dropout"} & set(recipe["train"])  # the embedding head's keys, unread here
    final = train_final(data, cfg, cfg.variants["minilm_cross"], encoder, 0, result.raw_oof)
    assert isinstance(final, CrossEncoderJudge) and final.calibration is not None


def test_online_similarity_and_the_cost_timer_read_the_cross_encoder_from_texts(encoder):
    """The online stage's similarity matrix and prune's judge-cost timing hand a saved cross-encoder its texts."""
    from deepprune.judges.evaluate import time_judge
    from deepprune.pruning.online import judge_similarity

    judge = CrossEncoderJudge(encoder, CFG, "ce", False, seed=3)
    prefixes = ["the answer is red", "so we get blue", "answer: red"]
    class Unread:  # the online stage's encoder: a cross-encoder judge needs no embeddings from it
        def embed(self, texts, batch_size=32):
            raise AssertionError("the cross-encoder's similarity encoded the prefixes")

    matrix = judge_similarity(judge, Unread())([0, 1, 2], prefixes)
    assert matrix.shape == (3, 3)
    np.testing.assert_array_equal(matrix, matrix.T)  # order-free, as clustering needs
    expected = judge.score(None, None, [prefixes[0]], [prefixes[2]])[0]
    assert matrix[0, 2] == pytest.approx(expected)
    cost = time_judge(encoder, judge, prefixes, repeats=1)
    assert cost["score_seconds_per_pair"] > 0 and cost["encode_seconds_per_prefix"] == 0.0  # it reads texts only


def test_cross_encoders_fitted_in_parallel_threads_are_reproducible(encoder):
    """Their dropout draws from torch's global generator: fits in threads (ablation cells, sweep points) take turns."""
    import threading

    ta, tb, y = _pairs(24, 4)
    cfg = CFG.model_copy(update={"finetune_epochs": 1})
    alone = CrossEncoderJudge(encoder, cfg, "ce", False, seed=7).fit(None, None, y, ta, tb).score(None, None, ta, tb)
    results: dict[int, np.ndarray] = {}

    def fit(i: int) -> None:
        judge = CrossEncoderJudge(encoder, cfg, "ce", False, seed=7 if i % 2 == 0 else 8)
        results[i] = judge.fit(None, None, y, ta, tb).score(None, None, ta, tb)

    threads = [threading.Thread(target=fit, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    np.testing.assert_array_equal(results[0], alone)
    np.testing.assert_array_equal(results[2], alone)
    assert not np.array_equal(results[1], alone)
