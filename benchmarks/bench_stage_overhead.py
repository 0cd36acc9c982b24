"""What a stage costs before and after its own work: a stage process that does nothing, run as DVC runs every
stage (`run_stage`: params validated, the tracking store checked, a Prefect flow run, an MLflow run), reporting to
one Prefect server and one MLflow server as under `make run`, and again with a temporary Prefect server of its own
and the SQLite store opened directly (a stage run alone, `dvc repro`); and once more on the shared servers with
Prefect's flow-run heartbeats on, as they were before the stages turned them off.

    python -m benchmarks.bench_stage_overhead [--runs 5] [--no-own-server]

Prints the median of each phase of the process (from its own timings file, flows/_stage.py), side by side:
interpreter start-up and imports, params and store checks and the Prefect flow run's creation, the MLflow run's
set-up, the (empty) work, the MLflow and Prefect runs' closing, and the interpreter's exit. Stores live in a
temporary folder; the project's are not touched.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

NOOP = """
from prefect import flow
from flows._stage import run_stage, stage_run

@flow(name="noop", flow_run_name="noop")
def noop() -> None:
    with stage_run("noop", None, {}):
        pass

run_stage("report", noop)  # a real stage's name: run_stage stages the report's folder output, as it would
"""

PHASES = (("process_start", "stage_start", "interpreter start-up and imports"),
          ("stage_start", "flow_start", "params, store check, Prefect flow run created"),
          ("flow_start", "work_start", "MLflow run set up"),
          ("work_start", "work_end", "the stage's own work (none)"),
          ("work_end", "flow_end", "MLflow run closed"),
          ("flow_end", "end", "Prefect flow run closed"))


def _one(workspace: Path, env: dict[str, str]) -> dict[str, float]:
    """Run the no-op stage once; its phases in seconds, and the whole process as its parent saw it."""
    started = time.time()
    proc = subprocess.run([sys.executable, "-c", NOOP], cwd=workspace, env=env, capture_output=True, text=True,
                          timeout=600)
    seen = time.time() - started
    if proc.returncode:
        raise SystemExit(f"the no-op stage failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    doc = json.loads((workspace / "reports/timings/report.json").read_text())
    clock = doc["clock"]
    out = {label: clock[b] - clock[a] for a, b, label in PHASES}
    # the process's start time has a resolution of 1/100 s and a clock of its own: clamp the residue at 0
    out["interpreter exit"] = max(seen - doc["wall_seconds"], 0.0)
    out["total, as the parent saw it"] = seen
    return out


def _series(workspace: Path, envs: dict[str, dict[str, str]], runs: int) -> dict[str, dict[str, list[float]]]:
    """Each environment's runs, taken in turns (a, b, a, b, ...) so a busy spell of the machine hits both alike."""
    results: dict[str, list[dict[str, float]]] = {name: [] for name in envs}
    for _ in range(runs):
        for name, env in envs.items():
            results[name].append(_one(workspace, env))
    return {name: {key: [r[key] for r in rows] for key in rows[0]} for name, rows in results.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--no-own-server", action="store_true", help="skip the runs with a temporary server each")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="bench-stage-"))
    try:
        workspace = home / "workspace"
        workspace.mkdir()
        shutil.copyfile(ROOT / "params.yaml", workspace / "params.yaml")
        env = {**os.environ, "PREFECT_HOME": str(home / "prefect"), "MLFLOW_TRACKING_URI": f"sqlite:///{home}/mlflow.db",
               "DEEPPRUNE_MLFLOW_ARTIFACTS": str(home / "artifacts"), "PYTHONPATH": str(ROOT)}
        for key in ("PREFECT_API_URL", "DEEPPRUNE_PARENT_RUN_ID", "DEEPPRUNE_PIPELINE_FLOW_RUN"):
            env.pop(key, None)
        subprocess.run([str(Path(sys.executable).parent / "prefect"), "server", "database", "upgrade", "-y"], env=env,
                       check=True, capture_output=True, timeout=300)
        columns: dict[str, dict[str, list[float]]] = {}
        if not args.no_own_server:
            columns.update(_series(workspace, {"own temporary server": env}, args.runs))
        # one server for every run, as `make run` starts one for the whole pipeline
        sys.path.insert(0, str(ROOT))
        os.environ.update({k: env[k] for k in ("PREFECT_HOME", "MLFLOW_TRACKING_URI")})
        from deepprune.config import load_params
        from flows.server import mlflow_server, prefect_server

        with prefect_server(load_params(ROOT / "params.yaml").tracking) as api_url, mlflow_server() as mlflow_url:
            shared = {**env, "PREFECT_API_URL": api_url, "MLFLOW_TRACKING_URI": mlflow_url}
            _one(workspace, shared)  # the first flow run registers the flow
            # a stage sends no flow-run heartbeats unless the user sets a frequency (flows._stage._heartbeats)
            columns.update(_series(workspace, {
                "shared Prefect and MLflow servers (make run)": shared,
                "same, heartbeats every 180 s (Prefect's default)": {**shared, "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "180"}},
                args.runs))
    finally:
        shutil.rmtree(home, ignore_errors=True)

    names = list(columns)
    print(f"No-op stage process, median of {args.runs} runs (seconds); {os.cpu_count()} CPUs\n")
    print("| phase | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    for key in next(iter(columns.values())):
        print(f"| {key} | " + " | ".join(f"{statistics.median(columns[n][key]):.2f}" for n in names) + " |")


if __name__ == "__main__":
    main()
