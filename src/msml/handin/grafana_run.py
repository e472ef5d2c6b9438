"""Grafana 11.6 in Docker for one capture: provisioning written for the stack it watches, the container started,
checked and stopped, its log kept.

`capture_with(settings, stack, ...)`: the contact point chosen from the environment (`msml.handin.contact`) is added
to a copy of the committed provisioning (the datasource and the webhook pointed at the stack's own Prometheus and
receiver when it names them: the hand-in's run); Grafana must answer and have every rule present and evaluating
before any traffic (a provisioning or datasource error stops the run at once, with Grafana's own log); then
`grafana.alerts_firing` drives the alerts, the panels are taken while the system is healthy and the rules and
notifications while all three fire. Not `--rm`: the container's log is saved before it is removed.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from msml.config import DEFAULT_PORTS, Ports
from msml.errors import ServerError
from msml.handin.grafana import (
    ALERT_NAMES,
    CONTAINER,
    GrafanaError,
    Stack,
    alerts_firing,
    check_provisioned,
    docker_cli,
    estimate_minutes,
    run_command,
)
from msml.monitoring.render import GRAFANA_IMAGE


def write_provisioning(root: Path, tmp: Path, chosen, stack: Stack | None = None) -> Path:
    """The committed provisioning files copied to `tmp`: the chosen contact point added; the datasource and the
    webhook pointed at `stack`'s Prometheus and receiver when it names them."""
    import yaml

    from msml.handin import contact

    target = tmp / "provisioning"
    shutil.copytree(root / "monitoring" / "grafana" / "provisioning", target)
    alerting = target / "alerting" / "msml.yml"
    provisioned = contact.with_contact(yaml.safe_load(alerting.read_text()), chosen)
    if stack is not None and stack.receiver_url:
        provisioned["contactPoints"][0]["receivers"][0]["settings"]["url"] = stack.receiver_url
    alerting.write_text(yaml.safe_dump(provisioned, sort_keys=False))
    if stack is not None and stack.prometheus_url:
        datasources = target / "datasources" / "prometheus.yml"
        config = yaml.safe_load(datasources.read_text())
        config["datasources"][0]["url"] = stack.prometheus_url
        datasources.write_text(yaml.safe_dump(config, sort_keys=False))
    return target


def capture_with(
    settings,
    stack: Stack,
    panels_dir: Path,
    alerting_dir: Path,
    ports: Ports = DEFAULT_PORTS,
    panels: list[str] | None = None,
    echo=print,
) -> list[Path]:
    """Grafana against `stack`: the panels (keys `panels`, default all) into `panels_dir` while healthy, each alert's
    rule page and notification into `alerting_dir` while all three fire. Returns the images."""
    from msml.handin import contact
    from msml.handin.grafana_capture import capture_alerts, capture_panels
    from msml.ops.processes import wait_ready

    chosen = contact.chosen()  # before anything starts: a missing variable is named at once
    docker = docker_cli()
    if _docker(docker, "container", "inspect", CONTAINER).returncode == 0:
        raise GrafanaError(f"a container named {CONTAINER} exists (an earlier run?): `docker rm -f {CONTAINER}`")
    grafana_url = f"http://127.0.0.1:{ports.grafana}"
    log = settings.run_dir / "grafana.log"
    with tempfile.TemporaryDirectory(prefix="msml-grafana-") as tmp:
        provisioning = write_provisioning(settings.root, Path(tmp), chosen, stack)
        command = run_command(docker, settings.root, ports, provisioning, contact.container_env(chosen))
        result = subprocess.run(command, capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            last = (result.stderr.strip().splitlines() or [""])[-1]
            raise GrafanaError(f"`docker run {GRAFANA_IMAGE}` failed: {last}")
        try:
            running = lambda: _running(docker)  # noqa: E731
            try:
                wait_ready(f"{grafana_url}/api/health", timeout=180, alive=running)
                check_provisioned(grafana_url, running=running)
            except (GrafanaError, ServerError) as exc:  # Grafana's HTTP server never answered
                raise GrafanaError(f"{exc}; Grafana's log ends: {_log_tail(docker)} (full log: {log})") from None
            echo(
                f"Grafana {GRAFANA_IMAGE} ready on {grafana_url}, every rule provisioned; firing "
                f"{', '.join(ALERT_NAMES)} takes ~{estimate_minutes()} min"
            )
            written: list[Path] = []

            def healthy() -> None:
                written.extend(capture_panels(grafana_url, panels_dir, keys=panels))

            with alerts_firing(grafana_url, stack, echo=echo, while_healthy=healthy):
                written += capture_alerts(grafana_url, alerting_dir, stack.notifications, ALERT_NAMES)
        finally:
            log.parent.mkdir(parents=True, exist_ok=True)
            logs = _docker(docker, "logs", CONTAINER)
            log.write_text(logs.stdout + logs.stderr)  # a container started with --rm would lose it on stop
            _docker(docker, "stop", CONTAINER)
            _docker(docker, "rm", CONTAINER)
    return written


def _docker(docker: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([docker, *args], capture_output=True, text=True, timeout=120)


def _running(docker: str) -> bool:
    return _docker(docker, "container", "inspect", "-f", "{{.State.Running}}", CONTAINER).stdout.strip() == "true"


def _log_tail(docker: str, lines: int = 3) -> str:
    result = _docker(docker, "logs", "--tail", str(lines), CONTAINER)
    return " | ".join((result.stdout + result.stderr).strip().splitlines())[-600:] or "(empty)"
