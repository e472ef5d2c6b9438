# The two commands: `make demo` (the main job) and `make test` (the whole suite).
# Each sets itself up from nothing: virtualenv, pinned dependencies, Debian packages.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
# `mlflow models serve` execs gunicorn from PATH, so the venv's bin must be on it
export PATH := $(BIN):$(PATH)

.PHONY: demo test down bench system venv clean ci-local

$(VENV)/.installed: pyproject.toml requirements.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c requirements.lock -e ".[dev]"
	@touch $@

venv: $(VENV)/.installed

system:
	@bash scripts/install-system-deps.sh

demo: venv
	$(BIN)/msml demo

test: venv system
	$(BIN)/python -m pytest

down: venv
	$(BIN)/msml down

# Kriteria 3 without a Docker engine: the training job of .github/workflows/training.yml (`msml ci`: mlflow run
# MLProject -> run-info file -> artifacts + run_summary.json), then the Dockerfile `mlflow models build-docker`
# would build, generated and checked. `make ci-local TRIALS=2` for a quick pass.
ci-local: venv
	$(BIN)/msml ci --entry tune $(if $(TRIALS),--trials $(TRIALS)) --out .run/ci

bench: venv
	$(BIN)/python benchmarks/bench_preprocess.py
	$(BIN)/python benchmarks/bench_gateway.py

clean:
	rm -rf $(VENV) .run mlflow.db mlartifacts dist
