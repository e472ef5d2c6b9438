"""What the export could not make itself, each with the one command that makes it (MISSING_EVIDENCE.md).

Images come only from running the hand-in's own files (`msml handin`) and a running Grafana (`msml evidence
grafana`); the export lists every one of them with that command, never fakes one, and each command drops the
entries it has made.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from msml.handin.names import (
    ALERTING_DIR,
    GRAFANA_DIR,
    MEMBANGUN,
    MLFLOW_ARTIFACTS,
    MLFLOW_DASHBOARD,
    MONITORING,
    PROMETHEUS_DIR,
    SERVING_IMAGE,
)


@dataclass(frozen=True)
class Missing:
    """One evidence file or folder the export does not make itself, and the command that makes it."""

    path: str  # relative to the export's out dir
    what: str
    command: str


def grafana_command(out: Path) -> str:
    """The one command that fills the two Grafana folders (Grafana 11.6 in Docker against `make demo`'s stack)."""
    return 'make demo && .venv/bin/msml evidence grafana --out "$EXPORT"   # in the msml checkout, with Docker'


def grafana_missing(out: Path, folder: Path) -> list[Missing]:
    """The Grafana half of Kriteria 4: only a running Grafana produces it (`msml evidence grafana`)."""
    from msml.handin.grafana import ALERT_KEYS
    from msml.handin.names import grafana_panel_stems

    rel = lambda p: str(p.relative_to(out))  # noqa: E731
    monitoring = folder / MONITORING
    command = grafana_command(out)
    return [
        Missing(
            rel(monitoring / GRAFANA_DIR) + "/",
            f"Grafana dashboard panels, one per metric ({len(grafana_panel_stems())}: "
            "1.monitoring_<metric>.jpg, 2. ...)",
            command,
        ),
        Missing(
            rel(monitoring / ALERTING_DIR) + "/",
            f"Grafana-managed alert rules and their notifications ({', '.join(ALERT_KEYS)}: "
            "1.rules_<metric>.jpg, 2.notifikasi_<metric>.jpg, 3. ...)",
            command,
        ),
    ]


HANDIN_COMMAND = '.venv/bin/msml handin --out "$EXPORT"   # runs the hand-in\'s own files (~45 min; --profile quick)'


def not_taken(out: Path, folder: Path) -> list[Missing]:
    """Every evidence item, with the command that produces it from the hand-in's own files."""
    rel = lambda p: str(p.relative_to(out))  # noqa: E731
    model, monitoring = folder / MEMBANGUN, folder / MONITORING
    return [
        Missing(
            rel(model / MLFLOW_DASHBOARD), "MLflow UI: the runs of modelling.py and modelling_tuning.py", HANDIN_COMMAND
        ),
        Missing(rel(model / MLFLOW_ARTIFACTS), "MLflow UI: the served run's artifacts", HANDIN_COMMAND),
        Missing(
            rel(monitoring / SERVING_IMAGE), "mlflow models serve and a real request, in a terminal", HANDIN_COMMAND
        ),
        Missing(
            rel(monitoring / PROMETHEUS_DIR) + "/",
            "Prometheus graphs of the exporter's metrics 1.monitoring_<metric>.jpg ..., its rules and alerts pages",
            HANDIN_COMMAND,
        ),
        *grafana_missing(out, folder),
    ]


def is_made(path: str, made: list[str]) -> bool:
    """Whether `made` (paths relative to the export's out dir) covers the item at `path`: its own file, or for a
    folder item (ending in /) the folder or a file in it."""
    return any(m == path or (path.endswith("/") and m.startswith(path)) for m in made)


def still_missing(missing: list[Missing], made: list[str]) -> list[Missing]:
    return [item for item in missing if not is_made(item.path, made)]


def drop_items(missing_file: Path, made: list[str]) -> None:
    """Remove the entries that `made` covers (`is_made`) from MISSING_EVIDENCE.md (the file goes when nothing else
    is listed): the command that makes them has run."""
    if not missing_file.is_file():
        return
    head, *items = missing_file.read_text().split("\n- `")
    kept = [item for item in items if not is_made(item.split("`", 1)[0], made)]
    if kept:
        missing_file.write_text("\n- `".join([head, *kept]))
    else:
        missing_file.unlink()


def missing_report(missing: list[Missing]) -> str:
    lines = [
        "# Evidence not produced by this export",
        "",
        "Evidence comes only from running the hand-in's own files (and Grafana); this export did not make these.",
        "Run each command in the msml checkout, after `export EXPORT=<this folder>`: the files land in place (and",
        "the zip is refreshed). Nothing below is a placeholder.",
        "",
    ]
    for item in missing:
        lines += [f"- `{item.path}` — {item.what}", "  ```", f"  {item.command}", "  ```"]
    return "\n".join(lines) + "\n"
