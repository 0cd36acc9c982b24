"""Every output path of the pipeline, relative to the project root (each stage's working directory). Flows, tasks,
the report and the tests take paths from here; `dvc.yaml` spells the same paths, and tests/unit/test_paths.py
checks that every stage's outs and metrics there equal these (`stage_outputs`).

A stage's folder outputs appear whole or not at all: while the stage runs (`staged_outputs`, entered by every
stage process), the folder functions below name a hidden sibling (`data/judge/.math.partial`), which replaces the
folder only when the stage has finished. A stage killed midway leaves no half-written folder under the real name,
and its next run deletes the leftover sibling first. Single files are written atomically by deepprune.io."""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

_STAGING: dict[str, str] = {}  # folder output -> the sibling its running stage writes instead
_STAGING_LOCK = threading.Lock()


def _written(folder: str) -> str:
    """folder, or the hidden sibling its stage is writing while that stage runs in this process."""
    return _STAGING.get(folder, folder)


def published(path: str) -> str:
    """The path a stage's output will have once its stage ends: path itself, or, for a file inside a staging
    sibling (_written), the same file in the folder that sibling replaces."""
    for folder, tmp in _STAGING.items():
        if path == tmp or path.startswith(f"{tmp}/"):
            return folder + path[len(tmp):]
    return path


PACKAGED = "packaged:"
PROJECT_ROOT = Path(__file__).resolve().parents[1]


def _site_dirs() -> list[Path]:
    import sysconfig

    return [Path(sysconfig.get_paths()[key]).resolve() for key in ("purelib", "platlib")]


def portable(path: str | os.PathLike) -> str:
    """A model or tokenizer path as outputs record it, the same on every clone: a file of an installed package as
    'packaged:<package>/<file>', one inside the project relative to it, any other path as given (the user's own).
    An absolute path into this clone's .venv in an output made every clone's outputs differ."""
    text = str(path)
    if text.startswith(PACKAGED):
        return text
    resolved = Path(text).resolve()
    for site in _site_dirs():
        if resolved.is_relative_to(site):
            return PACKAGED + resolved.relative_to(site).as_posix()
    if resolved.is_relative_to(PROJECT_ROOT):
        return resolved.relative_to(PROJECT_ROOT).as_posix()
    return text


def resolve_portable(path: str) -> str:
    """The file a `portable` path names on this machine (a 'packaged:' one in this environment's packages)."""
    if not path.startswith(PACKAGED):
        return path
    rest = path[len(PACKAGED):]
    for site in _site_dirs():
        if (site / rest).exists():
            return str(site / rest)
    raise FileNotFoundError(f"{path}: no installed package holds {rest} (make setup installs the packaged models)")


def _sibling(path: str, tag: str) -> Path:
    path_ = Path(path)
    return path_.with_name(f".{path_.name}.{tag}")

# ---- sample ---------------------------------------------------------------------------------------------------


def traces(corpus: str) -> str:
    """The trace file every later stage reads (JSONL, deepprune/data/schema.py)."""
    return f"data/traces/{corpus}.jsonl"


def traces_meta(corpus: str) -> str:
    """Engine identity and sampling settings of the trace file."""
    return f"data/traces/{corpus}.meta.json"


def sample_cache(corpus: str) -> str:
    """Finished live problems, checkpointed (outside the outs: DVC deletes those before a rerun)."""
    return f".cache/sample/{corpus}"


def model_cache() -> str:
    """Dequantized copies of GGUF models (deepprune.judges.causal_lm.dequantized_copy): made once, loaded fast."""
    return ".cache/models"


def server_log() -> str:
    """The log of an OpenAI-compatible server the platform starts itself."""
    return ".cache/server.log"


# ---- label and embed ------------------------------------------------------------------------------------------


def labels_dir(corpus: str) -> str:
    return _written(f"data/labels/{corpus}")


def pairs(corpus: str) -> str:
    """Labelled within-problem pairs with their folds."""
    return f"{labels_dir(corpus)}/pairs.jsonl"


def prefixes(corpus: str) -> str:
    """Every configured prefix of every trace."""
    return f"{labels_dir(corpus)}/prefixes.jsonl"


