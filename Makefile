# retinaseg — the two quick-start commands are `make pipeline` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# The environment is installed from a lock (one per Python version), never from pyproject's ranges.
# `make lock` re-resolves on purpose; LOCK_DATE (requirements/lock-date) pins what "today" means.
# `make lock-check` proves the lock still matches pyproject.toml: it re-resolves starting from the
# committed lock (uv keeps its pins as preferences), so the check fails when pyproject asks for
# something the lock does not hold, and not when the package index later shows a release it
# did not show when the lock was made (seen: opencv-python-headless 5.1.0.95, dated before LOCK_DATE).
PYVER = $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)
LOCK = requirements/lock-py$(PYVER).txt
LOCK_PYTHONS := 3.11 3.12
LOCK_DATE = $(shell cat requirements/lock-date)
UV_COMPILE = $(BIN)/uv pip compile pyproject.toml --extra dev --python-platform x86_64-manylinux_2_28 \
	--generate-hashes --exclude-newer $(LOCK_DATE) --custom-compile-command "make lock" --quiet
PIP_QUIET := --quiet --disable-pip-version-check
# pip's output without the warnings about this machine's empty local indexes; pip's exit status is kept
# (the recipe lines that use it run with pipefail)
PIP_FILTER := 2>&1 | { grep -v "is ignored: it is neither" || true; }
SOURCE ?=
ROOT ?=
BASE ?= main
export GX_ANALYTICS_ENABLED := false
export MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR := false

.PHONY: help venv lock lock-check pipeline test test-fast test-faults lint format data app metrics-diff plots bench ui serve \
	services services-down services-status

help:
	@echo "make pipeline      create .venv, install, run the whole DVC pipeline (dvc repro)"
	@echo "make test          create .venv if needed, run the test suite"
	@echo "make test-fast     unit tests only (no slow/real-data/browser tests)"
	@echo "make test-faults   the full fault suite (tests/faults with RETINASEG_FAULTS=full; docs/faults.md)"
	@echo "make lint          ruff check + ruff format --check"
	@echo "make data SOURCE=drive ROOT=/path/to/DRIVE   copy a dataset into data/raw and track it with DVC"
	@echo "make ui            MLflow's web UI on http://127.0.0.1:5000, opened on the project's experiment"
	@echo "make serve         the champion over HTTP on http://127.0.0.1:5001 (retinaseg serve, with limits)"
	@echo "make app           the Streamlit demo on http://127.0.0.1:8501"
	@echo "make services      team services on loopback: PostgreSQL, S3 emulator, mlflow server on :5050 (docs/team.md)"
	@echo "make services-down stop them (the database stays in .services/)"
	@echo "make metrics-diff [BASE=main]   dvc metrics/params diff as Markdown"
	@echo "make lock          re-resolve requirements/lock-py*.txt from pyproject.toml (on purpose: new versions)"
	@echo "make lock-check    fail if the locks no longer match pyproject.toml"
	@echo "make plots         render the DVC plots offline -> dvc_plots/static.html"
	@echo "make bench         benchmarks -> reports/benchmarks/*.json"

