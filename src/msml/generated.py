"""Files generated from Python definitions (monitoring/, MLProject/, the notebook's parameters and automation,
README facts):
write them, or find the stale ones. `every_file` is the one list of them."""

from __future__ import annotations

from pathlib import Path


def write(root: Path, files: dict[str, str]) -> list[Path]:
    """Write {path relative to root: text}; returns the paths written."""
    written = []
    for rel, text in files.items():
        path = Path(root) / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written


def stale(root: Path, files: dict[str, str]) -> list[str]:
    """Relative paths whose file under `root` is missing or differs from the rendered text."""
    return [
        rel for rel, text in files.items() if not (Path(root) / rel).is_file() or (Path(root) / rel).read_text() != text
    ]


def every_file(settings, root: Path) -> dict[str, str]:
    """Every generated file of the repository, {path relative to `root`: text}: what `msml render` writes and
    `msml render --check` (in `make test-fast`) compares. A new generated file is added here, nowhere else."""
    from msml.docs import readme_files
    from msml.handin.notebook import render_files as notebook_files
    from msml.monitoring.render import render_files
    from msml.ops.project import project_files

    return {
        **render_files(),
        **project_files(settings, root),
        **notebook_files(settings, root),
        **readme_files(root),  # last: the READMEs state counts of what the others render
    }
