"""One token unit per corpus: a live corpus counts, cuts prefixes and prunes in its engine's tokens."""

import pytest
from pydantic import ValidationError

from deepprune.config import CorpusConfig
from deepprune.tokens import get_tokenizer, token_unit
from deepprune.truncate import build_prefixes


def test_a_live_corpus_counts_in_its_engines_tokens_and_a_recorded_one_in_its_own():
    assert CorpusConfig(importer="live", dataset="gsm8k", model="m").tokenizer == "engine"
    with pytest.raises(ValidationError, match="engine's tokens"):
        CorpusConfig(importer="live", dataset="gsm8k", model="m", tokenizer="qwen")
    with pytest.raises(ValidationError, match="engine's tokens"):
        CorpusConfig(importer="generic", path="x.json", model="m", tokenizer="engine",
                     fields={"problem_id": "id", "text": "t"})
    assert token_unit("qwen", "transformers", "/models/x") == "qwen"  # a recorded corpus keeps its own
    assert token_unit("engine", "transformers", "/models/x") == "/models/x"
    assert token_unit("engine", "openai", None, "/tok") == "/tok"
    with pytest.raises(ValueError, match="sample.server.tokenizer_path"):
        token_unit("engine", "openai", None, None)


@pytest.mark.generation
def test_live_prefixes_are_cut_in_the_engines_tokens(tiny_lm):
    from deepprune.sampling.engines import GenerationSettings, GenJob, TransformersEngine

    engine = TransformersEngine(str(tiny_lm), GenerationSettings(0.8, 0.95, 0), batch_size=2)
    prompt = engine.render([{"role": "user", "content": "Count."}])
    trace = engine.generate([GenJob(prompt, 40, 3)])[0]
    unit = get_tokenizer(token_unit("engine", "transformers", str(tiny_lm)))
    ids = unit.encode(trace.text)
    assert len(ids) == engine.count_tokens(trace.text)  # lengths and k in one unit
    prefix = build_prefixes({("p", "t"): trace.text}, [8], [], [], unit)[("p", "t")]["tokens_8"]
    assert unit.encode(prefix)[:8] == ids[:8] and len(unit.encode(prefix)) <= 9
    qwen = get_tokenizer("qwen")
    assert len(qwen.encode(trace.text)) != len(ids)  # the unit the live corpus used to be cut in differs
