# localsage — make help lists the targets.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# SDK v3's client venv (sagemaker 3.x cannot share localsage's venv: both are the package `sagemaker`)
SDK3_VENV ?= .venv-sdk3
SDK3_REQUIREMENTS := tests/clients/requirements-sdk3.txt
BACKEND ?= process
DATA ?= data/demo
JOBS ?= jobs
HP ?=
HP_FILE ?=
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install test test-fast lint demo-data train-local demo bench ui clean

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(BIN)/localsage: requirements.txt pyproject.toml
	@command -v java >/dev/null || echo "note: no Java found; TorchServe needs a JRE 17 (apt-get install openjdk-17-jre-headless)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements.txt pytest==9.2.0 pytest-timeout==2.4.0 ruff==0.17.0
	$(BIN)/pip install -q --no-deps -e .
	$(BIN)/pip check
	@touch $@

$(SDK3_VENV)/.installed: $(SDK3_REQUIREMENTS)
	$(PYTHON) -m venv $(SDK3_VENV)
	$(SDK3_VENV)/bin/pip install -q -r $(SDK3_REQUIREMENTS)
	$(SDK3_VENV)/bin/pip check
	@touch $@

install: $(BIN)/localsage $(SDK3_VENV)/.installed ## create .venv (pinned dependencies + localsage) and .venv-sdk3 (SDK v3 client)

test: install ## run the test suite (the local API's longer client scenarios are in test-api)
	$(BIN)/python -m pytest -q -m "not api_full" $(PYTEST_ARGS)

test-api: install ## the local API's longer client scenarios (SDK v3/v2 tuners, ModelBuilder, transform, hosts)
	$(BIN)/python -m pytest -q -m api_full tests/test_api_server.py tests/test_api_training.py tests/test_api_serving.py tests/test_api_tuning.py $(PYTEST_ARGS)

lint: install ## ruff: pyflakes, import order, lines within 120 characters (config in pyproject.toml)
	$(BIN)/ruff check .

test-fast: install ## unit tests only (no training jobs, TorchServe, containers or databases)
	$(BIN)/python -m pytest -q -m "not integration" $(PYTEST_ARGS)

$(DATA)/train:
	$(BIN)/localsage demo-data $(DATA)

demo-data: install $(DATA)/train ## generate the demo ImageFolder set in DATA (default data/demo)

train-local: install $(if $(filter data/demo,$(DATA)),$(DATA)/train) ## train on DATA with BACKEND (process|docker|sagemaker-local); HP="lr=0.01 epochs=3", HP_FILE=best.json
	$(BIN)/localsage train --backend $(BACKEND) --data $(DATA) --jobs-dir $(JOBS) \
		$(if $(HP_FILE),--hp-file $(HP_FILE)) $(foreach kv,$(HP),--hp $(kv)) $(if $(filter docker sagemaker-local,$(BACKEND)),--image $(IMAGE))

demo: install ## the whole loop on generated data: tune, train best, rules + report, TorchServe, HTTP predictions
	$(BIN)/localsage demo --data $(DATA) --jobs-dir $(JOBS) --backend $(BACKEND) $(if $(filter docker sagemaker-local,$(BACKEND)),--image $(IMAGE))

ui: install ## MLflow's UI over the jobs' runs (JOBS/mlflow.db) on 127.0.0.1:5000 (Ctrl-C stops)
	$(BIN)/localsage ui --jobs-dir $(JOBS)

API_PORT ?= 8790
API_ROOT ?= localsage-api
API_BACKEND ?= docker
.PHONY: api
api: install ## the SageMaker API on 127.0.0.1:API_PORT (folder API_ROOT, API_BACKEND docker|process); prints the lines to export
	$(BIN)/localsage api --port $(API_PORT) --root $(API_ROOT) --backend $(API_BACKEND) $(if $(IMAGE),--image $(IMAGE))

bench: install ## run the benchmarks in bench/
	$(BIN)/python bench/train_pipeline.py

include .ci/docker.mk .ci/serve.mk .ci/tune.mk .ci/cloud.mk

clean: ## remove jobs and generated data (not the venv)
	rm -rf $(JOBS) data/demo test-artifacts