$(STAMP): pyproject.toml $(LOCK)
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11 or 3.12, or run 'make PYTHON=/path/to/python3.12 ...'"; exit 1; }
	@test -f $(LOCK) || { echo "error: no lock for Python $(PYVER) ($(LOCK)); supported: $(LOCK_PYTHONS)"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo ">> installing the locked environment ($(LOCK)) into $(VENV) (first time: several minutes)"
	@# setuptools first, from the lock: the one sdist in the lock (antlr4-python3-runtime, via hydra-core)
	@# is then built with it (--no-build-isolation), not with whatever setuptools the index serves that day
	@set -o pipefail; $(BIN)/python scripts/lock_subset.py $(LOCK) setuptools > $(VENV)/build-tools-lock.txt \
		&& $(BIN)/python -m pip install $(PIP_QUIET) --require-hashes --no-deps -r $(VENV)/build-tools-lock.txt $(PIP_FILTER) \
		|| { echo "error: pip could not install setuptools from $(LOCK) into $(VENV) (see the pip output above)"; exit 1; }
	@set -o pipefail; $(BIN)/python -m pip install $(PIP_QUIET) --require-hashes --no-deps --no-build-isolation -r $(LOCK) $(PIP_FILTER) \
		|| { echo "error: pip could not install $(LOCK) into $(VENV) (see the pip output above; a download that failed can be retried with the same command)"; exit 1; }
	@set -o pipefail; $(BIN)/python -m pip install $(PIP_QUIET) --no-deps --no-build-isolation -e . $(PIP_FILTER) \
		|| { echo "error: pip could not install retinaseg itself (pip install -e .) into $(VENV) (see the pip output above)"; exit 1; }
	@$(BIN)/python -m pip check >/dev/null || { $(BIN)/python -m pip check; echo "error: $(LOCK) does not satisfy pyproject.toml; run 'make lock'"; exit 1; }
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

# tests/faults' full part: every stage of the real pipeline killed at several random points, more fuzz,
# a longer server load (plain `pytest` runs its fast part). The table: python scripts/fault_table.py --full
test-faults: $(STAMP)
	@RETINASEG_FAULTS=full PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest tests/faults -p no:cacheprovider

lint: $(STAMP)
	@$(BIN)/ruff check .
	@$(BIN)/ruff format --check .

format: $(STAMP)
	@$(BIN)/ruff check --fix .
	@$(BIN)/ruff format .

data: $(STAMP)
	@test -n "$(SOURCE)" -a -n "$(ROOT)" || { echo "usage: make data SOURCE=kaggle|drive|stare|chase|folder ROOT=/path/to/dataset"; exit 2; }
	@$(BIN)/retinaseg data add --source $(SOURCE) --root "$(ROOT)"

serve: $(STAMP)
	@$(BIN)/retinaseg serve --model models:/retinaseg-vessels@champion

ui: $(STAMP)
	@case "$$MLFLOW_TRACKING_URI" in http*) echo ">> the tracking server has its own UI: $$MLFLOW_TRACKING_URI"; exit 0;; esac
	@$(BIN)/python -c "import mlflow; mlflow.set_tracking_uri('sqlite:///mlflow.db'); e = mlflow.get_experiment_by_name('retinaseg'); print('>> the models: http://127.0.0.1:5000/#/experiments/' + (e.experiment_id if e else '0') + '  (Runs; tick the runs, then Compare)')"
	@$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000

app: $(STAMP)
	@$(BIN)/streamlit run app/streamlit_app.py --server.address 127.0.0.1 --server.port 8501

metrics-diff: $(STAMP)
	@PATH="$(abspath $(BIN)):$$PATH" bash scripts/metrics_diff.sh $(BASE)

plots: $(STAMP)
	@PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python scripts/render_plots.py

bench: $(STAMP)
	@$(BIN)/python benchmarks/train_throughput.py
	@$(BIN)/python benchmarks/inference_latency.py
	@$(BIN)/python benchmarks/server_load.py
	@$(BIN)/python benchmarks/data_loader.py
	@$(BIN)/python benchmarks/ddp_step.py

# The lock tool (uv) comes from the lock itself, so `make lock` also works before the first venv.
$(BIN)/uv:
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python scripts/lock_subset.py requirements/lock-py3.11.txt uv > $(VENV)/uv-lock.txt
	@$(BIN)/python -m pip install $(PIP_QUIET) --require-hashes --no-deps -r $(VENV)/uv-lock.txt

lock: $(BIN)/uv
	@date -u +%Y-%m-%dT%H:%M:%SZ > requirements/lock-date
	@# resolved from scratch into a temporary file: uv would otherwise keep the old lock's pins as
	@# preferences, and the lock would differ from what lock-check re-resolves
	@tmp=$$(mktemp -d); trap 'rm -rf $$tmp' EXIT; \
	for v in $(LOCK_PYTHONS); do \
		$(UV_COMPILE) --python-version $$v -o $$tmp/lock-py$$v.txt || exit 1; \
		mv $$tmp/lock-py$$v.txt requirements/lock-py$$v.txt; \
	done
	@echo ">> requirements/lock-py{$(shell echo $(LOCK_PYTHONS) | tr ' ' ,)}.txt resolved as of $$(cat requirements/lock-date); reinstall: make venv"

lock-check: $(BIN)/uv
	@tmp=$$(mktemp -d); trap 'rm -rf $$tmp' EXIT; \
	for v in $(LOCK_PYTHONS); do \
		cp requirements/lock-py$$v.txt $$tmp/lock-py$$v.txt; \
		$(UV_COMPILE) --python-version $$v -o $$tmp/lock-py$$v.txt || exit 1; \
		diff -u requirements/lock-py$$v.txt $$tmp/lock-py$$v.txt >/dev/null \
			|| { diff -u requirements/lock-py$$v.txt $$tmp/lock-py$$v.txt | head -40; \
			     echo "error: requirements/lock-py$$v.txt does not match pyproject.toml; run 'make lock' and commit"; exit 1; }; \
	done; echo ">> locks match pyproject.toml (resolved as of $(LOCK_DATE))"

services: $(STAMP)
	@$(BIN)/retinaseg services up

services-down: $(STAMP)
	@$(BIN)/retinaseg services down

services-status: $(STAMP)
	@$(BIN)/retinaseg services status
