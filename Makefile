# dsconv-lab: Halide's depthwise separable convolution against TensorFlow and cuDNN.
# `make help` lists the targets. Everything runs from the repository's .venv (created when missing).

SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
EXPERIMENT ?= fusion_ablation
ARGS ?=
PYTEST_ARGS ?=
MLFLOW_PORT ?= 5000
MLFLOW_DB := $(CURDIR)/mlflow/mlflow.db
MLFLOW_ARTIFACTS := $(CURDIR)/mlflow/artifacts
# Cluster: `make head [HOST=ip] [GPU=model]`, `make worker HEAD=host:port GPU=model [GPUS=n]`.
# HOST is taken from the command line only (shells such as zsh set a HOST variable to the machine's name):
# servers listen on 127.0.0.1 unless it is given.
ifeq ($(origin HOST),command line)
BIND := $(HOST)
else
BIND := 127.0.0.1
endif
RAY_PORT ?= 6379
HEAD ?=
GPU ?=
GPUS ?=
TRACKING ?= local
NODE_ARGS = $(if $(GPU),--gpu $(GPU)) $(if $(GPUS),--gpus $(GPUS)) $(if $(BLOCK),--block)

.DEFAULT_GOAL := help
.PHONY: help install run test test-fast mlflow-ui mlflow-server ingest lint head worker ray-status sweep-all-gpus sync report reports export gpu-kit

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | \
		awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}'

$(PY):
	$(PYTHON) -m venv $(VENV)

# The stamp makes a repeat `make install` a no-op until pyproject.toml changes.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -e '.[dev]'
	touch $(STAMP)

# On a node without a package index (a GPU node with the install kit, `scripts/install-kit.sh`), name the
# interpreter that has the kit on its PYTHONPATH, e.g. `make head PY=python3 GPU=h200`: no .venv is made and
# nothing is installed; the targets only check that the project's packages import.
ifeq ($(origin PY),command line)
MLFLOW := mlflow
install:
	@$(PY) -c 'import halide, hydra, mlflow, ray' 2>/dev/null || { echo "make: $(PY) cannot import halide, \
	hydra, mlflow and ray: install the kit (scripts/install-kit.sh KIT_DIR) and eval the line it prints" >&2; exit 2; }
else
MLFLOW := $(VENV)/bin/mlflow
install: $(STAMP) ## Create .venv if missing and install the package with its dev tools (no-op when up to date)
endif

run: install ## Run an experiment: make run [EXPERIMENT=fusion_ablation] [ARGS='timing=quick ...']
	$(PY) -m orchestrator +experiment=$(EXPERIMENT) $(ARGS)

# pytest exits 5 when it collects no tests: a selection that matches nothing is a mistake, not a pass.
# Make itself exits 2 on any failure, so pytest's own exit code is left in $(PYTEST_EXIT) for .ci/run.
# The suite runs on PYTEST_WORKERS pytest-xdist workers (one a core; 0 = in pytest's own process), each
# taking whole modules (loadscope: a module's Ray cluster or MLflow server starts once) in the order
# tests/conftest.py sets, the longest first (--no-loadscope-reorder keeps it).
PYTEST_EXIT := $(VENV)/.pytest-exit
PYTEST_WORKERS ?= 2
XDIST = -n $(PYTEST_WORKERS) --dist loadscope --no-loadscope-reorder
test: install ## Run the test suite on 2 workers: make test [PYTEST_ARGS='-x -k smoke'] [PYTEST_WORKERS=0]
	@rm -f $(PYTEST_EXIT); $(PY) -m pytest $(XDIST) $(PYTEST_ARGS); rc=$$?; echo $$rc > $(PYTEST_EXIT); \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests (exit 5)" >&2; fi; \
	exit $$rc

# The inner loop: no `slow` test (the end-to-end runs through Ray and MLflow), no `gpu` test, stop at the
# first failure, on the workers of `make test`.
test-fast: install ## The inner loop: not slow, not gpu, -x, 2 workers [PYTEST_ARGS='-k report']
	$(PY) -m pytest -m "not slow and not gpu" -x $(XDIST) $(PYTEST_ARGS)

mlflow-ui: install ## MLflow UI on the embedded store at http://127.0.0.1:5000 (MLFLOW_PORT=...)
	@echo "MLflow UI: http://127.0.0.1:$(MLFLOW_PORT)/#/experiments?workflowType=machine_learning -- pick 'Model training'" \
		"(top left) once so that experiments open on their runs; each run of an experiment prints a link to its runs"
	$(MLFLOW) ui --backend-store-uri sqlite:///$(MLFLOW_DB) \
		--default-artifact-root $(MLFLOW_ARTIFACTS) --host 127.0.0.1 --port $(MLFLOW_PORT) --workers 1

mlflow-server: install ## MLflow tracking server for tracking=server on 127.0.0.1 (HOST=, MLFLOW_PORT=); waits for /health
	MLFLOW_HOST=$(BIND) MLFLOW_PORT=$(MLFLOW_PORT) ./mlflow/server.sh

