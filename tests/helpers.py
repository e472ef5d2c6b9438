"""Helpers shared by several test modules."""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
# `make test` sets it: there a missing Debian binary is a broken set-up (fail); elsewhere (`make test-fast`, a bare
# pytest on a laptop) the test skips and says which binary it lacks.
REQUIRE_SYSTEM = "MSML_REQUIRE_SYSTEM"


def need_binary(*names: str) -> str:
    """Path of the first of `names` on PATH (a system binary the test runs for real); skip or fail without it."""
    for name in names:
        if path := shutil.which(name):
            return path
    message = f"{' or '.join(names)} is not installed (scripts/install-system-deps.sh installs it)"
    if os.environ.get(REQUIRE_SYSTEM) == "1":
        pytest.fail(message)
    pytest.skip(message)


def lint_workflows(paths) -> list[str]:
    """Lint GitHub workflow files offline; returns one message per failure (empty: all clean).

    Each file is checked against GitHub's workflow schema (`check-jsonschema --builtin-schema
    vendor.github-workflows`) and audited by `zizmor --offline` (unpinned actions, template
    injection, excessive permissions, persisted credentials, ...). A message names the tool and the
    file and carries the tool's own output.
    """
    failures = []
    for path in map(Path, paths):
        for tool, command in (
            ("check-jsonschema", [str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.github-workflows"]),
            ("zizmor", [str(BIN / "zizmor"), "--offline", "--no-progress"]),
        ):
            result = subprocess.run([*command, str(path)], capture_output=True, text=True, timeout=120)
            if result.returncode != 0:
                failures.append(f"{tool} {path} exited {result.returncode}:\n{result.stdout}{result.stderr}".rstrip())
    return failures


def dataset_digests(directory: Path) -> dict[str, str]:
    """sha256 of each file `msml preprocess` writes in `directory` (its outputs; manifest.json is msml's own
    integrity record of them, which the standalone course scripts do not write)."""
    from msml.data.preprocessing import OUTPUT_FILES

    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(Path(directory).iterdir())
        if p.name in OUTPUT_FILES
    }


@functools.cache
def cheapest_seed(trials: int = 1, candidates: int = 100, every_family: bool = False) -> int:
    """A seed whose first `trials` Optuna trials cost the least together (tuning.estimated_cost), for tests
    that tune for real with a trial or two: the seed only picks the parameters and the estimators' random_state,
    and some seeds' first trials sit in the space's most expensive corner (minutes on a loaded 2-core machine).
    `every_family`: only seeds whose first trials include each model family (the ensemble is then a candidate).
    """
    import optuna

    from msml.training.tuning import FAMILIES, estimated_cost, suggest_params

    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def first_trials(seed: int) -> list[dict]:
        study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
        found = []
        for _ in range(trials):
            trial = study.ask()
            found.append(suggest_params(trial))
            study.tell(trial, 0.5)  # any value: the first trials of TPE are its random start-up ones
        return found

    costs = {}
    for seed in range(candidates):
        params = first_trials(seed)
        if not every_family or {p["family"] for p in params} == set(FAMILIES):
            costs[seed] = sum(estimated_cost(p) for p in params)
    return min(costs, key=costs.get)
