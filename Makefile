# deepserve — `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DS := $(VENV)/bin/deepserve
PYTEST := $(PY) -m pytest
UV := $(shell command -v uv 2>/dev/null)
PYTEST_ARGS ?=

.PHONY: help setup tools cluster-up cluster-down cluster-status test test-unit test-integration \
        test-e2e test-triton lint verify crds demo demo-down bench e2e-kind wheel clean

help: ## show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(PY):
	@command -v uv >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet uv
	uv venv --quiet --python $(PYTHON) $(VENV)

setup: $(PY) ## create .venv and install deepserve with the engine, Triton and dev dependencies
	uv pip install --quiet --python $(PY) -e '.[engine,triton,dev]'
	@$(PY) -c "import deepserve.operator.cli, deepserve.engine; print('deepserve installed in $(VENV)')"

tools: setup ## build the pinned etcd, kube-*, kubectl, KWOK and Helm into ~/.cache/deepserve/tools
	$(DS) dev tools

cluster-up: tools ## start the local control plane with simulated GPU node pools
	$(DS) dev up

cluster-down: ## stop the local control plane
	$(DS) dev down

cluster-status: ## show the local control plane's state
	$(DS) dev status

test: tools ## everything CI runs: verify, lint, unit, integration and e2e tests
	$(MAKE) --no-print-directory verify
	$(MAKE) --no-print-directory lint
	$(PYTEST) tests -m "not gpu" $(PYTEST_ARGS)

test-unit: setup ## unit tests (no cluster)
	$(PYTEST) tests/unit -m "unit or not (integration or e2e or gpu)" $(PYTEST_ARGS)

test-integration: tools ## integration tests against the real local control plane
	$(PYTEST) tests/integration -m "not gpu" $(PYTEST_ARGS)

test-e2e: tools ## the whole flow: chart, operator, real Triton processes
	$(PYTEST) tests/e2e -m "not gpu" $(PYTEST_ARGS)

lint: setup ## ruff, mypy and the import-linter layer contracts
	$(VENV)/bin/ruff check deepserve tests bench
	$(VENV)/bin/mypy deepserve
	$(VENV)/bin/lint-imports

verify: setup ## regenerate CRDs (and the chart's copy) and fail on drift
	$(DS) operator gen-crds --check

crds: setup ## regenerate crds/ and charts/deepserve/crds/
	$(DS) operator gen-crds

demo: tools ## the local-cluster demo: cluster, chart, operator, a model, prompts and the bill
	$(PY) -m deepserve.operator.dev.demo

demo-down: ## stop everything the demo started
	$(PY) -m deepserve.operator.dev.demo --down

bench: setup ## run the CPU benchmarks (print figures)
	@for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

e2e-kind: ## build images, create a kind cluster, install the chart, run the e2e suite (needs Docker + kind)
	hack/e2e-kind.sh

wheel: setup ## build the wheel into dist/
	uv build --wheel --out-dir dist .

clean: ## remove build outputs (keeps the tools cache)
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache .mypy_cache
