"""The team engines, started for real on 127.0.0.1 and stopped by the test however it ends (README, "Team scale").

Sweep points on a real Dask cluster (params `cluster`): a scheduler and two worker processes, started in another
directory with no MLflow store in their environment, run the points of `python -m flows.sweep`; the stage's outputs
are the same bytes as on threads, and each point is an MLflow child run of the stage's run. MLflow on PostgreSQL
(`python -m flows.team_stores`, what `make mlflow-postgres` runs): a stage logs to it through MLFLOW_TRACKING_URI
alone, and its runs and registered model are read back, also after both servers restart."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from deepprune import paths
from deepprune.config import read_params
from deepprune.services import free_port
from tests.conftest import ROOT, loopback_prefect, mlflow_runs, tiny_params
from tests.integration.conftest import dask_cluster, run, stop

pytestmark = pytest.mark.slow

OUTPUTS = (paths.sweep_results("date"), paths.sweep_best("date"), paths.metrics("sweep", "date"))


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """A workspace laid out like the project with the date corpus sampled, labelled and embedded (tiny params)."""
    ws = tmp_path_factory.mktemp("cluster")
    (ws / "data").mkdir()
    (ws / "data" / "raw").symlink_to(ROOT / "data" / "raw")
    params = tiny_params()
    del params["corpora"]["live"]
    params["online"]["corpora"], params["judge_lm"]["corpora"] = [], []
    (ws / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PREFECT_HOME": str(ws / ".prefect"), "MLFLOW_TRACKING_URI": f"sqlite:///{ws / 'mlflow.db'}",
           "DEEPPRUNE_MLFLOW_ARTIFACTS": str(ws / "mlartifacts")}
    env.pop("DEEPPRUNE_PARENT_RUN_ID", None)
    with loopback_prefect(ws, env):
        for stage in ("sample", "label", "embed"):
            run([sys.executable, "-m", f"flows.{stage}", "date"], ws, env)
        yield ws, env


def _set_cluster(ws: Path, **cluster) -> None:
    params = read_params(ws / "params.yaml")
    params["cluster"] = {"task_runner": "threads", "address": None, "max_workers": 2, **cluster}
    (ws / "params.yaml").write_text(yaml.safe_dump(params))


def _outputs(ws: Path) -> dict[str, bytes]:
    return {path: (ws / path).read_bytes() for path in OUTPUTS}


def test_sweep_points_on_a_dask_cluster_write_what_threads_write(labelled, tmp_path):
    ws, env = labelled
    _set_cluster(ws, task_runner="threads")
    run([sys.executable, "-m", "flows.sweep", "date"], ws, env)
    on_threads = _outputs(ws)
    for path in OUTPUTS:
        (ws / path).unlink()

    elsewhere = tmp_path / "workers"  # the workers know neither the project's directory nor its MLflow store
    elsewhere.mkdir()
    worker_env = {k: v for k, v in env.items() if k not in ("MLFLOW_TRACKING_URI", "DEEPPRUNE_MLFLOW_ARTIFACTS")}
    with dask_cluster(elsewhere, worker_env, workers=2) as address:
        _set_cluster(ws, task_runner="dask", address=address)
        out = run([sys.executable, "-m", "flows.sweep", "date"], ws, env)
        assert f"Connecting to an existing Dask cluster at {address}" in out
    assert _outputs(ws) == on_threads
    log = (elsewhere / "dask-workers.log").read_text()
    assert log.count("Task run 'run_point") >= 2 and "sweep[date] ce: auroc" in log  # the points ran there

    stage_runs = [r for r in mlflow_runs(env["MLFLOW_TRACKING_URI"], "deepprune/sweep")
                  if "mlflow.parentRunId" not in r.data.tags]
    last = max(stage_runs, key=lambda r: r.info.start_time)
    children = [r for r in mlflow_runs(env["MLFLOW_TRACKING_URI"], "deepprune/sweep")
                if r.data.tags.get("mlflow.parentRunId") == last.info.run_id]
    assert sorted(r.data.tags["variant"] for r in children) == ["ce", "focal_g2.0"]
    assert all(r.info.status == "FINISHED" and "auroc" in r.data.metrics for r in children)

    # no address: a local cluster of max_workers processes, started and stopped by the stage itself
    for path in OUTPUTS:
        (ws / path).unlink()
    _set_cluster(ws, task_runner="dask", address=None)
    out = run([sys.executable, "-m", "flows.sweep", "date"], ws, env)
    assert "Creating a new Dask cluster" in out and _outputs(ws) == on_threads


def _stores(ws: Path, env: dict[str, str], base: Path, pg_port: int, mlflow_port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "flows.team_stores", "--data", str(base / "pg"), "--pg-port", str(pg_port),
           "--mlflow-port", str(mlflow_port), "--artifacts", str(base / "artifacts")]
    return subprocess.Popen(cmd, cwd=ws, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for_stores(proc: subprocess.Popen, url: str, base: Path, seconds: float = 300) -> None:
    """Until the MLflow server answers; if the launcher exits or time runs out, fail with its output and logs."""
    deadline = time.monotonic() + seconds
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2)
            return
        except OSError:
            time.sleep(1)
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    out = proc.communicate(timeout=120)[0]
    logs = "\n".join(f"--- {log.name}:\n{log.read_text(errors='replace')[-3000:]}"
                     for log in sorted((base / "pg").glob("*.log")))
    pytest.fail(f"the stores did not come up (exit {proc.returncode}):\n{out[-3000:]}\n{logs}")


def _stopped(proc: subprocess.Popen) -> str:
    """Ctrl-C, as a user ends `make mlflow-postgres`; its output."""
    proc.send_signal(signal.SIGINT)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 0, out
    return out


def test_a_stage_logs_to_mlflow_on_postgresql_through_the_tracking_uri_alone(labelled):
    from flows.team_stores import PostgresUnavailable, postgres_bin

    try:
        bin_dir = postgres_bin()
    except PostgresUnavailable as exc:
        pytest.skip(str(exc))
    pytest.importorskip("psycopg2", reason="the team extra is not installed: pip install -e '.[team]'")
    from mlflow.tracking import MlflowClient

    ws, env = labelled
    _set_cluster(ws, task_runner="threads")
    base = Path(tempfile.mkdtemp(prefix="deepprune-pg-"))  # not pytest's tmp dir: PostgreSQL's own user reaches it
    os.chmod(base, 0o755)
    pg_port, mlflow_port = free_port(), free_port()
    url = f"http://127.0.0.1:{mlflow_port}"
    proc = _stores(ws, env, base, pg_port, mlflow_port)
    try:
        _wait_for_stores(proc, url, base)
        # what a user's shell has: the server's URI alone (no project artifact folder: the server keeps artifacts)
        user = {k: v for k, v in env.items() if k != "DEEPPRUNE_MLFLOW_ARTIFACTS"}
        run([sys.executable, "-m", "flows.sweep", "date"], ws, {**user, "MLFLOW_TRACKING_URI": url})
        assert f"MLFLOW_TRACKING_URI={url}" in _stopped(proc)
        assert subprocess.run([str(bin_dir / "pg_isready"), "-h", "127.0.0.1", "-p", str(pg_port)]).returncode != 0

        proc = _stores(ws, env, base, pg_port, mlflow_port)  # the database outlives the servers
        _wait_for_stores(proc, url, base)
        client = MlflowClient(url)
        experiment = client.get_experiment_by_name("deepprune/sweep")
        runs = client.search_runs([experiment.experiment_id])
        stage = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
        points = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == stage[0].info.run_id]
        assert len(stage) == 1 and stage[0].info.status == "FINISHED" and stage[0].data.tags["dvc_stage"] == "sweep@date"
        assert sorted(r.data.tags["variant"] for r in points) == ["ce", "focal_g2.0"]
        assert "best" in {a.path for a in client.list_artifacts(stage[0].info.run_id)}
        assert [v.version for v in client.search_model_versions("name='deepprune-judge-date'")] == ["1"]
        assert any((base / "artifacts").rglob("best.safetensors"))  # the server's artifact destination
        count = subprocess.run([str(bin_dir / "psql"), "-h", "127.0.0.1", "-p", str(pg_port), "-U", "mlflow", "-d",
                                "mlflow", "-tAc", "SELECT count(*) FROM runs"], capture_output=True, text=True)
        assert count.stdout.strip() == str(len(runs))  # the runs are rows of PostgreSQL, not of a SQLite file
        _stopped(proc)
    finally:
        stop(proc)
        shutil.rmtree(base, ignore_errors=True)
