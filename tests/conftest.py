"""Shared fixtures: the real params shrunk to a tiny run, in a throw-away workspace."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def tiny_params(limit: int = 8) -> dict:
    """The shipped params.yaml, shrunk so every stage runs in seconds on a laptop CPU."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["sample"]["limit"] = limit
    raw["label"].update(tokens_k=[16, 32], reasoning_words_k=[5], folds=2)
    raw["judge"]["truncation"] = {"strategy": "tokens", "k": 32}
    raw["judge"]["max_length"] = 64
    raw["judge"]["train"].update(epochs=3, batch_size=64)
    raw["prune"]["repetitions"] = 5
    return raw


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """A directory laid out like the project (shipped data linked in, tiny params), made the cwd,
    with MLflow writing to a store of its own."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "raw").symlink_to(ROOT / "data" / "raw")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params()))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("DEEPPRUNE_MLFLOW_ARTIFACTS", str(tmp_path / "mlartifacts"))
    monkeypatch.delenv("DEEPPRUNE_PARENT_RUN_ID", raising=False)
    return tmp_path


def mlflow_runs(tracking_uri: str, experiment: str) -> list:
    """All runs of an experiment in a store (read back with MLflow's own client)."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    return [] if exp is None else client.search_runs([exp.experiment_id])
