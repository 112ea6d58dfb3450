# visionline: `make demo` runs the pipeline end to end, `make test` runs the tests.
# Both set up everything they need (venv, packages) on a fresh machine.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO   ?= .visionline/demo

.PHONY: install demo test test-fast lint format bench ui clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: install
	$(VENV)/bin/visionline samples digits $(DEMO)/digits
	$(VENV)/bin/visionline ingest $(DEMO)/digits --dataset digits
	$(VENV)/bin/visionline validate digits

test: install
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow"

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: install
	@for b in benchmarks/[a-z]*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

ui: install
	$(VENV)/bin/prefect server start --host 127.0.0.1 --port 4200

clean:
	rm -rf .visionline .pytest_cache
