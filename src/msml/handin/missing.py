"""Evidence the export takes from running servers, and the list of what it could not take (MISSING_EVIDENCE.md).

Images come only from running servers (`msml.handin.evidence`); what is not running is listed with the one
command that produces it, never faked.
"""

from __future__ import annotations

import json
import re
import shlex
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from msml.config import DEFAULT_PORTS, Settings
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
    """One evidence file or folder the export could not produce from a running system."""

    path: str  # relative to the export's out dir
    what: str
    command: str


def _reachable(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status < 500
    except (urllib.error.URLError, OSError, ValueError):
        return False


def serving_evidence(settings: Settings, target: Path, model_url: str, label: str = "model server") -> Path:
    """POST one real test-split row to `<model_url>/invocations` and render command, request and response to a JPG."""
    from msml.handin.evidence import text_image
    from msml.ops.loadgen import load_test_rows
    from msml.serving.model_server import serve_command
    from msml.tracking.registry import champion_uri

    rows, truths = load_test_rows(settings.processed_dir, settings.contract)
    body = {"dataframe_records": [rows[0]]}
    url = f"{model_url.rstrip('/')}/invocations"
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST", headers={"Content-Type": "application/json"}
    )
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=30) as response:
        status, answer = response.status, json.loads(response.read())
    elapsed_ms = (time.perf_counter() - started) * 1000
    port = model_url.rstrip("/").rsplit(":", 1)[-1]
    command = serve_command(
        champion_uri(settings.model_name), port=int(port) if port.isdigit() else DEFAULT_PORTS.model_server
    )
    command[0] = Path(command[0]).name
    tracking = re.sub(r"//[^/@]*@", "//", settings.tracking_uri)  # never print credentials of a remote store
    text = (
        f"# served by ({label}):\n$ MLFLOW_TRACKING_URI={tracking} {shlex.join(command)}\n\n"
        f"# request (a real row of the held-out test split; true label: {truths[0]}):\n"
        f"$ curl -s -X POST {url} -H 'Content-Type: application/json' -d @request.json\n"
        f"{json.dumps(body, indent=2)}\n\n"
        f"# response: HTTP {status} in {elapsed_ms:.0f} ms, at {time.strftime('%Y-%m-%d %H:%M:%S %Z')}\n"
        f"{json.dumps(answer, indent=2)}\n"
    )
    return text_image(text, target, title=f"Serving {champion_uri(settings.model_name)}: a real request and response")


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


def collect_evidence(
    settings: Settings,
    out: Path,
    folder: Path,
    model_url: str,
    gateway_url: str,
    prometheus_url: str,
    notifications: Path,
    echo=print,
) -> tuple[list[Path], list[Missing]]:
    """Take every screenshot the running servers allow; list the rest with the command that makes it.

    Prometheus pages go to `4.bukti monitoring Prometheus/` only; the Grafana folders are filled by
    `msml evidence grafana` (a running Grafana), so they are always listed here.
    """
    from msml.errors import CaptureError
    from msml.handin.evidence import mlflow_evidence, prometheus_evidence

    written: list[Path] = []
    missing: list[Missing] = []
    rel = lambda p: str(p.relative_to(out))  # noqa: E731
    model, monitoring = folder / MEMBANGUN, folder / MONITORING
    again = '.venv/bin/msml export --out "$EXPORT"'

    try:
        written += mlflow_evidence(settings, model)
    except Exception as exc:
        echo(f"  MLflow screenshots not taken: {exc}")
        for name in (MLFLOW_DASHBOARD, MLFLOW_ARTIFACTS):
            missing.append(
                Missing(
                    rel(model / name),
                    "MLflow UI: the experiment's runs / the champion's artifacts",
                    f"make demo && {again}",
                )
            )

    served = None
    for url, label in ((model_url, "mlflow models serve"), (gateway_url, "msml gateway → mlflow models serve")):
        if _reachable(f"{url.rstrip('/')}/ping"):
            try:
                served = serving_evidence(settings, monitoring / SERVING_IMAGE, url, label)
                break
            except (urllib.error.URLError, OSError, ValueError) as exc:
                echo(f"  serving request to {url} failed: {exc}")
    if served:
        written.append(served)
    else:
        missing.append(
            Missing(
                rel(monitoring / SERVING_IMAGE),
                "a real request to the served model and its response",
                f"make demo && {again}   # make demo serves the champion on {model_url}",
            )
        )

    prometheus_dir = monitoring / PROMETHEUS_DIR
    taken: list[Path] = []
    if _reachable(f"{prometheus_url.rstrip('/')}/-/ready"):
        try:
            taken = prometheus_evidence(prometheus_dir, prometheus_url, notifications)
        except (CaptureError, OSError) as exc:
            echo(f"  Prometheus screenshots not taken: {exc}")
            for stale in prometheus_dir.glob("*.jpg"):  # a half-numbered folder would mislead
                stale.unlink()
            taken = []
    written += taken
    if not taken:
        missing.append(
            Missing(
                rel(prometheus_dir) + "/",
                "Prometheus graphs 1.monitoring_<metric>.jpg ..., its rules and alerts pages, "
                "Alertmanager notifications",
                f"make demo && {again}   # Prometheus on {prometheus_url}",
            )
        )
    return written, missing + grafana_missing(out, folder)


HANDIN_COMMAND = '.venv/bin/msml handin --out "$EXPORT"   # runs the hand-in\'s own files (~45 min; --profile quick)'


def not_taken(out: Path, folder: Path) -> list[Missing]:
    """`--no-evidence`: every evidence item, with the command that produces it from the hand-in's own files."""
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


def drop_items(missing_file: Path, prefixes: list[str]) -> None:
    """Remove the entries whose path starts with one of `prefixes` from MISSING_EVIDENCE.md (the file goes when
    nothing else is listed): the command that makes them has run."""
    if not missing_file.is_file():
        return
    head, *items = missing_file.read_text().split("\n- `")
    kept = [item for item in items if not any(item.startswith(prefix) for prefix in prefixes)]
    if kept:
        missing_file.write_text("\n- `".join([head, *kept]))
    else:
        missing_file.unlink()


def missing_report(missing: list[Missing]) -> str:
    lines = [
        "# Evidence not produced by this export",
        "",
        "Evidence comes only from running servers; these were not running (or not reachable) during the export.",
        "Run each command in the msml checkout, after `export EXPORT=<this folder>`: the files land in place (and",
        "the zip is refreshed). Nothing below is a placeholder.",
        "",
    ]
    for item in missing:
        lines += [f"- `{item.path}` — {item.what}", "  ```", f"  {item.command}", "  ```"]
    return "\n".join(lines) + "\n"
