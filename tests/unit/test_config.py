"""params.yaml is validated strictly, and it is the only source of defaults."""

import shutil
from pathlib import Path

import pytest
import yaml

from deepprune.config import ConfigError, load_params, read_params

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_params_are_valid():
    params = load_params(ROOT / "params.yaml")
    assert set(params.corpora) == {"math", "date", "live"}
    assert params.corpora["live"].importer == "live" and params.corpora["live"].dataset == "gsm8k"
    assert params.judge.primary in params.judge.variants


def test_a_corpus_cuts_its_own_prefixes_and_the_others_keep_the_global_ones(tmp_path):
    raw = read_params(ROOT / "params.yaml")
    raw["corpora"]["date"].update(tokens_k=[16, 32], truncation={"strategy": "tokens", "k": 16})
    raw["ablate"]["table_k"]["tokens"] = 32  # every corpus builds 32
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    params = load_params(tmp_path / "params.yaml")
    assert (params.tokens_k("date"), params.truncation("date").k) == ([16, 32], 16)
    assert (params.tokens_k("math"), params.truncation("math")) == ([32, 128], params.judge.truncation)


@pytest.mark.parametrize("edit, message", [
    (lambda p: p["judge"]["train"].update(epochz=3), "judge.train.epochz"),
    (lambda p: p["judge"].update(primary="nope"), "primary 'nope'"),
    (lambda p: p["corpora"]["date"]["answer"].pop("pattern"), "needs a pattern"),
    (lambda p: p["label"].update(folds=1), "label.folds"),
    (lambda p: p["online"].update(corpora=["math"]), "online.corpora: 'math' is a recorded corpus"),
    (lambda p: p["online"]["judge"].update(corpus="nope"), "online.judge.corpus: 'nope'"),
    (lambda p: p["online"].update(k=999), r"online.k \(999\) must be below"),
    (lambda p: p["corpora"]["live"].update(limit=3), r"corpora.live.limit \(3\) keeps fewer problems of corpus 'live' "
                                                     r"than label.folds \(5\)"),
    (lambda p: p["sample"].update(limit=4), r"sample.limit \(4\) keeps fewer problems of corpus '\w+' than label.folds"),
    (lambda p: p["sweep"].update(metric="tnr_at_fnr"),
     r"sweep.metric: 'tnr_at_fnr' is not a metric .*judge.fnr=0.2.*valid names: auroc, tnr_at_fnr_0.2, tnr_at_0.5, "
     r"tpr_at_0.5, accuracy_at_0.5"),
    (lambda p: p["sweep"].update(metric="tnr_at_fnr_0.2") or p["judge"].update(fnr=0.1),
     r"sweep.metric: 'tnr_at_fnr_0.2' .*valid names: auroc, tnr_at_fnr_0.1,"),
    (lambda p: p["label"].pop("reasoning_words"), "label.reasoning_words: Field required"),
    # issue 12's bad-params table: every range, regex, placeholder, device and type is refused, naming the key
    (lambda p: p["label"].update(tokens_k=[-5]), r"label.tokens_k.0: Input should be greater than or equal to 1"),
    (lambda p: p["label"].update(tokens_k=[0]), r"label.tokens_k.0: Input should be greater than or equal to 1"),
    (lambda p: p["label"].update(reasoning_words_k=[]), r"label.reasoning_words_k: List should have at least 1"),
    (lambda p: p["prune"].update(taus=[0.5, 1.5]), r"prune.taus.1: Input should be less than or equal to 1"),
    (lambda p: p["prune"].update(tau=-0.1), r"prune.tau: Input should be greater than or equal to 0"),
    (lambda p: p["online"].update(taus=[2]), r"online.taus.0: Input should be less than or equal to 1"),
    (lambda p: p["judge"].update(threshold=7), r"judge.threshold: Input should be less than or equal to 1"),
    (lambda p: p["prune"].update(sbert_taus=[1.2]), r"prune.sbert_taus.0: Input should be less than or equal to 1"),
    (lambda p: p["corpora"]["date"]["answer"].update(pattern="(unclosed"),
     r"corpora.date.answer: Value error, pattern '\(unclosed' is not a valid regex"),
    (lambda p: p["corpora"]["date"]["answer"].update(pattern=r"\d+/\d+"),
     r"corpora.date.answer: Value error, pattern .* has no group"),
    (lambda p: p["sample"]["prompts"].update(math="Solve it."),
     r"sample.prompts: Value error, prompts.math must contain \{question\}"),
    (lambda p: p["sample"].update(device="tpu9"), r"sample.device: Value error, unknown device 'tpu9'"),
    (lambda p: p["judge_lm"].update(device="cuda:x"), r"judge_lm.device: Value error, unknown device 'cuda:x'"),
    (lambda p: p.update(seed=True), r"seed: Input should be a valid integer"),
    (lambda p: p.update(threads=0), r"threads: Input should be greater than or equal to 1"),
    (lambda p: p["prune"].update(repetitions="50"), r"prune.repetitions: Input should be a valid integer"),
    (lambda p: p["judge"]["train"].update(lr=True), r"judge.train.lr: Input should be a valid number"),
    (lambda p: p.update(sede=1), r"sede: Extra inputs are not permitted"),
    # per-corpus prefixes: a corpus's truncation must be one its own prefixes have
    (lambda p: p["corpora"]["date"].update(truncation={"strategy": "tokens", "k": 48}),
     r"corpora.date.truncation: corpus 'date' has no tokens prefix with k=48 \(label.tokens_k is \[32, 128\]\)"),
    (lambda p: p["corpora"]["date"].update(tokens_k=[16]),
     r"judge.truncation: corpus 'date' has no tokens prefix with k=128 \(corpora.date.tokens_k is \[16\]\)"),
    (lambda p: p["corpora"]["date"].update(truncation={"strategy": "reasoning_words", "k": 15}),
     r"corpora.date.truncation: corpus 'date' has no reasoning_words prefix with k=15 \(label.reasoning_words_k is "
     r"\[25\]\)"),
    # the online stage cuts its judge's prefixes by tokens: the judge's corpus must be trained on token prefixes
    (lambda p: p["corpora"]["math"].update(truncation={"strategy": "reasoning_words", "k": 25}),
     r"corpora.math.truncation: online.judge.corpus 'math' has its judges trained on reasoning_words prefixes"),
    (lambda p: p["corpora"]["date"]["answer"].update(gold_pattern="####"),
     r"corpora.date.answer: Value error, gold_pattern '####' has no group"),
])
def test_bad_params_name_the_key(tmp_path, edit, message):
    raw = read_params(ROOT / "params.yaml")
    edit(raw)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=message):
        load_params(path)


