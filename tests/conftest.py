"""Shared fixtures: the real params shrunk to a tiny run, in a throw-away workspace."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
import urllib.request
from pathlib import Path

import pytest
import yaml

from deepprune.config import read_params

ROOT = Path(__file__).resolve().parents[1]


def pytest_report_header(config) -> str:
    """The torch thread count: float32 model outputs depend on it (make test runs generation tests under 1 and 2)."""
    import torch

    return f"torch threads: {torch.get_num_threads()} (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')})"


def tiny_params(limit: int = 8) -> dict:
    """The shipped params.yaml, shrunk so every stage runs in seconds on a laptop CPU."""
    raw = read_params(ROOT / "params.yaml")
    raw["sample"]["limit"] = limit
    for corpus in raw["corpora"].values():  # a corpus's own limit would win over sample.limit (live's is set below)
        corpus.pop("limit", None)
    raw["label"].update(tokens_k=[16, 32], reasoning_words_k=[5], folds=2)
    raw["judge"]["truncation"] = {"strategy": "tokens", "k": 32}
    raw["judge"]["max_length"] = 64
    raw["judge"]["train"].update(epochs=3, batch_size=64)
    raw["prune"]["repetitions"] = 5
    raw["corpora"]["live"]["limit"] = 3
    raw["sample"].update(n=4, batch_size=4)
    raw["sample"]["generation"]["max_tokens"] = 24
    raw["judge_lm"]["truncation"] = {"strategy": "tokens", "k": 16}
    raw["judge_lm"]["train"].update(steps=2, batch_size=2, checkpoint_every=1)
    raw["judge_lm"]["eval"].update(folds=2, pairs_per_class=3, batch_size=4)
    raw["sweep"]["grid"] = {"loss": ["ce", "focal"], "focal.gamma": [2.0]}  # two points
    raw["ablate"]["table_k"] = {"tokens": 32, "reasoning_words": 5}
    # as the paper profile: every training variant ablated, the causal-LM judge on both recorded corpora
    raw["ablate"]["variants"] = list(raw["judge"]["variants"])
    raw["judge_lm"]["corpora"] = ["math", "date"]
    raw["online"].update(problems=2, n=4, max_tokens=24, k=8, taus=[0.5, 0.01],
                         deepconf={"warmup": 2, "eta": 90, "window": 4})
    return raw


def copy_project(dest: Path) -> None:
    """The tracked files of this repository (plus the work tree's edits) into dest, without the committed metrics
    and dvc.lock, for a fresh git + DVC repository that builds everything itself."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    for rel in filter(None, files):
        src = ROOT / rel
        if src.is_file() and not rel.startswith(("reports/metrics/", "dvc.lock")):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def commit_copy(dest: Path, env: dict[str, str]) -> None:
    """Make a project copy a git repository with one commit (`dvc exp run` commits experiments: it needs an
    identity)."""
    for cmd in (["git", "init", "-q"], ["git", "config", "user.name", "ci"], ["git", "config", "user.email", "ci@localhost"],
                ["git", "add", "-A"], ["git", "commit", "-qm", "copy"]):
        subprocess.run(cmd, cwd=dest, env=env, check=True, capture_output=True, timeout=120)


@contextlib.contextmanager
def loopback_prefect(dest: Path, env: dict[str, str]) -> Iterator[subprocess.Popen]:
    """One Prefect server on 127.0.0.1 for a test module's stage processes (as `make prefect-ui` runs one), set as
    env's PREFECT_API_URL; stopped on exit. Each stage starting a temporary server of its own costs about 10 s."""
    from deepprune.services import free_port

    port = free_port()
    env["PREFECT_API_URL"] = f"http://127.0.0.1:{port}/api"
    with open(dest / ".prefect-server.log", "w") as log:
        server = subprocess.Popen([str(Path(sys.executable).parent / "prefect"), "server", "start", "--host",
                                   "127.0.0.1", "--port", str(port)], cwd=dest, env=env, stdout=log,
                                  stderr=subprocess.STDOUT)
        try:
            wait_for(f"http://127.0.0.1:{port}/api/health")
            yield server
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()


def wait_for(url: str, seconds: float = 240) -> None:
    """Wait until url answers (a server just started)."""
    deadline = time.time() + seconds
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            assert time.time() < deadline, f"{url} did not answer"
            time.sleep(1)


def make_tiny_lm(path: Path) -> Path:
    """A randomly initialised two-layer Llama with the packaged SmolLM2 tokenizer, saved as a local HF model
    directory: the real loading code runs, in a second instead of a quarter of a minute."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from deepprune.judges.causal_lm import packaged_model_path

    if (path / "config.json").exists():
        return path
    gguf = Path(packaged_model_path())
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=1024,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return path


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory) -> Path:
    return make_tiny_lm(tmp_path_factory.getbasetemp() / "tiny-lm")


def make_workspace(path: Path, monkeypatch: pytest.MonkeyPatch, model: Path) -> Path:
    """A directory laid out like the project (shipped data linked in, tiny params, `model` as every model),
    made the cwd, with MLflow writing to a store of its own."""
    (path / "data").mkdir()
    (path / "data" / "raw").symlink_to(ROOT / "data" / "raw")
    params = tiny_params()
    params["judge_lm"]["model_path"] = str(model)
    params["sample"]["model_path"] = str(model)
    (path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{path / 'mlflow.db'}")
    monkeypatch.setenv("DEEPPRUNE_MLFLOW_ARTIFACTS", str(path / "mlartifacts"))
    monkeypatch.delenv("DEEPPRUNE_PARENT_RUN_ID", raising=False)
    return path


@pytest.fixture
def workspace(tmp_path, monkeypatch, tiny_lm):
    return make_workspace(tmp_path, monkeypatch, tiny_lm)


def recorded_only(workspace: Path, **sweep) -> None:
    """The tiny params without the live corpus (and the stages that only run on it)."""
    raw = read_params(workspace / "params.yaml")
    del raw["corpora"]["live"]
    raw["online"]["corpora"], raw["judge_lm"]["corpora"] = [], []
    raw["sweep"].update(sweep)
    (workspace / "params.yaml").write_text(yaml.safe_dump(raw))


def mlflow_runs(tracking_uri: str, experiment: str) -> list:
    """All runs of an experiment in a store (read back with MLflow's own client)."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    return [] if exp is None else client.search_runs([exp.experiment_id])
