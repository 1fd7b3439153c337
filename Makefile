# churn-ops: `make demo` runs the job on simulated data, `make test` runs every test.
# Both create .venv from uv.lock first, so every machine gets the same versions.

SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
UV_VERSION := 0.13.9
UV := $(shell command -v uv 2>/dev/null)
ifeq ($(UV),)
UV := $(HOME)/.local/bin/uv
endif

# Nothing phones home: whylogs, Prefect, MLflow and friends are told to stay quiet.
export WHYLOGS_NO_ANALYTICS := True
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := true
export MLFLOW_DISABLE_TELEMETRY := true
export SCARF_NO_ANALYTICS := true

.PHONY: demo test unit integration bench lint clean setup

setup: $(VENV)/.synced

$(UV):
	python3 -m pip install --quiet --user "uv==$(UV_VERSION)" || python3 -m pip install --quiet "uv==$(UV_VERSION)"

$(VENV)/.synced: uv.lock pyproject.toml | $(UV)
	$(UV) sync --frozen
	touch $@

demo: setup
	$(VENV)/bin/churn demo

test: setup
	$(PY) -m pytest tests

unit: setup
	$(PY) -m pytest tests/unit

integration: setup
	$(PY) -m pytest tests/integration

bench: setup
	$(PY) bench/simulate.py
	$(PY) bench/features.py

lint: setup
	$(VENV)/bin/ruff check flows tasks tests bench feature_repo

clean:
	rm -rf .churn
