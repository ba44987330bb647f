# paperworks — two commands: `make repro` (install + run every paper's quick profile) and
# `make test` (install + whole test suite). `make help` lists the rest.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: help install repro test ui serve lock dag clean-outputs

help:
	@echo "make repro   install (if needed) and run 'dvc repro': every paper's quick profile + reports/README.md"
	@echo "make test    install (if needed) and run the whole test suite (what CI runs)"
	@echo "make ui      MLflow UI + Prefect UI on loopback (prints the URLs)"
	@echo "make serve   Prefect server + every paper served as a deployment (infra/prefect/deployments.yaml)"
	@echo "make lock    re-resolve requirements.in into requirements.lock (needs network)"
	@echo "make dag     show the DVC pipeline"

install: $(STAMP)

# The environment is exactly requirements.lock (fully pinned, resolved once by `make lock`);
# pip installs it without backtracking. torch==2.13.0+cpu comes from the machine's local wheel.
$(STAMP): requirements.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing the pinned environment into $(VENV) (a few minutes on first run) ..."
	@$(BIN)/pip install --progress-bar off -q -r requirements.lock 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
	@$(BIN)/python -c "import torch, prefect, mlflow, dvc, flwr, monai, diffusers, tvm" \
		|| { echo "error: the installed environment does not import; see the pip output above" >&2; exit 1; }
	@touch $@

repro: $(STAMP)
	@PATH="$(CURDIR)/$(BIN):$$PATH" infra/scripts/with-prefect-server.sh $(BIN)/dvc repro
	@echo "results: reports/README.md · metrics: $(BIN)/dvc metrics show · runs: make ui"

test: $(STAMP)
	@PATH="$(CURDIR)/$(BIN):$$PATH" PREFECT_SERVER_ANALYTICS_ENABLED=false $(BIN)/python -m pytest $(PYTEST_ARGS)

ui: $(STAMP)
	@infra/scripts/ui.sh

serve: $(STAMP)
	@infra/scripts/serve.sh

dag: $(STAMP)
	@$(BIN)/dvc dag

lock:
	@test -x /tmp/paperworks-uv/bin/uv || { $(PYTHON) -m venv /tmp/paperworks-uv && /tmp/paperworks-uv/bin/pip install -q uv; }
	/tmp/paperworks-uv/bin/uv pip compile requirements.in --python-version 3.11 --find-links /opt/wheels \
		--index-strategy unsafe-best-match -o requirements.lock
