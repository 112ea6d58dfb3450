# visionline: `make demo` runs the pipeline end to end, `make test` runs the tests.
# Both set up everything they need (venv, packages) on a fresh machine.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

# The demo and the UI keep their Prefect database under .visionline/, not in ~/.prefect
# shared with whatever else runs Prefect on this machine; no telemetry from pipelines.
export PREFECT_HOME ?= $(CURDIR)/.visionline/prefect
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
# A fresh Prefect database migrates on first start: more than the default 20 s on 2 cores.
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 180

.PHONY: install demo test test-fast lint format bench bench-gpu ui clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: install
	mkdir -p $(PREFECT_HOME)
	$(PY) -m flows.demo

test: lint
	mkdir -p $(PREFECT_HOME)
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow"

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: install  # CPU benchmarks; results land in benchmarks/results/
	@for b in ingest accuracy train_overhead serve pipeline tune; do echo "== $$b"; $(PY) benchmarks/$$b.py || exit 1; done

bench-gpu: install  # on a machine with a GPU (the lent device machine)
	$(PY) benchmarks/train_gpu.py

ui: install
	mkdir -p $(PREFECT_HOME)
	$(VENV)/bin/prefect server start --host 127.0.0.1 --port 4200

clean:
	rm -rf .visionline .pytest_cache
