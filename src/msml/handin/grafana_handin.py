"""`msml handin --grafana`: Grafana against the hand-in's own exporter and Prometheus, on a machine with Docker.

While the hand-in's servers still run (after the Prometheus capture), `capture` starts a webhook receiver (the
local contact point, plus the one `MSML_GRAFANA_CONTACT` names), points Grafana's datasource at the hand-in's
Prometheus, and drives the three alerts with the hand-in's own files: two `7.inference.py` (phases `drifted` and
`wrong-feedback`, side by side) until DataDriftPSI and LiveAccuracyDrop fire, then the `mlflow models serve` of the
terminal stopped (every process its pane started) until ModelServerDown fires. The images are recorded for
`evidence.json` like the others. Without Docker it stops with one line before anything starts.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import psutil

from msml.handin.grafana import FIRE_TIMEOUT, OUTAGE_TIMEOUT, Stack
from msml.handin.names import ALERTING_DIR, GRAFANA_DIR, INFERENCE


def handin_stack(ws, term, pane: str, exporter_url: str, prom_url: str, receiver_url: str, notifications: Path):
    """The hand-in as the capture's stack: its 7.inference.py sends the traffic, its model server goes down."""
    from msml.ops.processes import spawn

    python = str(ws.python(ws.monitoring_dir))
    seconds = str(int(FIRE_TIMEOUT + OUTAGE_TIMEOUT + 600))

    def traffic() -> list[subprocess.Popen]:
        procs = []
        for phase in ("drifted", "wrong-feedback"):  # both at once: the drift window and the accuracy stay down
            argv = [python, INFERENCE, "--url", exporter_url, "--phases", phase, "--duration", seconds, "--keep-going"]
            procs.append(spawn(argv, ws.logs / f"grafana-traffic-{phase}.log", env=ws.env(), cwd=ws.monitoring_dir))
        return procs

    def stop_models() -> tuple[int, int]:
        procs = term.pane_processes(pane)  # mlflow models serve and its gunicorn, started from the pane's shell
        for proc in procs:
            proc.terminate()
        _, alive = psutil.wait_procs(procs, timeout=15)
        for proc in alive:
            proc.kill()
        return (1 if procs else 0), 1

    return Stack(
        what="the hand-in's 3.prometheus_exporter.py and its mlflow models serve",
        traffic=traffic,
        stop_models=stop_models,
        restore=lambda: None,  # the run ends after the capture: nothing to bring back
        notifications=notifications,
        prometheus_url=prom_url,
        receiver_url=receiver_url,
    )


def capture(ws, settings, term, pane: str, exporter_url: str, prom_url: str, panels: list[str], echo=print) -> list:
    """Grafana's panels (those Prometheus could draw from the exporter), rules and notifications; manifest entries."""
    from msml.config import Ports
    from msml.handin.grafana import docker_cli
    from msml.handin.grafana_run import capture_with
    from msml.handin.run import free_servers
    from msml.monitoring.stack import receiver_command
    from msml.ops.processes import spawn, wait_ready

    docker_cli()  # no Docker: one line, before the receiver starts
    free = free_servers()
    grafana_port, receiver_port = free.model, free.exporter
    notifications = ws.logs / "notifications.jsonl"
    receiver = spawn(receiver_command(receiver_port, notifications), ws.logs / "receiver.log")
    ws._procs.append(receiver)
    wait_ready(f"http://127.0.0.1:{receiver_port}/-/ready", timeout=30, alive=lambda: receiver.poll() is None)
    stack = handin_stack(
        ws, term, pane, exporter_url, prom_url, f"http://127.0.0.1:{receiver_port}/alerts", notifications
    )
    started = time.time()
    written = capture_with(
        settings,
        stack,
        ws.monitoring_dir / GRAFANA_DIR,
        ws.monitoring_dir / ALERTING_DIR,
        Ports(grafana=grafana_port),
        panels=panels,
        echo=echo,
    )
    return [
        {
            "file": path.relative_to(ws.submission).as_posix(),
            "what": f"Grafana 11.6 ({'panel' if path.parent.name == GRAFANA_DIR else 'alerting'})",
            "process": "grafana (docker) reading the hand-in's Prometheus",
            "time_range": [started, time.time()],
            "metrics": [],
        }
        for path in written
    ]
