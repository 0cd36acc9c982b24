"""The team engines, started for real on 127.0.0.1 and stopped by the test however it ends (README, "Team scale").

The cells of the sweep, ablate and transfer stages on a real cluster (params `cluster`): a Dask scheduler with two
worker processes, or a Ray head with two worker slots, started in another directory with no MLflow store in their
environment; the stages' outputs are the same bytes as on threads, and each sweep point is an MLflow child run of
the stage's run. MLflow on PostgreSQL
(`python -m flows.team_stores`, what `make mlflow-postgres` runs): a stage logs to it through MLFLOW_TRACKING_URI
alone, and its runs and registered model are read back, also after both servers restart."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
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
from tests.conftest import ROOT, commit_copy, copy_project, loopback_prefect, mlflow_runs, tiny_params
from tests.integration.conftest import dask_cluster, ray_cluster, run, stop

pytestmark = pytest.mark.slow

# what the cells of the sweep, ablate and transfer stages decide
OUTPUTS = (paths.sweep_results("date"), paths.sweep_best("date"), paths.metrics("sweep", "date"),
           paths.ablate_results("date"), paths.metrics("ablate", "date"), paths.transfer_results(),
           paths.metrics("transfer", None))
CELL_STAGES = (["flows.sweep", "date"], ["flows.ablate", "date"], ["flows.transfer"])


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """A workspace laid out like the project with both recorded corpora sampled, labelled, embedded and judged (tiny
    params): what the sweep, ablate and transfer stages read."""
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
        for corpus in ("date", "math"):
            for stage in ("sample", "label", "embed", "judge"):
                run([sys.executable, "-m", f"flows.{stage}", corpus], ws, env)
        yield ws, env


def _set_cluster(ws: Path, **cluster) -> None:
    params = read_params(ws / "params.yaml")
    params["cluster"] = {"task_runner": "threads", "address": None, "max_workers": 2, **cluster}
    (ws / "params.yaml").write_text(yaml.safe_dump(params))


def _run_cells(ws: Path, env: dict[str, str]) -> tuple[dict[str, bytes], str]:
    """The sweep, ablate and transfer stages from scratch; their outputs' bytes and the stages' output."""
    for path in OUTPUTS:
        (ws / path).unlink(missing_ok=True)
    out = "".join(run([sys.executable, "-m", *stage], ws, env) for stage in CELL_STAGES)
    return {path: (ws / path).read_bytes() for path in OUTPUTS}, out


@pytest.fixture(scope="module")
def on_threads(labelled) -> dict[str, bytes]:
    ws, env = labelled
    _set_cluster(ws, task_runner="threads")
    return _run_cells(ws, env)[0]


def _worker_env(env: dict[str, str]) -> dict[str, str]:
    """What a cluster's workers are started with: no MLflow store of the project's (the cells get it from the stage)."""
    return {k: v for k, v in env.items() if k not in ("MLFLOW_TRACKING_URI", "DEEPPRUNE_MLFLOW_ARTIFACTS")}


def _children(env: dict[str, str], experiment: str) -> list:
    """The MLflow child runs of the experiment's latest stage run."""
    runs = mlflow_runs(env["MLFLOW_TRACKING_URI"], experiment)
    last = max((r for r in runs if "mlflow.parentRunId" not in r.data.tags), key=lambda r: r.info.start_time)
    return [r for r in runs if r.data.tags.get("mlflow.parentRunId") == last.info.run_id]


def test_cells_on_a_dask_cluster_write_what_threads_write(labelled, on_threads, tmp_path):
    """Sweep points, ablation truncations and transfer pairs on a scheduler and two worker processes started in
    another directory: the same bytes as on threads, the cells ran there, every point an MLflow child run."""
    ws, env = labelled
    elsewhere = tmp_path / "workers"  # the workers know neither the project's directory nor its MLflow store
    elsewhere.mkdir()
    with dask_cluster(elsewhere, _worker_env(env), workers=2) as address:
        _set_cluster(ws, task_runner="dask", address=address)
        outputs, out = _run_cells(ws, env)
        assert out.count(f"Connecting to an existing Dask cluster at {address}") == len(CELL_STAGES)
    assert outputs == on_threads
    log = (elsewhere / "dask-workers.log").read_text()
    assert log.count("Task run 'run_cell") >= 2 and "sweep[date] ce: auroc" in log  # the cells ran there

    children = _children(env, "deepprune/sweep")
    assert sorted(r.data.tags["variant"] for r in children) == ["ce", "focal_g2.0"]
    assert all(r.info.status == "FINISHED" and "auroc" in r.data.metrics for r in children)

    # no address: a local cluster of max_workers processes, started and stopped by the stage itself
    _set_cluster(ws, task_runner="dask", address=None)
    for path in OUTPUTS[:3]:
        (ws / path).unlink()
    out = run([sys.executable, "-m", "flows.sweep", "date"], ws, env)
    assert "Creating a new Dask cluster" in out
    assert all((ws / path).read_bytes() == on_threads[path] for path in OUTPUTS[:3])


