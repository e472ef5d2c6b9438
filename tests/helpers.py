"""Helpers shared by several test modules."""

from __future__ import annotations

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
    from msml.preprocessing import OUTPUT_FILES

    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(Path(directory).iterdir())
        if p.name in OUTPUT_FILES
    }