def embeddings(corpus: str) -> str:
    """Every prefix encoded once, shared by judge, sweep and ablate."""
    return f"data/embeddings/{corpus}.npz"


# ---- judges ---------------------------------------------------------------------------------------------------


def judge_dir(corpus: str) -> str:
    return _written(f"data/judge/{corpus}")


def judge_scores(corpus: str) -> str:
    """Out-of-fold scores of every judge variant on every pair."""
    return f"{judge_dir(corpus)}/scores.jsonl"


def judge_folds(corpus: str) -> str:
    """Per-fold metrics, ROC points and training losses."""
    return f"{judge_dir(corpus)}/folds.json"


def judge_model(corpus: str, variant: str) -> str:
    """A trained judge variant fitted on every pair of the corpus."""
    return f"{judge_dir(corpus)}/models/{variant}.safetensors"


def judge_lm_dir(corpus: str) -> str:
    return _written(f"data/judge_lm/{corpus}")


def judge_lm_scores(corpus: str) -> str:
    """The held-out pairs the causal-LM judge was scored on, with its scores."""
    return f"{judge_lm_dir(corpus)}/scores.jsonl"


def judge_lm_model(corpus: str, fold: int) -> str:
    """The fine-tuned weights of the fold-th held-out fold."""
    return f"{judge_lm_dir(corpus)}/models/fold{fold}.safetensors"


def judge_lm_train_loss(corpus: str) -> str:
    return f"{judge_lm_dir(corpus)}/train_loss.json"


def judge_lm_checkpoints(corpus: str) -> str:
    """Resumable fine-tuning state (outside the outs: DVC deletes those before a rerun)."""
    return f".cache/judge_lm/{corpus}"


# ---- sweep and ablate -----------------------------------------------------------------------------------------


def sweep_dir(corpus: str) -> str:
    return _written(f"data/sweep/{corpus}")


def sweep_results(corpus: str) -> str:
    return f"{sweep_dir(corpus)}/results.json"


def sweep_best(corpus: str) -> str:
    """The best sweep point fitted on every pair."""
    return f"{sweep_dir(corpus)}/best.safetensors"


def ablate_dir(corpus: str) -> str:
    return _written(f"data/ablate/{corpus}")


def ablate_results(corpus: str) -> str:
    return f"{ablate_dir(corpus)}/results.json"


# ---- prune and online -----------------------------------------------------------------------------------------


def prune_dir(corpus: str) -> str:
    return _written(f"data/prune/{corpus}")


def prune_results(corpus: str) -> str:
    return f"{prune_dir(corpus)}/results.json"


def online_dir(corpus: str) -> str:
    return _written(f"data/online/{corpus}")


def online_outcomes(corpus: str) -> str:
    return f"{online_dir(corpus)}/outcomes.jsonl"


def online_meta(corpus: str) -> str:
    return f"{online_dir(corpus)}/meta.json"


def online_comparison(corpus: str) -> str:
    return f"{online_dir(corpus)}/comparison.md"


def online_cache(corpus: str) -> str:
    """Finished (method, problem) outcomes, checkpointed (outside the outs)."""
    return f".cache/online/{corpus}"


def transfer_dir() -> str:
    return _written("data/transfer")


def transfer_results() -> str:
    """Every (train corpus, test corpus, judge variant) cell of the transfer matrix, with its metrics."""
    return f"{transfer_dir()}/results.json"


# ---- metrics and report ---------------------------------------------------------------------------------------


def metrics(stage: str, corpus: str | None) -> str:
    """A stage's DVC metrics file for one corpus, or for all (a stage that runs once: transfer); committed to git,
    `dvc metrics show` reads it."""
    return f"reports/metrics/{stage}_{corpus}.json" if corpus else f"reports/metrics/{stage}.json"


def metrics_dir() -> str:
    return "reports/metrics"


def timings(stage: str, corpus: str | None) -> str:
    """What one stage run measured: its wall time, its own work, the overhead around it, and every timing key its
    outputs would otherwise carry (deepprune.metric_names.is_timing). Not a DVC output and not in git: timings
    change from run to run, results do not."""
    return f"reports/timings/{stage}_{corpus}.json" if corpus else f"reports/timings/{stage}.json"