def test_cells_on_a_ray_head_write_what_threads_write(labelled, on_threads, tmp_path):
    """The same cells on a running Ray head (`make ray-cluster`) with two worker slots, its processes started with no
    MLflow store: the same bytes as on threads, and the cells ran in Ray's worker processes."""
    ws, env = labelled
    elsewhere = tmp_path / "ray"
    elsewhere.mkdir()
    with ray_cluster(elsewhere, _worker_env(env), cpus=2) as address:
        _set_cluster(ws, task_runner="ray", address=address)
        outputs, out = _run_cells(ws, env)
    assert outputs == on_threads
    assert out.count("Connected to Ray cluster") == len(CELL_STAGES)
    assert "(run_cell pid=" in out  # Ray forwards its workers' output, naming the task and the worker's pid
    children = _children(env, "deepprune/ablate")
    assert children and all(r.info.status == "FINISHED" for r in children)


def _ignore_sigint() -> None:
    """Runs in a child before exec: SIGINT ignored, as in every job a script starts with `&` (and what those start):
    CI can start the tests that way. Ctrl-C (SIGINT) must stop the stores all the same."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _stores(ws: Path, env: dict[str, str], base: Path, pg_port: int, mlflow_port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "flows.team_stores", "--data", str(base / "pg"), "--pg-port", str(pg_port),
           "--mlflow-port", str(mlflow_port), "--artifacts", str(base / "artifacts")]
    return subprocess.Popen(cmd, cwd=ws, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=_ignore_sigint)


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


def _stopped(proc: subprocess.Popen, base: Path) -> str:
    """Ctrl-C, as a user ends `make mlflow-postgres`; its output. If it has not ended within 120 s, fail with what
    it and its servers are doing (a stop that hangs under load was seen twice in full runs, never alone)."""
    proc.send_signal(signal.SIGINT)
    started = time.monotonic()
    try:
        out = proc.communicate(timeout=120)[0]
    except subprocess.TimeoutExpired:
        pytest.fail(f"the stores did not stop within 120 s of Ctrl-C:\n{_still_running(proc.pid, base)}")
    assert proc.returncode == 0, out
    print(f"the stores stopped {time.monotonic() - started:.1f} s after Ctrl-C")
    return out


def _still_running(pid: int, base: Path) -> str:
    """The launcher's process tree (state, age, command) and the tails of its servers' logs."""
    import psutil

    lines = []
    with contextlib.suppress(psutil.Error):
        root = psutil.Process(pid)
        for proc in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                lines.append(f"{proc.pid} pgid {os.getpgid(proc.pid)} {proc.status()} "
                             f"{time.time() - proc.create_time():.0f}s {' '.join(proc.cmdline())[:200]}")
    logs = "\n".join(f"--- {log.name}:\n{log.read_text(errors='replace')[-2000:]}"
                     for log in sorted(base.rglob("*.log")))
    return "\n".join(lines) + "\n" + logs


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
        assert f"MLFLOW_TRACKING_URI={url}" in _stopped(proc, base)
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
        _stopped(proc, base)
    finally:
        stop(proc)
        shutil.rmtree(base, ignore_errors=True)


def test_make_server_stops_its_worker_and_server_on_ctrl_c_even_started_with_sigint_ignored(tmp_path):
    """`make server` (flows.deploy --serve): the server, the pool's deployments and a named worker come up; Ctrl-C
    stops the worker, then the server, within a minute, leaving no process and a closed port. It is started with
    SIGINT ignored, as a script's `&` job (CI's, for one) starts it: a Prefect worker started that way used to take
    Ctrl-C, print that it passes it on, and then run on for good."""
    import psutil

    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "DEEPPRUNE_PARENT_RUN_ID")}
    env.update(PREFECT_HOME=str(tmp_path / ".prefect"), PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}",
               COLUMNS="250")  # Prefect's console wraps its lines at 80 columns off a terminal
    log = tmp_path / "server.log"
    with open(log, "w") as handle:
        proc = subprocess.Popen([sys.executable, "-m", "flows.deploy", "--serve", str(port), "--pool", "ctrl-c"],
                                cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=_ignore_sigint)
    try:
        deadline = time.monotonic() + 300
        while "Prefect UI on" not in log.read_text(errors="replace"):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")[-4000:]
            time.sleep(1)
        worker = f"ctrl-c-{socket.gethostname()}-{proc.pid}"
        started = [p for p in psutil.Process(proc.pid).children(recursive=True) if p.is_running()]
        assert any(f"--name {worker}" in " ".join(p.cmdline()) for p in started)
        assert any("server start" in " ".join(p.cmdline()) for p in started)
        assert "pipeline/judge" in log.read_text(errors="replace")
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in its terminal sends
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"`make server` did not end within 60 s of Ctrl-C:\n{_still_running(proc.pid, tmp_path)}")
        assert proc.returncode == 0, log.read_text(errors="replace")[-4000:]
        out = log.read_text(errors="replace")
        assert f"Worker '{worker}' stopped!" in out and "stopped the worker and the Prefect server" in out
        assert not [p for p in started if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
            pytest.fail(f"port {port} still answers after Ctrl-C")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _readme_team_block() -> list[str]:
    """The commands of README's "All of it at once" block, comments dropped."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = text.split("<!-- team-all:", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    return [line.split("  #", 1)[0].strip() for line in block.splitlines() if line.strip()]


