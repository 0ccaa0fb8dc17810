# retinaseg — the two quick-start commands are `make pipeline` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PIP_QUIET := --quiet --disable-pip-version-check
SOURCE ?=
ROOT ?=
BASE ?= main
export GX_ANALYTICS_ENABLED := false
export MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR := false

.PHONY: help venv pipeline test test-fast lint format data app metrics-diff bench clean-outputs

help:
	@echo "make pipeline      create .venv, install, run the whole DVC pipeline (dvc repro)"
	@echo "make test          create .venv if needed, run the test suite"
	@echo "make test-fast     unit tests only (no slow/real-data/browser tests)"
	@echo "make lint          ruff check + ruff format --check"
	@echo "make data SOURCE=drive ROOT=/path/to/DRIVE   copy a dataset into data/raw and track it with DVC"
	@echo "make app           the Streamlit demo on http://127.0.0.1:8501"
	@echo "make metrics-diff [BASE=main]   dvc metrics/params diff as Markdown"
	@echo "make bench         benchmarks -> reports/benchmarks/*.json"

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11 or run 'make PYTHON=/path/to/python3.11 ...'"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo ">> installing retinaseg and its dependencies into $(VENV) (first time: several minutes)"
	@$(BIN)/python -m pip install $(PIP_QUIET) -e ".[dev]" 2>&1 | grep -v "is ignored: it is neither" || true
	@$(BIN)/python -c "import retinaseg, torch, segmentation_models_pytorch, great_expectations, mlflow, dvc" \
		|| { echo "error: the install into $(VENV) is incomplete (see the pip output above)"; exit 1; }
	@touch $(STAMP)

venv: $(STAMP)

pipeline: $(STAMP)
	@PATH="$(abspath $(BIN)):$$PATH" dvc repro
	@echo ">> done: reports/comparison.md; browse runs with: $(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db"

test: $(STAMP)
	@$(BIN)/python -m pytest

test-fast: $(STAMP)
	@$(BIN)/python -m pytest -m "not slow and not browser"

lint: $(STAMP)
	@$(BIN)/ruff check .
	@$(BIN)/ruff format --check .

format: $(STAMP)
	@$(BIN)/ruff check --fix .
	@$(BIN)/ruff format .

data: $(STAMP)
	@test -n "$(SOURCE)" -a -n "$(ROOT)" || { echo "usage: make data SOURCE=kaggle|drive|stare|chase|folder ROOT=/path/to/dataset"; exit 2; }
	@$(BIN)/retinaseg data add --source $(SOURCE) --root "$(ROOT)"

app: $(STAMP)
	@$(BIN)/streamlit run app/streamlit_app.py --server.address 127.0.0.1 --server.port 8501

metrics-diff: $(STAMP)
	@PATH="$(abspath $(BIN)):$$PATH" bash scripts/metrics_diff.sh $(BASE)

bench: $(STAMP)
	@$(BIN)/python benchmarks/train_throughput.py
	@$(BIN)/python benchmarks/inference_latency.py
