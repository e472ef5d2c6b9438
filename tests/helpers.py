"""Helpers shared by several test modules."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent


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
                failures.append(
                    f"{tool} {path} exited {result.returncode}:\n{result.stdout}{result.stderr}".rstrip()
                )
    return failures
