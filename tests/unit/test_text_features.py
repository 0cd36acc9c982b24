"""Pair features read from the prefix texts (deepprune/judges/text_features.py) and the judges that use them."""

from types import SimpleNamespace

import numpy as np
import pytest
from pydantic import ValidationError

from deepprune.config import TrainConfig, VariantConfig
from deepprune.judges.encoder import EncoderJudge, load_encoder_judge
from deepprune.judges.text_features import numbers, shared_numbers, text_features
from deepprune.metrics import auroc

STUB = SimpleNamespace(dim=16, path="stub", source="stub")


def test_numbers_reads_decimals_fractions_dates_and_thousands_as_one_number_each():
    text = "So 1,250 apples at 0.5 each is 625. The date 12/31/2021, then 3/4 of 8: 6."
    assert numbers(text) == ["1250", "0.5", "625", "12/31/2021", "3/4", "8", "6"]
    # a comma between numbers is not a thousands separator; a minus is a sign only where no operand precedes it
    assert numbers("the point (1,2), roots 2,3,5") == ["1", "2", "2", "3", "5"]
    assert numbers("x = -2, and 3-2 = 1; 10-12") == ["-2", "3", "2", "1", "10", "12"]


def test_shared_numbers_are_symmetric_and_measure_what_they_say():
    a = ["We get 3 then 5 then 12", "nothing here", "x = 7"]
    b = ["First 5, so 12", "nor here", "x = 7"]
    out = shared_numbers(a, b)
    assert np.array_equal(out, shared_numbers(b, a))
    # {3, 5, 12} and {5, 12} share 2 of 3; both end on 12; the later halves {5, 12} and {12} share 1 of 2
    assert out[0].tolist() == pytest.approx([2 / 3, 1.0, 0.5])
    assert out[1].tolist() == [0.0, 0.0, 0.0]                    # no numbers: nothing shared, never a division by zero
    assert out[2].tolist() == [1.0, 1.0, 1.0]


def test_a_judge_with_features_refuses_to_score_without_the_texts():
    with pytest.raises(ValueError, match="need both prefix texts of each of the 2 pairs"):
        text_features(["shared_numbers"], ["1"], None, 2)
    assert text_features([], None, None, 4).shape == (4, 0)


def _numbers_pairs(n: int, seed: int):
    """Pairs whose label is whether their last numbers agree; the embeddings are noise."""
    rng = np.random.default_rng(seed)
    emb_a = rng.normal(size=(n, 16)).astype(np.float32)
    emb_b = rng.normal(size=(n, 16)).astype(np.float32)
    first = rng.integers(0, 50, size=n)
    same = rng.random(n) < 0.5
    second = np.where(same, first, first + 1 + rng.integers(0, 50, size=n))
    ta = [f"step 1 gives {rng.integers(100, 200)}, so the result is {x}" for x in first]
    tb = [f"we have {rng.integers(100, 200)} and then {x}" for x in second]
    return emb_a, emb_b, ta, tb, same.astype(np.int64)


def test_features_let_a_judge_learn_what_embeddings_do_not_carry(tmp_path):
    cfg = TrainConfig(epochs=30, lr=3e-3, batch_size=128, hidden=16)
    a, b, ta, tb, y = _numbers_pairs(1200, 0)
    ha, hb, hta, htb, hy = _numbers_pairs(400, 1)
    plain = EncoderJudge(STUB, cfg, "focal", True, seed=1).fit(a, b, y, ta, tb)
    reads = EncoderJudge(STUB, cfg, "focal", True, seed=1, features=["shared_numbers"]).fit(a, b, y, ta, tb)
    assert auroc(hy, plain.score(ha, hb, hta, htb)) < 0.6
    scores = reads.score(ha, hb, hta, htb)
    assert auroc(hy, scores) > 0.95
    path = tmp_path / "judge.safetensors"
    reads.save(path, {"variant": "numbers"})
    loaded = load_encoder_judge(path, STUB)
    assert loaded.features == ["shared_numbers"]
    np.testing.assert_allclose(loaded.score(ha, hb, hta, htb), scores, rtol=1e-6)
    with pytest.raises(ValueError, match="need both prefix texts"):
        loaded.score(ha, hb)


def test_params_name_features_only_for_trained_judges_and_only_known_ones():
    assert VariantConfig(kind="encoder", features=["shared_numbers"]).features == ["shared_numbers"]
    with pytest.raises(ValidationError, match="need a trained judge"):
        VariantConfig(kind="sbert_cosine", features=["shared_numbers"])
    with pytest.raises(ValidationError, match=r"unknown features \['digits'\]; known: \['shared_numbers'\]"):
        VariantConfig(kind="encoder", features=["digits"])
