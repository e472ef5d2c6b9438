# The two commands: `make demo` (the main job) and `make test` (the whole suite).
# Each sets itself up from nothing: virtualenv, pinned dependencies, Debian packages.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
# `mlflow models serve` execs gunicorn from PATH, so the venv's bin must be on it
export PATH := $(BIN):$(PATH)

.PHONY: demo test test-fast lint lock down bench system venv clean ci-local

# The stamp is written last: an interrupted install is redone; a broken .venv is rebuilt by make-venv.sh.
# The dev lock is the whole environment (runtime + dev extra at exact versions); msml itself comes on top.
$(VENV)/.installed: pyproject.toml requirements/dev.txt
	@bash scripts/make-venv.sh $(PYTHON) $(VENV)
	@echo "installing the locked Python dependencies into $(VENV) (first time: a few minutes)"
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements/dev.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	@touch $@

# make-venv.sh runs every time (it is quick): a .venv broken after its stamp was written is rebuilt too
venv:
	@bash scripts/make-venv.sh $(PYTHON) $(VENV)
	@$(MAKE) -s --no-print-directory $(VENV)/.installed

system:
	@bash scripts/install-system-deps.sh

# system first: Prometheus/Alertmanager missing must not cost minutes of training. Ports etc.: DEMO_ARGS,
# e.g. make demo DEMO_ARGS="--mlflow-port 5050 --trials 3" (`msml demo --help` lists them).
demo: venv system
	$(BIN)/msml demo $(DEMO_ARGS)

# Here a missing Debian binary fails its test (MSML_REQUIRE_SYSTEM); elsewhere it skips with the reason.
test: venv system lint
	MSML_REQUIRE_SYSTEM=1 $(BIN)/python -m pytest

# The inner loop: code (tests/unit) and data (tests/data) tests, no training, no servers, no Debian binaries.
# It includes `msml render --check` (tests/unit/test_generated.py): a stale generated file fails the inner loop.
# Measured 2026-12-07, load average about 1 on the 2 cores, four runs: 359 tests, 28 s of pytest (25.4-29.5 s),
# 36 s with make's venv check (33.2-39.1 s). `msml` started as a new process (~1.3 s each) is left to `make test`
# (`slow`): in-process tests of the same behaviour stand in here.
test-fast: venv
	$(BIN)/python -m pytest tests/unit tests/data -m "not slow and not system"

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Recompile both locks from pyproject.toml for Python 3.11 on Linux x86-64. uv keeps each version already in a
# lock while it still satisfies pyproject (`uv pip compile --upgrade-package NAME` moves one on purpose); the dev
# lock is constrained by the runtime lock, so the tests run exactly the versions an export ships.
LOCK := $(BIN)/uv pip compile pyproject.toml --quiet --python-version 3.11 --python-platform x86_64-unknown-linux-gnu \
	--custom-compile-command "make lock"
lock: venv
	$(LOCK) -o requirements/runtime.txt
	$(LOCK) --extra dev -c requirements/runtime.txt -o requirements/dev.txt

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
	$(BIN)/python benchmarks/bench_champion.py

clean:
	rm -rf $(VENV) .run mlflow.db mlartifacts dist
