"""`msml render [--check]`: every generated file of the repository, from its one definition."""

from __future__ import annotations

from pathlib import Path

from msml.cli.app import CheckOpt, RootOpt, _render, _settings, app


@app.command()
def render(root: Path | None = RootOpt, check: bool = CheckOpt) -> None:
    """Regenerate monitoring/, MLProject/, the notebook's parameter cell, notebooks/automate_*.py and the READMEs'
    derived facts (--check: exit 1 when one is stale)."""
    from msml.generated import every_file

    settings = _settings(None)
    root = root or settings.root
    _render(every_file(settings, root), root, check, "generated", "msml render")