def test_params_keep_their_meaning_through_dvcs_own_yaml_writer(tmp_path):
    """`dvc exp run -S key=value` rewrites params.yaml with DVC's writer (YAML 1.2: quotes dropped where 1.2 needs
    none, null written as an empty value, long lines re-wrapped); every value must read back the same."""
    from dvc.utils.serialize import modify_yaml

    path = tmp_path / "params.yaml"
    path.write_text((ROOT / "params.yaml").read_text())
    with modify_yaml(path) as doc:
        doc["prune"]["repetitions"] = 10
    assert "yes: yes" in path.read_text()  # unquoted: a YAML 1.1 reader would see the boolean True here
    expected = read_params(ROOT / "params.yaml")
    expected["prune"]["repetitions"] = 10
    assert read_params(path) == expected
    params = load_params(path)
    assert (params.judge_lm.prompt.yes, params.judge_lm.prompt.no, params.prune.repetitions) == ("yes", "no", 10)


def test_params_read_the_same_with_ruamels_c_parser_as_in_pure_python(tmp_path):
    """read_params parses with ruamel's C parser, as DVC does where ruamel.yaml.clib is installed: the project's
    params, its profiles and DVC's rewrite of them give the same values as ruamel's pure-Python parser, and the C
    parser is really there (a missing wheel would make every DVC stage slower, not fail)."""
    import importlib.util

    from dvc.utils.serialize import modify_yaml
    from ruamel.yaml import YAML

    assert importlib.util.find_spec("_ruamel_yaml") is not None, "ruamel.yaml.clib is a dependency (pyproject.toml)"
    rewritten = tmp_path / "params.yaml"
    rewritten.write_text((ROOT / "params.yaml").read_text())
    with modify_yaml(rewritten) as doc:  # DVC's writer: quotes dropped, null as an empty value
        doc["seed"] = 7
    for path in [ROOT / "params.yaml", rewritten, *sorted((ROOT / "profiles").glob("*.yaml"))]:
        assert read_params(path) == YAML(typ="safe", pure=True).load(path.read_text()), path


def _write(tmp_path, edit):
    raw = read_params(ROOT / "params.yaml")
    edit(raw)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("metric", ["tnr_at_fnr_0.2", "accuracy_at_0.5", "auroc"])
def test_sweep_metric_takes_every_name_the_judge_summary_has(tmp_path, metric):
    assert load_params(_write(tmp_path, lambda p: p["sweep"].update(metric=metric))).sweep.metric == metric


def _defaults_differing_from(model_type, given: dict, where: str) -> list[str]:
    """Schema fields whose default differs from the value params.yaml gives, walking nested sections. Entries of
    a user's map (corpora, judge.variants) are records of their own, not defaults, and are not walked."""
    from pydantic import BaseModel
    from pydantic_core import PydanticUndefined

    out = []
    for name, field in model_type.model_fields.items():
        key = field.alias or name
        if key not in given:
            continue  # params.yaml leaves it to the default: one source by construction
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            out += _defaults_differing_from(annotation, given[key], f"{where}{key}.")
        elif field.default is not PydanticUndefined or field.default_factory is not None:
            default = field.get_default(call_default_factory=True)
            if default != given[key]:
                out.append(f"{where}{key}: schema {default!r} != params.yaml {given[key]!r}")
    return out


