"""Files generated from Python definitions (MLProject/, monitoring/): write them, or find the stale ones."""

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