head: install ## Start the Ray head on 127.0.0.1 (HOST=ip to let workers join; GPU=model [GPUS=n]; BLOCK=1; DASHBOARD=1)
	$(PY) -m orchestrator.cluster head --host $(BIND) --port $(RAY_PORT) $(NODE_ARGS) $(if $(DASHBOARD),--dashboard)

worker: install ## Join the Ray cluster declaring this node's GPU model: make worker HEAD=host:port GPU=rtx2060 [GPUS=n]
	@if [ -z "$(HEAD)" ]; then echo "make worker: give the head's address, HEAD=host:port" >&2; exit 2; fi
	$(PY) -m orchestrator.cluster worker --head $(HEAD) $(if $(filter command line,$(origin HOST)),--host $(HOST)) $(NODE_ARGS)

ray-status: install ## The cluster's nodes and the GPU models they declared [HEAD=host:port, else RAY_ADDRESS or local]
	@$(PY) -m orchestrator.cluster status $(if $(HEAD),--address $(HEAD))

sweep-all-gpus: install ## The sweep on every GPU model of the cluster, compared: [HEAD=host:port] [TRACKING=server] [ARGS=...]
	$(PY) -m orchestrator +experiment=sweep 'devices=[auto]' cluster=ray $(if $(HEAD),cluster.address=$(HEAD)) \
		tracking=$(TRACKING) $(ARGS)

sync: install ## Log into MLflow what the local journal holds and MLflow lacks [ARGS='--experiment sweep']
	$(PY) -m orchestrator.sync $(ARGS)

report: install ## Report an experiment from the embedded store into reports/<experiment>/ [EXPERIMENT=fusion_ablation]
	$(PY) -m orchestrator.report --experiment $(EXPERIMENT) $(ARGS)

reports: install ## Rebuild the published reports (conf/reports.yaml) from the committed bundles into reports/
	$(PY) -m orchestrator.report --published $(ARGS)

ingest: install ## Log the committed results bundles (every folder with a records.jsonl under results/) into the embedded store
	@if [ -z "$$(find results -name records.jsonl -print -quit 2>/dev/null)" ]; then \
		echo "no results bundle (a folder with records.jsonl) under results/"; exit 0; fi; \
	$(PY) -m orchestrator.ingest --no-summary results

export: install ## An experiment's MLflow runs as a results bundle: make export EXPERIMENT=sweep OUT=DIR [TRACKING=server] [ARGS=...]
	@if [ -z "$(OUT)" ]; then echo "make export: give the bundle folder to write, OUT=DIR" >&2; exit 2; fi
	$(PY) -m orchestrator.export --experiment $(EXPERIMENT) --out $(OUT) --tracking $(TRACKING) $(ARGS)

# Every linter runs (so one pass shows every problem); the ones that failed are named on the last line
# and in $(LINT_FAILED), which .ci/run reads.
LINT_FAILED := $(VENV)/.lint-failed
lint: install ## ruff check, ruff format --check, import contracts (lint-imports) and types (mypy); see pyproject.toml
	@rm -f $(LINT_FAILED); failed=""; \
	$(VENV)/bin/ruff check . || failed="$$failed ruff-check"; \
	$(VENV)/bin/ruff format --check . || failed="$$failed ruff-format"; \
	$(VENV)/bin/lint-imports --no-logo --cache-dir .cache/import-linter || failed="$$failed import-linter"; \
	$(VENV)/bin/mypy || failed="$$failed mypy"; \
	if [ -n "$$failed" ]; then echo "$${failed# }" > $(LINT_FAILED); echo "make lint: failed:$$failed" >&2; exit 1; fi

# The offline install kit for GPU nodes without a package index (scripts/gpu_kit.py; on the node:
# scripts/install-kit.sh KIT_DIR). Built here, from the package index, for the node's Python and platform.
KIT_PYTHON ?= 3.12
KIT_PLATFORM ?= manylinux_2_28_x86_64
KIT_DIR ?= .devcache/gpu-kit
KIT_PART_MB ?= 60
KIT_BASE ?= scripts/kit/cuda-image-base.txt
KIT_LEVEL ?= 6
KIT_EXTRA ?=
gpu-kit: install ## Kit for GPU nodes without an index: [KIT_PYTHON=3.12 KIT_PLATFORM=manylinux_2_28_x86_64 KIT_DIR=.devcache/gpu-kit KIT_PART_MB=60 KIT_BASE=file|none KIT_EXTRA='tensorflow[and-cuda]==2.20.0']
	$(PY) scripts/gpu_kit.py build --out $(KIT_DIR) --python $(KIT_PYTHON) --platform $(KIT_PLATFORM) \
		--part-mb $(KIT_PART_MB) --base $(KIT_BASE) --level $(KIT_LEVEL) $(foreach r,$(KIT_EXTRA),--extra '$(r)')