def test_the_schema_has_no_default_that_differs_from_params_yaml():
    from deepprune.config import Params

    shipped = read_params(ROOT / "params.yaml")
    load_params(ROOT / "params.yaml")  # every given value is valid
    assert _defaults_differing_from(Params, shipped, "") == []
    # the walk sees what it should: a wrong default anywhere in a section is reported
    from deepprune.config import TrainConfig

    changed = {**shipped["judge"]["train"], "epochs": 300}
    assert _defaults_differing_from(TrainConfig, changed, "judge.train.") == [
        "judge.train.epochs: schema 30 != params.yaml 300"]


def test_reasoning_words_come_from_params_and_every_one_is_built_into_prefixes():
    params = load_params(ROOT / "params.yaml")
    assert params.label.reasoning_words[:3] == ["wait", "but", "however"] and len(params.label.reasoning_words) == 19
    from deepprune.truncate import first_k_reasoning_words, reasoning_word_pattern

    pattern = reasoning_word_pattern(params.label.reasoning_words)
    for word in params.label.reasoning_words:
        assert first_k_reasoning_words(f"x. {word.capitalize()} y.", 1, pattern) == f"{word.capitalize()} y."


def test_the_paper_profile_applies_over_params_yaml_and_validates():
    """`make run-paper`: profiles/paper.yaml becomes `dvc exp run -S` overrides (DVC's own grammar), a dict with
    dotted keys (sweep.grid) included, and the result is valid params."""
    from flows.pipeline import params_with_overrides, profile_overrides

    overrides = profile_overrides("paper")
    assert "label.reasoning_words_k=[15,25,35]" in overrides
    params = params_with_overrides(overrides)
    assert params.sweep.grid["focal.alpha"] == [0.25, 0.5, 0.75] and params.sweep.grid["oversample"] == [False, True]
    assert params.judge_lm.corpora == ["math", "date"] and params.prune.repetitions == 50
    default = load_params(ROOT / "params.yaml")
    assert default.prune.repetitions < params.prune.repetitions  # the default is the laptop profile
    with pytest.raises(ConfigError, match="--profile nope: .*profiles: paper"):
        profile_overrides("nope")


def test_write_params_sets_scalars_in_place_keeping_every_other_line_and_refuses_bad_values(tmp_path):
    """`make use-cluster`: params.yaml's cluster keys changed on their own lines, comments kept; a value that fails
    validation, or a key that is not there, leaves the file as it was."""
    from flows.pipeline import write_params

    path = tmp_path / "params.yaml"
    shutil.copyfile(ROOT / "params.yaml", path)
    before = path.read_text(encoding="utf-8").splitlines()
    params = write_params(["cluster.task_runner=dask", "cluster.address=tcp://127.0.0.1:8786"], path)
    assert (params.cluster.task_runner, params.cluster.address) == ("dask", "tcp://127.0.0.1:8786")
    after = path.read_text(encoding="utf-8").splitlines()
    changed = [(a, b) for a, b in zip(before, after) if a != b]
    assert len(before) == len(after) and len(changed) == 2
    assert all(a.split("#")[1] == b.split("#")[1] for a, b in changed)  # the comments stay
    assert read_params(path) == {**read_params(ROOT / "params.yaml"),
                                 "cluster": {**read_params(ROOT / "params.yaml")["cluster"], "task_runner": "dask",
                                             "address": "tcp://127.0.0.1:8786"}}
    text = path.read_text(encoding="utf-8")
    for bad, message in ((["cluster.address=127.0.0.1:1"], "a Dask scheduler address is tcp://host:port"),
                         (["cluster.workers=3"], "no key 'workers' under 'cluster'"),
                         (["clusters.address=null"], "no section 'clusters'"),
                         (["cluster.task_runner"], "an override is section.key=value")):
        with pytest.raises(ConfigError, match=message):
            write_params(bad, path)
        assert path.read_text(encoding="utf-8") == text
    write_params(["cluster.task_runner=threads", "cluster.address=null"], path)
    assert read_params(path) == read_params(ROOT / "params.yaml")


def test_set_scalars_takes_the_layouts_dvcs_writer_leaves_and_refuses_blocks():
    from deepprune.config import set_scalars

    # an empty value is DVC's null; a comment at column 0 stays inside its section; other sections' keys are not hit
    text = "cluster:\n# where cells run\n  task_runner: threads   # note\n  address:\n  max_workers: 2\nx:\n  address: y\n"
    assert set_scalars(text, {"cluster.address": "tcp://h:1", "cluster.task_runner": "dask"}) == (
        "cluster:\n# where cells run\n  task_runner: dask      # note\n  address: tcp://h:1\n  max_workers: 2\n"
        "x:\n  address: y\n")
    assert set_scalars("cluster:\r\n  address: null  # c\r\n", {"cluster.address": "h:1"}) == \
        "cluster:\r\n  address: h:1   # c\r\n"  # CRLF lines stay CRLF, the comment in its column
    assert set_scalars("a:\n  s: x\n", {"a.s": "two words"}) == 'a:\n  s: "two words"\n'
    for text in ("label:\n  tokens_k:\n  - 32\n", "label:\n  tokens_k: [32]\n", "label:\n  tokens_k:\n    a: 1\n"):
        with pytest.raises(ConfigError, match="not a scalar on its own line"):
            set_scalars(text, {"label.tokens_k": 1})
