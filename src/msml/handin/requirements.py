"""Each exported folder's requirements: the distributions its files import, at the versions of the runtime lock.

Derived at export time, not copied: the import statements of the folder's Python files and notebooks (ast) are
mapped to their distributions (the installed packages' own metadata: `sklearn` is scikit-learn), then pinned to
requirements/runtime.txt — the versions msml's tests ran them with. A folder whose files import mlflow also gets
what mlflow needs pinned to run them here (MLFLOW_RUNTIME). The same list is conda.yaml's pip section.
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import json
import re
import sys
from pathlib import Path

import yaml

from msml.config import PYTHON_VERSION
from msml.errors import ExportError

# mlflow's own requirements leave these open, and the newest breaks it: SQLAlchemy 2.1 removed what MLflow 2.19's
# SQL stores import (ImportError on FallbackAsyncAdaptedQueuePool; sqlite:///mlflow.db is such a store).
MLFLOW_RUNTIME = ("sqlalchemy",)
# One Python for everything the hand-in states (conda.yaml, workflows, READMEs): the lock's (`make lock`
# compiles for 3.11) and the notebook's kernel.
PYTHON = PYTHON_VERSION  # one Python across the hand-in: the lock's


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def imported_modules(source: str) -> set[str]:
    """Top-level modules a Python source imports (absolute imports only)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module.split(".")[0])
    return found


def notebook_source(path: Path) -> str:
    """The code cells of a notebook as one Python source (IPython magics and shell lines left out)."""
    cells = json.loads(path.read_text())["cells"]
    code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    return re.sub(r"^\s*[%!].*$", "", code, flags=re.MULTILINE)


def folder_imports(folder: Path) -> set[str]:
    """Third-party modules imported by the Python files and notebooks under `folder` (its own modules excluded)."""
    modules: set[str] = set()
    local = set()
    for path in sorted(folder.rglob("*")):
        if path.suffix == ".py":
            local.add(path.stem)
            modules |= imported_modules(path.read_text())
        elif path.suffix == ".ipynb":
            modules |= imported_modules(notebook_source(path))
    return modules - set(sys.stdlib_module_names) - local - {"__future__"}


@functools.cache
def _providers() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()  # scans every installed distribution: once


def distribution_of(module: str) -> str:
    """The distribution that provides `module`, from the installed packages' metadata."""
    providers = _providers().get(module)
    if not providers:
        raise ExportError(f"an exported file imports {module!r}, which no installed distribution provides")
    return providers[0]


def requirements(modules: set[str], lock: dict[str, tuple[str, str]]) -> list[str]:
    """`name==version` for each distribution `modules` come from (plus MLFLOW_RUNTIME with mlflow), sorted."""
    names = {_normalise(distribution_of(m)) for m in modules}
    if "mlflow" in names:
        names |= set(MLFLOW_RUNTIME)
    pins = []
    for name in sorted(names):
        if name not in lock:
            raise ExportError(f"{name} is imported by an exported file but has no pin in requirements/runtime.txt")
        pins.append("{}=={}".format(*lock[name]))
    return pins


def requirements_text(pins: list[str], what: str) -> str:
    return (
        f"# What {what} import, at the versions they were tested with (PyPI).\n"
        "# Install from this folder:  python -m pip install -r requirements.txt\n" + "\n".join(pins) + "\n"
    )


def conda_env(name: str, pins: list[str]) -> str:
    """conda.yaml of an MLflow Project: Python, pip, and the pins of the project's files."""
    env = {"name": name, "channels": ["conda-forge"], "dependencies": [f"python={PYTHON}", "pip", {"pip": pins}]}
    return (
        "# The environment `mlflow run MLProject` creates (conda): the packages the project's files import.\n"
        + yaml.safe_dump(env, sort_keys=False, width=120)
    )