def timings_table() -> str:
    """The per-stage table `make run` prints at its end (markdown; not in git)."""
    return "reports/timings.md"


def report_dir(only: str | None = None) -> str:
    """A report of chosen corpora (`python -m flows.report --corpus a,b`, only = 'a+b'): a folder of its own,
    outside DVC's outputs, so it never touches the pipeline's report."""
    return _written(f"reports/corpora/{only}")


def report_index(only: str | None = None) -> str:
    """The report page (self-contained, opens offline): the pipeline's, or that of chosen corpora."""
    return "reports/index.html" if only is None else f"{report_dir(only)}/index.html"


def figures_dir(only: str | None = None) -> str:
    return _written("reports/figures") if only is None else f"{report_dir(only)}/figures"


def figure(name: str, only: str | None = None) -> str:
    """One report figure as self-contained HTML."""
    return f"{figures_dir(only)}/{name}.html"


# ---- what each stage writes, and how ---------------------------------------------------------------------------


def stage_outputs(stage: str, corpus: str | None) -> tuple[list[str], list[str]]:
    """A stage's DVC outs and metrics for one corpus (the report: for all), as dvc.yaml lists them."""
    c = corpus or ""
    table = {
        "sample": lambda: ([traces(c), traces_meta(c)], [metrics("sample", c)]),
        "label": lambda: ([labels_dir(c)], [metrics("label", c)]),
        "embed": lambda: ([embeddings(c)], [metrics("embed", c)]),
        "judge": lambda: ([judge_dir(c)], [metrics("judge", c)]),
        "judge_lm": lambda: ([judge_lm_dir(c)], [metrics("judge_lm", c)]),
        "sweep": lambda: ([sweep_dir(c)], [metrics("sweep", c)]),
        "ablate": lambda: ([ablate_dir(c)], [metrics("ablate", c)]),
        "prune": lambda: ([prune_dir(c)], [metrics("prune", c)]),
        "online": lambda: ([online_dir(c)], [metrics("online", c)]),
        "transfer": lambda: ([transfer_dir()], [metrics("transfer", None)]),
        "report": lambda: ([report_index(), figures_dir()], []) if corpus is None else ([report_dir(corpus)], []),
    }
    if stage not in table:
        raise KeyError(f"unknown stage {stage!r}; known: {sorted(table)}")
    return table[stage]()



def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _clear_leftovers(output: str) -> None:
    """Delete what a killed run of this output's stage left beside it: its staging folder, a folder it was about to
    replace, and the temporary files of an atomic write (`.<name>.<random>.tmp`, deepprune.io.atomic_open)."""
    out = Path(output)
    if not out.parent.is_dir():
        return
    for leftover in out.parent.glob(f".{out.name}.*"):
        if leftover.name.endswith((".partial", ".replaced", ".tmp")):
            _remove(leftover)


@contextlib.contextmanager
def staged_outputs(stage: str, corpus: str | None) -> Iterator[None]:
    """Run a stage so that its outputs appear whole or not at all (the module docstring says how).

    On entry the leftovers of a killed earlier run are deleted. On success each folder output is swapped in (the
    old folder, if any, is renamed aside and then deleted); on any exception, Ctrl-C included, the staging folders
    are deleted and the previous outputs stay as they were."""
    outs, metric_files = stage_outputs(stage, corpus)
    with _STAGING_LOCK:
        folders = [o for o in outs if not Path(o).suffix]  # files end in .jsonl, .json, .npz, .html
        for output in [*outs, *metric_files]:
            _clear_leftovers(output)
        staging = {folder: _sibling(folder, "partial") for folder in folders}
        for folder, tmp in staging.items():
            tmp.mkdir(parents=True)
            _STAGING[folder] = str(tmp)
    try:
        yield
    except BaseException:
        for tmp in staging.values():
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        with _STAGING_LOCK:
            for folder in staging:
                _STAGING.pop(folder, None)
    for folder, tmp in staging.items():
        final, aside = Path(folder), _sibling(folder, "replaced")
        if final.exists():
            os.replace(final, aside)
        os.replace(tmp, final)
        _remove(aside)
