# churn-ops: `make demo` runs the job on simulated data, `make test` runs every test.
# Both create .venv from uv.lock first, so every machine gets the same versions.

SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
UV_VERSION := 0.13.9
# uv from PATH, else the one `make` installs into $(PYTHON) with pip.
UV := $(shell command -v uv 2>/dev/null || echo "$(PYTHON) -m uv")
# uv may only use an installed Python 3.11 (the lock's); it never downloads one.
export UV_PYTHON_DOWNLOADS := never

# Nothing phones home (same list as tasks/core/telemetry.py; a test keeps them equal).
export WHYLOGS_NO_ANALYTICS := True
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_CLOUD_ENABLE_ORCHESTRATION_TELEMETRY := false
export DO_NOT_TRACK := true
export MLFLOW_DISABLE_TELEMETRY := true
export SCARF_NO_ANALYTICS := true

.PHONY: demo test unit integration bench lint clean setup

setup: $(VENV)/.synced

$(VENV)/.synced: uv.lock pyproject.toml
	@command -v uv >/dev/null 2>&1 || $(PYTHON) -m uv --version >/dev/null 2>&1 || \
		$(PYTHON) -m pip install --quiet "uv==$(UV_VERSION)"
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
	$(PY) bench/feature_day.py
	$(PY) bench/materialize.py
	$(PY) bench/train.py
	$(PY) bench/score.py
	$(PY) bench/monitor.py
	$(PY) bench/online.py
	$(PY) bench/night.py --sizes 1000000

lint: setup
	$(VENV)/bin/ruff check flows tasks tests bench feature_repo

clean:
	rm -rf .churn
