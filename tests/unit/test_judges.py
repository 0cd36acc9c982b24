"""Judges on synthetic embeddings: training learns, oversampling and focal paths run, weights round-trip."""

from types import SimpleNamespace

import numpy as np
import pytest

from deepprune.config import TrainConfig
from deepprune.judges import judge_class
from deepprune.judges.encoder import CosineJudge, EncoderJudge, load_encoder_judge
from deepprune.metrics import auroc


def _pairs(n: int, seed: int, dim: int = 16):
    """Pairs whose label depends on a hidden direction, not on cosine similarity."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, dim)).astype(np.float32)
    b = rng.normal(size=(n, dim)).astype(np.float32)
    labels = (np.sign(a[:, 0]) == np.sign(b[:, 0])).astype(np.int64)
    norm = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
    return norm(a), norm(b), labels


@pytest.mark.parametrize("loss, oversample", [("ce", False), ("focal", False), ("ce", True), ("focal", True)])
def test_encoder_judge_learns_a_held_out_rule(loss, oversample):
    encoder = SimpleNamespace(dim=16, path="stub", source="stub")
    cfg = TrainConfig(epochs=40, lr=3e-3, batch_size=128, hidden=32, oversample_ratio=1.0)
    a, b, y = _pairs(1500, 0)
    judge = EncoderJudge(encoder, cfg, loss, oversample, seed=1).fit(a, b, y)
    ta, tb, ty = _pairs(500, 1)
    assert auroc(ty, judge.score(ta, tb)) > 0.85
    assert judge.train_log[-1] < judge.train_log[0]


def test_encoder_judge_is_order_free_and_seeded():
    encoder = SimpleNamespace(dim=16, path="stub", source="stub")
    a, b, y = _pairs(300, 2)
    cfg = TrainConfig(epochs=5, batch_size=64, hidden=8)
    one = EncoderJudge(encoder, cfg, "focal", True, seed=3).fit(a, b, y)
    two = EncoderJudge(encoder, cfg, "focal", True, seed=3).fit(a, b, y)
    np.testing.assert_allclose(one.score(a, b), one.score(b, a), rtol=1e-6)
    np.testing.assert_array_equal(one.score(a, b), two.score(a, b))


def test_safetensors_round_trip(tmp_path):
    encoder = SimpleNamespace(dim=16, path="stub", source="stub")
    a, b, y = _pairs(200, 4)
    judge = EncoderJudge(encoder, TrainConfig(epochs=3, hidden=8), "focal", True, seed=0).fit(a, b, y)
    path = tmp_path / "j.safetensors"
    judge.save(path, {"variant": "x"})
    back = load_encoder_judge(path, encoder=encoder)
    np.testing.assert_array_equal(back.score(a, b), judge.score(a, b))
    assert back.loss == "focal" and back.oversample is True
    judge.calibration = (0.5, -1.0)  # a calibrated judge keeps its map through the file
    judge.save(path, {"variant": "x"})
    back = load_encoder_judge(path, encoder=encoder)
    assert back.calibration == (0.5, -1.0)
    np.testing.assert_array_equal(back.score(a, b), judge.score(a, b))


def test_registry():
    assert judge_class("sbert_cosine") is CosineJudge
    assert judge_class("encoder") is EncoderJudge
    with pytest.raises(KeyError, match="sbert_cosine"):
        judge_class("oracle")
    a, b, _ = _pairs(10, 5)
    np.testing.assert_allclose(CosineJudge(None, None, "ce", False, 0).score(a, a), 1.0, rtol=1e-5)


def test_time_judge_divides_each_cost_by_what_it_timed():
    """Per prefix: the encoder's time over the prefixes encoded; per pair: the judge's time over the n(n-1)/2
    distinct pairs (what the simulator counts as judge calls)."""
    import time

    from deepprune.judges.evaluate import time_judge

    seen: list[list[str]] = []

    def embed(texts, batch):
        seen.append(list(texts))
        time.sleep(0.004 * len(texts))  # 4 ms a prefix
        return np.ones((len(texts), 16), dtype=np.float32)

    class Judge:
        def score(self, a, b, texts_a, texts_b):
            pairs = [(x.strip(), y.strip()) for x, y in zip(texts_a, texts_b)]
            assert pairs[:3] == [("a", "b"), ("a", "c"), ("a", "d")] and len(set(pairs)) == 28  # 8 choose 2
            assert len(texts_a) == len(texts_b) == len(a)  # row i of a and b is the pair (texts_a[i], texts_b[i])
            time.sleep(0.001 * len(a))  # 1 ms a pair
            return np.zeros(len(a))

    cost = time_judge(SimpleNamespace(embed=embed), Judge(), list("abcdefgh"), repeats=2)
    assert 0.004 <= cost["encode_seconds_per_prefix"] < 0.012  # per batch would be 0.032
    assert 0.001 <= cost["score_seconds_per_pair"] < 0.003  # 28 pairs; over the 8 prefixes it would be 0.0035
    assert seen == [[f"{t} " for t in "abcdefgh"]] * 2  # fresh strings every repeat: no encoder cache helps


_EMBED = """
import hashlib, sys
from deepprune.judges.encoder import SentenceEncoder
texts = [w * 3 for w in ("ab cd ef ", "abcdefgh ", "a1 b2 c3 ", "12345678 ", "x y z w v", "wait, 7! ")]
sys.stdout.write(hashlib.md5(SentenceEncoder(None, 64).embed(texts * 2, batch_size=2).tobytes()).hexdigest())
"""


def test_embeddings_do_not_depend_on_the_process_hash_seed():
    """Texts of one length are batched in a fixed order, not in a set's order (which PYTHONHASHSEED changes): other
    batch companions pad a text differently and move its embedding in the last bits (make run's embeddings did)."""
    import os
    import subprocess
    import sys

    digests = {subprocess.run([sys.executable, "-c", _EMBED], env={**os.environ, "PYTHONHASHSEED": seed}, check=True,
                              capture_output=True, text=True, timeout=300).stdout for seed in ("1", "2", "3")}
    assert len(digests) == 1, digests


def test_a_capped_judge_trains_on_few_pairs_per_problem_and_still_scores_every_pair(monkeypatch):
    """judge.train.max_pairs_per_problem caps the pairs each training fold fits on, the same rows for every variant;
    every pair still gets a held-out score (the prune stage replays them all)."""
    from deepprune.config import JudgeConfig
    from deepprune.judges.evaluate import PairData, cross_validate

    a, b, y = _pairs(600, 4)
    problems = np.array([f"p{i // 60}" for i in range(600)], dtype=object)  # 10 problems of 60 pairs
    folds = np.array([int(p[1:]) % 5 for p in problems])
    data = PairData([""] * 600, [""] * 600, a, b, y, folds, problems)
    cfg = JudgeConfig.model_validate({
        "truncation": {"strategy": "tokens", "k": 32}, "primary": "focal", "calibration": "none",
        "variants": {"sbert_cosine": {"kind": "sbert_cosine"}, "focal": {"kind": "encoder", "loss": "focal"},
                     "plain": {"kind": "encoder"}},
        "train": {"epochs": 2, "batch_size": 64, "hidden": 8, "max_pairs_per_problem": 12}})
    fitted: list[tuple[int, ...]] = []
    real_fit = EncoderJudge.fit

    def spy(self, emb_a, emb_b, labels, **kw):
        fitted.append(tuple(map(tuple, np.round(emb_a[:, :2], 6))))
        assert len(labels) == 8 * 12  # 8 training problems x 12 pairs
        return real_fit(self, emb_a, emb_b, labels, **kw)

    monkeypatch.setattr(EncoderJudge, "fit", spy)
    results = cross_validate(data, cfg, SimpleNamespace(dim=16, path="stub", source="stub"), seed=0)
    assert len(fitted) == 2 * 5  # two trained variants x five folds
    assert fitted[:5] == fitted[5:]  # the same training rows for both variants, fold by fold
    assert all(np.isfinite(r.oof_scores).all() for r in results.values())


def test_a_recipe_scores_the_same_whatever_its_name_and_whatever_else_is_cross_validated_beside_it():
    """The judge stage, an ablation cell and a sweep point cross-validate one recipe among different variant sets
    and under different names: its held-out scores must not depend on either (they once came from its position)."""
    from deepprune.config import JudgeConfig
    from deepprune.judges.evaluate import PairData, cross_validate

    a, b, y = _pairs(300, 5)
    problems = np.array([f"p{i // 30}" for i in range(300)], dtype=object)
    data = PairData([""] * 300, [""] * 300, a, b, y, np.array([int(p[1:]) % 3 for p in problems]), problems)
    stub = SimpleNamespace(dim=16, path="stub", source="stub")

    def scores(variants: dict, name: str) -> np.ndarray:
        cfg = JudgeConfig.model_validate({"truncation": {"strategy": "tokens", "k": 32}, "primary": name,
                                          "baseline": name,
                                          "variants": variants, "train": {"epochs": 3, "batch_size": 64, "hidden": 8}})
        return cross_validate(data, cfg, stub, seed=11)[name].oof_scores

    recipe = {"kind": "encoder", "loss": "focal", "oversample": True}
    alone = scores({"zz_point": recipe}, "zz_point")
    among = scores({"a_plain": {"kind": "encoder"}, "b_focal": {"kind": "encoder", "loss": "focal"},
                    "primary": recipe, "sbert_cosine": {"kind": "sbert_cosine"}}, "primary")
    np.testing.assert_array_equal(alone, among)
    other = scores({"zz_point": {"kind": "encoder", "loss": "focal"}}, "zz_point")
    assert not np.array_equal(alone, other)  # another recipe is another draw (and another model)
