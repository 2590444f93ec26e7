# Kompression: `make demo` runs a real compression on this machine; `make test` runs every test.
# Both set up what they need on a fresh machine (Python environment, test bed binaries).

SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
UV := $(shell command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv)
EXTRAS := operator,worker,dev
# llmQuantize's environment: llm-compressor pins torch <= 2.14, the worker extra 2.15, so never one venv.
VENV_LLM := .venv-llm

include Makefile.testbed

.PHONY: help setup setup-llm demo test test-fast test-llm lint format crd bench clean images test-images

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

$(UV):
	python3 -m pip install --quiet --user uv || python3 -m pip install --quiet uv

$(VENV)/.installed: pyproject.toml | $(UV)
	@test -x $(PY) || $(UV) venv --quiet --python 3.11 $(VENV)
	VIRTUAL_ENV=$(VENV) $(UV) pip install --quiet -e ".[$(EXTRAS)]"
	@touch $@

setup: $(VENV)/.installed ## create .venv with the operator, worker and dev extras

$(VENV_LLM)/.installed: pyproject.toml | $(UV)
	@test -x $(VENV_LLM)/bin/python || $(UV) venv --quiet --python 3.11 $(VENV_LLM)
	VIRTUAL_ENV=$(VENV_LLM) $(UV) pip install --quiet -e ".[llm]" "pytest>=8" "pytest-timeout>=2.3" "hypothesis>=6.100"
	@touch $@

setup-llm: $(VENV_LLM)/.installed ## create .venv-llm with the llm extra (llm-compressor) for llmQuantize jobs

demo: setup ## train the quickstart model, then compress it: prune -> distill -> int8 -> ONNX
	$(BIN)/kompression example-model --output file://.kompression/quickstart/digits-cnn.pt2
	$(BIN)/kompression run examples/quickstart.yaml

lint: setup ## ruff, mypy (strict), import rules (layers too), CRD drift
	$(BIN)/ruff check operator tests benchmarks
	$(BIN)/ruff format --check operator tests benchmarks
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/kompression crd | diff -u crds/compressionjobs.kompression.dev.yaml - || \
	  (echo "crds/ is stale: run make crd" >&2; exit 1)
	$(BIN)/kompression crd --kind CompressionSweep | diff -u crds/compressionsweeps.kompression.dev.yaml - || \
	  (echo "crds/ is stale: run make crd" >&2; exit 1)

format: setup ## apply ruff's formatter and fixes
	$(BIN)/ruff format operator tests benchmarks
	$(BIN)/ruff check --fix operator tests benchmarks

crd: setup ## regenerate everything derived from the typed API: crds/, the chart's and deploy/ copies, docs/crd-reference.md
	$(BIN)/kompression crd -o crds/compressionjobs.kompression.dev.yaml
	$(BIN)/kompression crd --kind CompressionSweep -o crds/compressionsweeps.kompression.dev.yaml
	$(BIN)/python -m kompression.api.reference > docs/crd-reference.md
	hack/chart-render-deploy.sh

# The images' tests and the real node's need root (as CI runs): the node mounts, and owns a bridge and
# iptables rules. The node starts inside the pytest session and stops with it.
test: setup testbed-deps node-deps images lint test-llm ## every test: the test bed, the product images, and a real node running them
	KOMPRESSION_REAL_NODE=1 KOMPRESSION_TEST_IMAGES=1 $(BIN)/pytest

test-llm: setup-llm ## the LLM path's tests, in .venv-llm (skipped in .venv, which cannot hold llm-compressor)
	OMP_NUM_THREADS=1 $(VENV_LLM)/bin/pytest tests/llm --confcutdir=tests/llm

test-fast: setup ## the tests that need no cluster
	$(BIN)/pytest -m "not cluster"

images: ## build the operator, CPU worker and LLM worker images with buildah, no Docker daemon (cached by their inputs)
	hack/build-images.sh

test-images: setup images ## the built images' tests: UID 65532, read-only root, contents, the quickstart in the CPU worker
	KOMPRESSION_TEST_IMAGES=1 $(BIN)/pytest tests/images

bench: setup setup-llm testbed-deps ## the benchmarks; figures go to benchmarks/RESULTS.md
	$(PY) benchmarks/run_all.py

clean: cluster-down ## remove build and run state (keeps the cached test bed binaries)
	rm -rf .kompression .pytest_cache .mypy_cache .ruff_cache
