"""Rendered course files (their currency: tests/unit/test_generated.py): the notebook's parameter cell is the
contract's, a contract change flows into it and into nothing else of the notebook, and every Python file the
templates render passes the repository's ruff rules."""

from __future__ import annotations

import json
import subprocess

import pytest

from msml.config import load_settings
from msml.data.contract import Contract
from msml.errors import ExportError
from msml.handin.course import course_files
from msml.handin.notebook import PARAMETERS_TAG, notebook_path, render_files, with_parameters
from tests.conftest import ROOT
from tests.helpers import BIN

SETTINGS = load_settings(root=ROOT)


def parameters(notebook_text: str) -> dict:
    """The names the notebook's parameter cell defines, by running it."""
    cell = next(c for c in json.loads(notebook_text)["cells"] if PARAMETERS_TAG in c["metadata"].get("tags", ()))
    namespace: dict = {}
    exec("".join(cell["source"]), namespace)
    return namespace


def test_the_notebooks_parameters_are_the_contracts():
    contract = SETTINGS.contract
    found = parameters((ROOT / notebook_path(SETTINGS)).read_text())
    assert (found["TARGET"], found["POSITIVE"]) == (contract.target, contract.positive)
    assert found["LABELS"] == (contract.negative, contract.positive)
    assert found["MISSING_MARKERS"] == contract.missing_markers
    assert list(found["COLUMNS"]) == contract.features
    for column in contract.columns:
        spec = found["COLUMNS"][column.name]
        assert (spec["type"], spec.get("min"), spec.get("max")) == (column.type, column.min, column.max)
        assert tuple(spec.get("values", ())) == column.values and spec.get("nullable", False) == column.nullable


def test_a_range_change_flows_into_the_notebooks_parameter_cell_only(tmp_path):
    """The issue's drill in small: a column's max changes in the contract; rendering changes that value in the
    parameter cell and nothing else in the notebook."""
    contract = SETTINGS.contract
    column = next(c for c in contract.columns if c.max is not None)
    text = contract.path.read_text()
    spec = f"{column.name}: {{type: {column.type}, min: {column.min:g}, max: {column.max:g}}}"
    assert spec in text, "the test edits the contract's one-line range of this column"
    changed = tmp_path / "contract.yaml"
    changed.write_text(text.replace(spec, spec.replace(f"max: {column.max:g}", f"max: {column.max - 1:g}")))
    settings = SETTINGS.with_overrides(contract=Contract.load(changed))

    rel = notebook_path(SETTINGS)
    committed, rendered = (ROOT / rel).read_text(), render_files(settings)[rel]
    assert parameters(rendered)["COLUMNS"][column.name]["max"] == column.max - 1
    before, after = json.loads(committed)["cells"], json.loads(rendered)["cells"]
    changed_cells = [a["id"] for a, b in zip(before, after, strict=True) if a != b]
    assert changed_cells == [next(c["id"] for c in after if PARAMETERS_TAG in c["metadata"].get("tags", ()))]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not json", "is not a notebook"),
        (json.dumps({"cells": [{"cell_type": "code", "metadata": {}, "source": []}]}), "found 0"),
    ],
)
def test_a_notebook_without_one_parameter_cell_is_refused(text, message):
    with pytest.raises(ExportError, match=message):
        with_parameters(text, "SEED = 1")


def test_every_rendered_python_file_passes_ruff(tmp_path):
    """What the templates in src/msml/handin/templates render (each course script, the notebook's automation)
    is checked with the repository's ruff rules, as the code beside it is by `make lint`."""
    rendered = {**course_files(SETTINGS, ROOT), **render_files(SETTINGS)}
    python = {name.rsplit("/", 1)[-1]: text for name, text in rendered.items() if name.endswith(".py")}
    assert len(python) >= 5, sorted(python)
    for name, text in python.items():
        (tmp_path / name).write_text(text)
    result = subprocess.run(
        [str(BIN / "ruff"), "check", "--no-cache", "--config", str(ROOT / "pyproject.toml"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
