"""The causal-LM judge on a tiny random Llama (the packaged SmolLM2 tokenizer): label-token scoring, batching,
training, checkpoint resume and the errors a user can hit."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from deepprune.config import JudgeLMConfig, read_params
from deepprune.judges.causal_lm import CausalLMJudge, load_causal_lm, render_prompt
from tests.conftest import ROOT

pytestmark = pytest.mark.generation


def _cfg(path, **train) -> JudgeLMConfig:
    raw = read_params(ROOT / "params.yaml")["judge_lm"]
    raw["model_path"] = str(path)
    raw["train"].update({"steps": 4, "batch_size": 2, "checkpoint_every": 0, **train})
    return JudgeLMConfig.model_validate(raw)


@pytest.fixture(scope="module")
def lm(tiny_lm):
    return load_causal_lm(str(tiny_lm), "float32", "cpu")


def test_score_is_p_yes_over_the_two_label_tokens_and_batching_does_not_change_it(tiny_lm, lm):
    model, tok = lm
    judge = CausalLMJudge(_cfg(tiny_lm), seed=0, model=model, tokenizer=tok)
    a = ["So x = 4 and", "We first compute the sum of the digits which", "Hmm"]
    b = ["Thus x is 4", "Let's think step by step.", "The answer must be 7 because the"]
    batched = judge.score_texts(a, b, batch_size=3)  # rows of different lengths: left padding
    for i in range(3):
        ids = tok.encode(render_prompt(tok, judge.cfg.prompt, a[i], b[i]), add_special_tokens=False)
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, -1]
        expected = torch.sigmoid(logits[judge.yes_id] - logits[judge.no_id]).item()
        assert batched[i] == pytest.approx(expected, abs=1e-5)
    assert ((batched > 0) & (batched < 1)).all()
    assert judge.scoring.pairs == 3 and judge.scoring.pairs_per_second > 0


def test_render_prompt_uses_the_chat_template_and_ends_before_the_answer(tiny_lm, lm):
    _, tok = lm
    cfg = _cfg(tiny_lm)
    text = render_prompt(tok, cfg.prompt, "PREFIX-A", "PREFIX-B")
    assert "PREFIX-A" in text and "PREFIX-B" in text and cfg.prompt.system in text
    assert text.rstrip().endswith("assistant")  # the generation prompt: the next token is the label


@pytest.mark.parametrize("lora", [True, False])
@pytest.mark.slow  # fine-tunes a model
def test_fine_tuning_lowers_the_loss_and_separates_the_classes(tiny_lm, lm, lora):
    model, tok = lm
    cfg = _cfg(tiny_lm, steps=30, batch_size=8, lr=2e-2 if lora else 3e-3, loss="focal", oversample=True,
               lora={"enabled": lora, "r": 4, "alpha": 8, "dropout": 0.0,
                     "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]})
    rng = np.random.default_rng(0)
    words = ["seven", "twelve", "nine", "forty", "three", "eighty"]
    a = [f"the answer is {rng.choice(words)}" for _ in range(40)]
    labels = rng.integers(0, 2, 40)
    b = [x if y else "I am not sure yet, let me restart" for x, y in zip(a, labels)]  # a learnable rule
    judge = CausalLMJudge(cfg, seed=1, model=copy.deepcopy(model), tokenizer=tok)
    before = judge.score_texts(a, b)
    judge.fit_texts(a, b, labels)
    after = judge.score_texts(a, b)
    assert np.mean(judge.train_log[-5:]) < np.mean(judge.train_log[:5])
    gap = lambda s: s[labels == 1].mean() - s[labels == 0].mean()
    assert gap(after) > gap(before) + 0.1
    assert judge.training.pairs == 30 * 8


@pytest.mark.slow  # fine-tunes a model
def test_a_killed_fine_tune_resumes_from_its_checkpoint_and_ends_where_an_unbroken_one_does(tiny_lm, lm, tmp_path):
    model, tok = lm
    cfg = _cfg(tiny_lm, steps=4, batch_size=2, checkpoint_every=1)
    a, b = ["x is 3", "y is 5", "so z", "we get 9"], ["x is 3", "no idea", "so z", "we get 2"]
    labels = np.array([1, 0, 1, 0])
    whole = CausalLMJudge(cfg, 2, copy.deepcopy(model), tok).fit_texts(a, b, labels)

    class Killed(Exception):
        pass

    def kill_after_two(step, loss):
        if step == 2:
            raise Killed

    with pytest.raises(Killed):
        CausalLMJudge(cfg, 2, copy.deepcopy(model), tok).fit_texts(a, b, labels, tmp_path, on_step=kill_after_two)
    seen = []
    resumed = CausalLMJudge(cfg, 2, copy.deepcopy(model), tok).fit_texts(a, b, labels, tmp_path,
                                                                         on_step=lambda s, _: seen.append(s))
    assert seen == [3, 4]  # steps 1 and 2 came from the checkpoint
    saved = list(tmp_path.iterdir())  # one checkpoint, safetensors with a JSON state: nothing unpickled on load
    assert len(saved) == 1 and saved[0].suffix == ".safetensors"
    from safetensors import safe_open

    with safe_open(str(saved[0]), framework="pt") as handle:
        assert json.loads(handle.metadata()["state"])["step"] == 4
    for name, value in whole.trainable_state().items():
        assert torch.allclose(value, resumed.trainable_state()[name], atol=1e-6), name
    assert resumed.train_log == pytest.approx(whole.train_log, abs=1e-6)


def test_clear_errors(tiny_lm, lm, tmp_path):
    model, tok = lm
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_causal_lm(str(tmp_path / "nowhere"))
    raw = _cfg(tiny_lm).model_dump()
    raw["prompt"]["yes"] = "definitely the same"
    with pytest.raises(ValueError, match="exactly one token"):
        CausalLMJudge(JudgeLMConfig.model_validate(raw), 0, model, tok)
    raw = _cfg(tiny_lm).model_dump()
    raw["max_length"] = 40
    with pytest.raises(ValueError, match="over judge_lm.max_length"):
        CausalLMJudge(JudgeLMConfig.model_validate(raw), 0, model, tok).score_texts(["a " * 50], ["b"])
    raw = _cfg(tiny_lm).model_dump()
    raw["prompt"]["user"] = "no slots here"
    with pytest.raises(ValueError, match="trace_a"):
        JudgeLMConfig.model_validate(raw)


@pytest.mark.slow  # fine-tunes a model
def test_a_random_qwen3_built_from_a_config_serves_as_the_judge(tiny_lm):
    """The GPU check's path (no download: BPE trained here, Qwen3 from a config), run tiny on CPU."""
    from deepprune.models import random_qwen3, train_tokenizer

    texts = ["So the answer is 42.", "Let x be the number of apples; then 3x = 12, so x = 4."] * 20
    tok = train_tokenizer(texts, vocab_size=300)
    assert len(tok.encode("yes", add_special_tokens=False)) == 1
    model = random_qwen3(tok, "tiny", seed=0)
    judge = CausalLMJudge(_cfg(tiny_lm, steps=2), 0, model, tok)
    scores = judge.score_texts(texts[:4], texts[1:5])
    judge.fit_texts(texts[:4], texts[1:5], np.array([0, 1, 0, 1]))
    assert scores.shape == (4,) and len(judge.train_log) == 2


