"""The two locks `make lock` compiles: the runtime lock covers every package msml imports and every pyproject
dependency at a version pyproject allows; the dev lock is the runtime lock plus the dev extra, never a different
version of a runtime package; no dev tool reaches the runtime lock (exports and conda.yaml ship it)."""

from __future__ import annotations

import ast
import sys
import tomllib
from importlib.metadata import packages_distributions

import pytest
from packaging.requirements import Requirement

from msml.ops.project import RUNTIME_LOCK, _normalise, read_lock
from tests.conftest import ROOT

DEV_LOCK = RUNTIME_LOCK.parent / "dev.txt"
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _requirements(specs: list[str]) -> list[Requirement]:
    return [Requirement(spec.split("#", 1)[0].strip()) for spec in specs]


def _imported_modules() -> dict[str, str]:
    """{top-level module: first file importing it} over every import in src/msml, lazy ones included."""
    found: dict[str, str] = {}
    for path in sorted((ROOT / "src" / "msml").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], str(path.relative_to(ROOT)))
    return found


@pytest.mark.parametrize("group", ["runtime", "dev"])
def test_every_dependency_is_locked_at_a_version_pyproject_allows(group):
    lock = read_lock(ROOT / (RUNTIME_LOCK if group == "runtime" else DEV_LOCK))
    specs = PROJECT["dependencies"] + (PROJECT["optional-dependencies"]["dev"] if group == "dev" else [])
    for req in _requirements(specs):
        assert _normalise(req.name) in lock, f"{req.name} is not in the {group} lock: run `make lock`"
        version = lock[_normalise(req.name)][1]
        assert req.specifier.contains(version, prereleases=True), f"{req.name}=={version} breaks {req}: make lock"


def test_dev_lock_is_the_runtime_lock_plus_dev_tools():
    runtime, dev = read_lock(ROOT / RUNTIME_LOCK), read_lock(ROOT / DEV_LOCK)
    assert {k: v[1] for k, v in runtime.items()} == {k: dev[k][1] for k in runtime if k in dev}
    assert set(runtime) <= set(dev)
    dev_tools = {_normalise(r.name) for r in _requirements(PROJECT["optional-dependencies"]["dev"])}
    assert not dev_tools & set(runtime), "a dev tool is in the runtime lock"


def test_every_package_msml_imports_is_a_runtime_dependency():
    """An import of a package that only the dev extra brings works in the test venv and fails in an export."""
    runtime = read_lock(ROOT / RUNTIME_LOCK)
    providers = packages_distributions()
    missing = {}
    for module, where in _imported_modules().items():
        if module in sys.stdlib_module_names or module == "msml" or module == "__future__":
            continue
        dists = providers.get(module)
        assert dists, f"{module} (imported in {where}) is not installed"
        if not any(_normalise(d) in runtime for d in dists):
            missing[module] = (where, dists)
    assert not missing, f"imported at run time but not in {RUNTIME_LOCK}: {missing}"
