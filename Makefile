# The two commands: `make demo` (the main job) and `make test` (the whole suite).
# Each sets itself up from nothing: virtualenv, pinned dependencies, Debian packages.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
# `mlflow models serve` execs gunicorn from PATH, so the venv's bin must be on it
export PATH := $(BIN):$(PATH)

.PHONY: demo test down bench system venv clean

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

bench: venv
	$(BIN)/python benchmarks/bench_preprocess.py

clean:
	rm -rf $(VENV) .run mlflow.db mlartifacts dist