def _in_clone(clone: Path) -> list:
    """The processes still running in the clone: its working directory or a path of it on the command line."""
    import psutil

    left = []
    for proc in psutil.process_iter(["pid", "cmdline", "cwd"]):
        with contextlib.suppress(psutil.Error):
            if proc.pid != os.getpid() and (str(clone) in " ".join(proc.info["cmdline"] or ())
                                            or (proc.info["cwd"] or "").startswith(str(clone))):
                left.append(proc)
    return left


def test_the_readme_team_block_runs_the_pipeline_on_every_engine_from_a_fresh_clone(tiny_lm):
    """README "All of it at once", line by line, in a fresh clone on tiny params (the ports swapped for free ones):
    PostgreSQL + MLflow, a Dask cluster, the Prefect server with its pool and worker, a DVC remote; the pipeline
    runs on the worker, logs to PostgreSQL and fans its cells out to the Dask workers; the outputs reach the
    remote; the `kill -INT` of the jobs leaves no process behind."""
    import psutil
    from flows.team_stores import PostgresUnavailable, postgres_bin

    try:
        postgres_bin()
    except PostgresUnavailable as exc:
        pytest.skip(str(exc))
    pytest.importorskip("psycopg2", reason="the team extra is not installed: pip install -e '.[team]'")
    venv = Path(sys.executable).parent.parent
    installed, team = venv / ".installed", venv / ".team-installed"
    if not (installed.exists() and team.exists()) or team.stat().st_mtime < installed.stat().st_mtime:
        # the clone's `make setup-team` would reinstall the project into the borrowed venv from the clone, which this
        # test then deletes: every later process of that venv would lose the project's packages
        pytest.skip(f"{venv} is not set up by `make setup-team` (or its team extra is older than its base install): "
                    f"the clone borrows it and must not rebuild it")
    from mlflow.tracking import MlflowClient

    base = Path(tempfile.mkdtemp(prefix="deepprune-team-"))  # not pytest's tmp dir: PostgreSQL's own user reaches it
    os.chmod(base, 0o755)
    origin, clone = base / "origin", base / "deepprune"
    origin.mkdir()
    copy_project(origin)
    params = tiny_params(limit=6)
    params["judge_lm"]["corpora"], params["ablate"]["variants"] = [], ["encoder_focal_oversample", "sbert_cosine"]
    params["sample"]["model_path"] = str(tiny_lm)
    (origin / "params.yaml").write_text(yaml.safe_dump(params))
    ports = {"5000": free_port(), "8786": free_port(), "4200": free_port()}
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "PREFECT_HOME", "MLFLOW_TRACKING_URI",
                                                            "DEEPPRUNE_MLFLOW_ARTIFACTS", "DEEPPRUNE_PARENT_RUN_ID",
                                                            "VIRTUAL_ENV", "MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}", PYTHONPATH=str(clone),
               MLFLOW_PORT=str(ports["5000"]), DASK_PORT=str(ports["8786"]), PREFECT_PORT=str(ports["4200"]),
               PG_PORT=str(free_port()))
    commit_copy(origin, env)
    jobs: list[tuple[str, subprocess.Popen, Path]] = []
    outputs: dict[str, str] = {}
    try:
        for line in _readme_team_block():
            for default, port in ports.items():
                line = re.sub(rf":{default}\b", f":{port}", line)
            if line.startswith("git clone"):  # the block's first line, with this test's repository
                run(["git", "clone", "-q", str(origin), str(clone)], base, env)
                (clone / ".venv").symlink_to(venv)  # set up already: `make setup-team` finds it up to date
                os.utime(clone / "pyproject.toml", (0, 0))
            elif line.startswith("export "):
                key, _, value = line[len("export "):].partition("=")
                env[key] = value
            elif line.endswith("&"):  # a job: its own process group, as an interactive shell starts one
                log = base / f"job{len(jobs) + 1}.log"
                with open(log, "w") as handle:
                    # SIGINT ignored, as in a script's `&` job (CI's): the harder case; an interactive shell's job
                    # has it handled by default, and every job must stop on the `kill -INT` all the same
                    jobs.append((line, subprocess.Popen(["bash", "-c", line[:-1].strip()], cwd=clone, env=env,
                                                        stdout=handle, stderr=subprocess.STDOUT,
                                                        start_new_session=True, preexec_fn=_ignore_sigint), log))
            elif line.startswith("kill -INT"):
                for spec in line.split()[2:]:
                    _, proc, _ = jobs[int(spec.lstrip("%")) - 1]
                    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in its terminal sends
                for command, proc, log in jobs:
                    try:
                        proc.wait(timeout=180)
                    except subprocess.TimeoutExpired:
                        pytest.fail(f"{command!r} did not end within 180 s of Ctrl-C:\n"
                                    f"{_still_running(proc.pid, base)}")
                    outputs[command] = log.read_text(errors="replace")
            else:
                assert not any(proc.poll() is not None for _, proc, _ in jobs), \
                    "a job ended early:\n" + "\n".join(f"--- {c}\n{log.read_text(errors='replace')[-3000:]}"
                                                       for c, p, log in jobs if p.poll() is not None)
                outputs[line] = run(["bash", "-c", line], clone, env, timeout=1800)
                if line == "make push":  # before the kill: what the engines hold
                    client = MlflowClient(f"http://127.0.0.1:{ports['5000']}")
                    for stage in ("sample", "judge", "sweep", "ablate", "transfer", "prune", "online", "report"):
                        runs = client.search_runs([client.get_experiment_by_name(f"deepprune/{stage}").experiment_id])
                        assert runs and all(r.info.status == "FINISHED" for r in runs), stage
                    status = run([sys.executable, "-m", "dvc", "status", "--cloud"], clone, env)
                    assert "Cache and remote 'team' are in sync" in status, status

        assert "Flow run finished successfully in 'Completed'" in outputs["make run-on-pool"]
        assert "params.yaml: cluster.task_runner=dask" in outputs[f"make use-cluster CLUSTER=dask "
                                                                  f"ADDRESS=tcp://127.0.0.1:{ports['8786']}"]
        dask_log = next(out for command, out in outputs.items() if command.startswith("make dask-cluster"))
        assert dask_log.count("Task run 'run_cell") >= 2, dask_log[-3000:]  # the cells ran on the cluster's workers
        assert any((base / "deepprune-dvc-remote").rglob("*")), "nothing reached the DVC remote"
        assert all(proc.returncode is not None for _, proc, _ in jobs)
        deadline = time.monotonic() + 60
        while _in_clone(clone) and time.monotonic() < deadline:
            time.sleep(1)
        left = _in_clone(clone)
        assert not left, f"left running: {[' '.join(p.cmdline())[:200] for p in left]}"
        for port in [*ports.values(), int(env["PG_PORT"])]:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
                pytest.fail(f"port {port} still answers after the kill")
    finally:
        for _, proc, _ in jobs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        for proc in _in_clone(clone):
            with contextlib.suppress(psutil.Error):
                proc.kill()
        shutil.rmtree(base, ignore_errors=True)
