"""Every generated file is current (`msml render --check`, in the fast loop), and the check can fail."""

from __future__ import annotations

import pytest

from msml import docs, errors
from msml.config import load_settings
from msml.generated import every_file, stale
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def files() -> dict[str, str]:
    return every_file(load_settings(), ROOT)


def test_every_generated_file_is_current(files):
    assert stale(ROOT, files) == [], "run `msml render` and commit the result"


def test_a_changed_file_is_stale(tmp_path, files):
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    rel = "monitoring/prometheus/rules/alerts.yml"
    (tmp_path / rel).write_text(files[rel].replace("for: ", "for:  ", 1))
    (tmp_path / "README.md").write_text(files["README.md"].replace("| 2 |", "| 22 |", 1))
    assert sorted(stale(tmp_path, files)) == ["README.md", rel]


def test_each_exit_code_belongs_to_one_error_kind():
    kinds = docs._error_kinds()
    codes = [k.exit_code for k in kinds]
    assert len(codes) == len(set(codes)), "two error kinds share an exit code"
    table = docs.exit_codes_table()
    for kind in kinds:
        assert f"| {kind.exit_code} |" in table and f"`{kind.__name__}`" in table
    assert not any(issubclass(k, RuntimeError) for k in kinds)


def test_a_marker_without_a_renderer_is_an_error():
    with pytest.raises(KeyError, match="no renderer for the fragment <!-- msml:nope -->"):
        docs.fill("a <!-- msml:nope -->x<!-- /msml:nope --> b", {}, "README.md")


def test_a_fragment_is_replaced_and_the_prose_kept():
    text = "before <!-- msml:n -->old<!-- /msml:n --> after"
    assert docs.fill(text, {"n": "new"}, "x") == "before <!-- msml:n -->new<!-- /msml:n --> after"


def test_pipeline_failures_are_not_bad_input():
    from msml.ops.ci import CiError
    from msml.ops.containers import EngineError
    from msml.tracking.postgres import PostgresError
    from msml.training.workers import TuningError

    for kind in (CiError, EngineError, TuningError):
        assert kind.exit_code == errors.PipelineError.exit_code != errors.DataError.exit_code
    assert PostgresError.exit_code == errors.TrackingError.exit_code


def test_a_module_over_400_lines_says_why_in_its_docstring():
    import ast

    long = []
    for path in sorted((ROOT / "src" / "msml").rglob("*.py")):
        text = path.read_text()
        if text.count("\n") > 400 and "Its length" not in (ast.get_docstring(ast.parse(text)) or ""):
            long.append(str(path.relative_to(ROOT)))
    assert long == [], "over ~400 lines without 'Its length (…): why' in the module docstring"
