"""Facts the READMEs state, rendered from their one definition instead of restated by hand.

A README marks a fact with `<!-- msml:NAME -->…<!-- /msml:NAME -->`; `readme_files` re-renders every marked
fragment from the code that owns the fact (the exit codes from `msml.errors`, the layout from each package's
docstring, the dashboard's panels and alerts from `msml.monitoring.definitions`) and leaves the prose around it
alone. `msml render` writes them; `msml render --check` (in `make test-fast`) fails when one is stale.
"""

from __future__ import annotations

import ast
import re
import textwrap
from pathlib import Path

from msml import errors

FRAGMENT = re.compile(r"<!-- msml:(?P<name>[\w-]+) -->(?P<body>.*?)<!-- /msml:(?P=name) -->", re.S)
PACKAGE = Path(__file__).parent
LINE = 118  # the README's code blocks stay readable without scrolling


def fill(text: str, fragments: dict[str, str], where: str) -> str:
    """`text` with each marked fragment replaced by its rendering; a marker with no renderer is an error."""

    def replace(m: re.Match) -> str:
        name = m["name"]
        if name not in fragments:
            raise KeyError(f"{where}: no renderer for the fragment <!-- msml:{name} -->")
        return f"<!-- msml:{name} -->{fragments[name]}<!-- /msml:{name} -->"

    return FRAGMENT.sub(replace, text)


def exit_codes_table() -> str:
    """The README's exit-code table: 0, then every `MsmlError` kind with its code and docstring's first line."""
    kinds = {cls.exit_code: cls for cls in _error_kinds()}
    rows = ["| code | meaning | error |", "|---|---|---|", "| 0 | success | |"]
    rows += [f"| {code} | {_first_line(cls.__doc__)} | `{cls.__name__}` |" for code, cls in sorted(kinds.items())]
    return "\n\n" + "\n".join(rows) + "\n\n"


def _error_kinds() -> list[type[errors.MsmlError]]:
    """The error kinds `msml.errors` defines (one per exit code; subclasses elsewhere reuse a code)."""
    return [
        obj
        for obj in vars(errors).values()
        if isinstance(obj, type) and issubclass(obj, errors.MsmlError) and obj.__module__ == errors.__name__
    ]


def layout_block(package: Path = PACKAGE) -> str:
    """The package's layout: each top-level module and subpackage with the first sentence of its docstring."""
    entries = []
    for path in sorted(package.iterdir()):
        if path.name.startswith("_") or path.name == "__pycache__":
            continue
        if path.is_dir() and (path / "__init__.py").is_file():
            entries.append((f"{path.name}/", _docstring(path / "__init__.py")))
        elif path.suffix == ".py":
            entries.append((path.name, _docstring(path)))
    width = max(len(name) for name, _ in entries) + 4
    lines = []
    for name, doc in entries:
        wrapped = textwrap.wrap(doc, LINE - width) or [""]
        lines.append(f"  {name.ljust(width - 2)}{wrapped[0]}")
        lines += [" " * width + rest for rest in wrapped[1:]]
    return "\n```\nsrc/msml/\n" + "\n".join(lines) + "\n```\n"


def _docstring(path: Path) -> str:
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    return _first_line(doc)


def _first_line(doc: str | None) -> str:
    """The docstring's first sentence (up to the first period that ends a sentence), on one line."""
    flat = " ".join((doc or "").split())
    m = re.search(r"\.(\s|$)", flat)
    return flat[: m.start() + 1] if m else flat


def monitoring_fragments() -> dict[str, str]:
    from msml.monitoring.definitions import ALERTS, PANELS, ROWS, runbook_values

    return {
        "alert-names": ", ".join(a.name for a in ALERTS),
        "alert-count": str(len(ALERTS)),
        "panels": f"{len(PANELS)} panels in rows {' / '.join(ROWS)}",
        **runbook_values(),  # the runbooks' thresholds and hold times
    }


def readme_files(root: Path) -> dict[str, str]:
    """{path relative to the repository root: text} of every README with rendered fragments."""
    fragments = {"exit-codes": exit_codes_table(), "layout": layout_block(), **monitoring_fragments()}
    files = {}
    for rel in ("README.md", "monitoring/README.md"):
        text = (Path(root) / rel).read_text()
        files[rel] = fill(text, fragments, rel)
    return files
