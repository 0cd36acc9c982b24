"""Every output path of the pipeline, relative to the project root (each stage's working directory). Flows, tasks,
the report and the tests take paths from here; `dvc.yaml` spells the same paths, and tests/unit/test_paths.py
checks that every stage's outs and metrics there equal these."""

from __future__ import annotations

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


def server_log() -> str:
    """The log of an OpenAI-compatible server the platform starts itself."""
    return ".cache/server.log"


# ---- label and embed ------------------------------------------------------------------------------------------


def labels_dir(corpus: str) -> str:
    return f"data/labels/{corpus}"


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
    return f"data/judge/{corpus}"


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
    return f"data/judge_lm/{corpus}"


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
    return f"data/sweep/{corpus}"


def sweep_results(corpus: str) -> str:
    return f"{sweep_dir(corpus)}/results.json"


def sweep_best(corpus: str) -> str:
    """The best sweep point fitted on every pair."""
    return f"{sweep_dir(corpus)}/best.safetensors"


def ablate_dir(corpus: str) -> str:
    return f"data/ablate/{corpus}"


def ablate_results(corpus: str) -> str:
    return f"{ablate_dir(corpus)}/results.json"


# ---- prune and online -----------------------------------------------------------------------------------------


def prune_dir(corpus: str) -> str:
    return f"data/prune/{corpus}"


def prune_results(corpus: str) -> str:
    return f"{prune_dir(corpus)}/results.json"


def online_dir(corpus: str) -> str:
    return f"data/online/{corpus}"


def online_outcomes(corpus: str) -> str:
    return f"{online_dir(corpus)}/outcomes.jsonl"


def online_meta(corpus: str) -> str:
    return f"{online_dir(corpus)}/meta.json"


def online_comparison(corpus: str) -> str:
    return f"{online_dir(corpus)}/comparison.md"


def online_cache(corpus: str) -> str:
    """Finished (method, problem) outcomes, checkpointed (outside the outs)."""
    return f".cache/online/{corpus}"


# ---- metrics and report ---------------------------------------------------------------------------------------


def metrics(stage: str, corpus: str) -> str:
    """A stage's DVC metrics file for one corpus (committed to git, `dvc metrics show` reads it)."""
    return f"reports/metrics/{stage}_{corpus}.json"


def metrics_dir() -> str:
    return "reports/metrics"


def report_index() -> str:
    """The report page (self-contained, opens offline)."""
    return "reports/index.html"


def figures_dir() -> str:
    return "reports/figures"


def figure(name: str) -> str:
    """One report figure as self-contained HTML."""
    return f"{figures_dir()}/{name}.html"