def test_a_gguf_loads_through_a_dequantized_copy_with_the_same_tensors_and_tokenizer(tmp_path, monkeypatch):
    """The packaged GGUF through its cached copy (deepprune.judges.causal_lm.dequantized_copy) is the model
    transformers makes of the file itself: every tensor equal, the same ids and chat template, the same logits.
    The copy is made once; a second call returns it without loading the file."""
    from deepprune.judges import causal_lm
    from deepprune.judges.causal_lm import _load_pretrained, dequantized_copy, packaged_model_path

    gguf = packaged_model_path()
    direct_model, direct_tok = _load_pretrained(gguf, torch.float32)
    monkeypatch.chdir(tmp_path)
    model, tok = load_causal_lm(gguf, "float32", "cpu")
    copies = list((tmp_path / ".cache" / "models").iterdir())
    assert len(copies) == 1 and copies[0].name.startswith("SmolLM2-135M-Instruct.Q4_1-")
    direct, cached = direct_model.state_dict(), model.state_dict()
    assert direct.keys() == cached.keys()
    assert all(torch.equal(direct[k], cached[k]) for k in direct)
    text = "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May."
    assert tok.encode(text) == direct_tok.encode(text)
    messages = [{"role": "user", "content": text}]
    assert tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == \
        direct_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = torch.tensor([tok.encode(text)])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, direct_model(ids).logits)
    monkeypatch.setattr(causal_lm, "_load_pretrained", lambda *a: pytest.fail("the copy was made again"))
    assert Path(dequantized_copy(gguf)).resolve() == copies[0].resolve()
    assert not [p for p in (tmp_path / ".cache" / "models").iterdir() if p.name.endswith(".partial")]
