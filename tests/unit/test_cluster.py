"""params `cluster` and what a cluster worker does before a cell (tasks.cluster)."""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError

from deepprune.config import ClusterConfig, TrackingConfig
from tasks.cluster import Placement, enter, make_task_runner


def test_threads_is_the_default_and_takes_no_address():
    from prefect.task_runners import ThreadPoolTaskRunner

    runner = make_task_runner(ClusterConfig())
    assert isinstance(runner, ThreadPoolTaskRunner) and runner._max_workers == 2
    with pytest.raises(ValidationError, match="address 'tcp://127.0.0.1:8786' is for a dask or ray cluster"):
        ClusterConfig(address="tcp://127.0.0.1:8786")
    with pytest.raises(ValidationError, match="a Dask scheduler address is tcp://host:port"):
        ClusterConfig(task_runner="dask", address="127.0.0.1:8786")


def test_a_runner_whose_integration_is_missing_is_named_with_its_package(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "prefect_ray" else real(name, *a))
    with pytest.raises(ImportError, match=r"cluster.task_runner 'ray' needs prefect-ray \(pip install -e '.\[team\]'\), which is not installed"):
        make_task_runner(ClusterConfig(task_runner="ray"))


@pytest.mark.parametrize("runner, module, address, local_size", [
    ("dask", "prefect_dask", "tcp://127.0.0.1:8786", lambda r: (r.cluster_kwargs["n_workers"],
                                                                r.cluster_kwargs["threads_per_worker"])),
    ("ray", "prefect_ray", "127.0.0.1:6379", lambda r: (r.init_kwargs["num_cpus"], 1)),
])
def test_a_cluster_runner_connects_to_the_address_or_starts_a_local_cluster_of_max_workers(runner, module, address,
                                                                                           local_size):
    """With an address, the running scheduler or head; without, a local cluster of max_workers single-threaded
    workers (Dask processes, Ray CPU slots)."""
    pytest.importorskip(module, reason="the team extra is not installed: pip install -e '.[team]'")
    assert make_task_runner(ClusterConfig(task_runner=runner, address=address)).address == address
    local = make_task_runner(ClusterConfig(task_runner=runner, max_workers=3))
    assert local.address is None and local_size(local) == (3, 1)


def test_a_worker_that_cannot_see_the_project_fails_naming_itself_and_the_path(tmp_path):
    with pytest.raises(RuntimeError, match=rf"pid {os.getpid()}\) cannot see the project at {tmp_path}: run workers"):
        enter(Placement(str(tmp_path), 2, "sqlite:///x.db", TrackingConfig(), None))


def test_a_worker_takes_the_stages_threads_and_store(tmp_path, monkeypatch):
    import torch

    (tmp_path / "params.yaml").write_text("seed: 1\n")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for name in ("DEEPPRUNE_MLFLOW_ARTIFACTS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)  # restored after the test: enter() sets them for the process
    threads = torch.get_num_threads()
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    try:
        enter(Placement(str(tmp_path), 1, uri, TrackingConfig(), str(tmp_path / "artifacts")))
        import mlflow

        assert torch.get_num_threads() == 1 and mlflow.get_tracking_uri() == uri
        assert os.environ["MLFLOW_TRACKING_URI"] == uri
        assert os.environ["DEEPPRUNE_MLFLOW_ARTIFACTS"] == str(tmp_path / "artifacts")
    finally:
        torch.set_num_threads(threads)
        import mlflow

        mlflow.set_tracking_uri(None)


def test_a_cells_inputs_are_read_once_per_process_and_again_when_their_files_change(tmp_path):
    import time

    from tasks.cluster import read_once

    placement = Placement(str(tmp_path), 2, "sqlite:///x.db", TrackingConfig(), None)
    (tmp_path / "pairs.jsonl").write_text("a\n")
    reads: list[str] = []

    def read(name: str):
        def inner() -> str:
            reads.append(name)
            return (tmp_path / "pairs.jsonl").read_text() + name
        return inner

    first = read_once(placement, ["pairs", "date"], ["pairs.jsonl"], read("date"))
    assert read_once(placement, ["pairs", "date"], ["pairs.jsonl"], read("date")) is first and reads == ["date"]
    read_once(placement, ["pairs", "math"], ["pairs.jsonl"], read("math"))  # other inputs beside, not instead
    assert read_once(placement, ["pairs", "date"], ["pairs.jsonl"], read("date")) is first
    time.sleep(0.01)
    (tmp_path / "pairs.jsonl").write_text("b, longer\n")  # a rerun's new inputs: never the stale read
    assert read_once(placement, ["pairs", "date"], ["pairs.jsonl"], read("date")) == "b, longer\ndate"
    assert reads == ["date", "math", "date"]


def test_cells_write_to_a_tracking_server_at_once_and_to_a_sqlite_store_one_at_a_time():
    """SQLite rejects concurrent writers, so the threads of a stage take turns there; a tracking server (MLflow on
    PostgreSQL) takes them all at once."""
    import contextlib

    import mlflow

    from deepprune import tracking

    try:
        mlflow.set_tracking_uri("http://127.0.0.1:5000")
        assert isinstance(tracking._write_lock(), contextlib.nullcontext)
        mlflow.set_tracking_uri("sqlite:///store.db")
        assert tracking._write_lock() is tracking._LOCK
    finally:
        mlflow.set_tracking_uri(None)
