"""Monitoring commands: render Prometheus/Alertmanager/Grafana files, the alert receiver, the local stack."""

from __future__ import annotations

from pathlib import Path

import typer

from msml.cli.app import (
    AlertmanagerPortOpt,
    CheckOpt,
    PrometheusPortOpt,
    ReceiverPortOpt,
    RootOpt,
    _render,
    _settings,
    app,
)
from msml.config import (
    DEFAULT_PORTS,
)

# --- monitoring: Prometheus, Alertmanager and Grafana as code ---------------------------------------------------

monitoring_app = typer.Typer(no_args_is_help=True, help="Prometheus, Alertmanager and Grafana as code.")
app.add_typer(monitoring_app, name="monitoring")


@monitoring_app.command("render")
def monitoring_render(
    root: Path | None = RootOpt,
    check: bool = CheckOpt,
) -> None:
    """Render prometheus.yml, rules, promtool tests, alertmanager.yml, Grafana provisioning, docker-compose.yml."""
    from msml.monitoring.render import render_files

    root = root or _settings(None).root
    _render(render_files(), root, check, "monitoring", "msml monitoring render")


@monitoring_app.command("receiver")
def monitoring_receiver(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(
        DEFAULT_PORTS.receiver, "--port", help="Port to listen on (Alertmanager's webhook URL points here)."
    ),
    out: Path | None = typer.Option(
        None, "--out", help="JSON-lines file of notifications (default: where the stack reads them, .run/monitoring/)."
    ),
) -> None:
    """Record every webhook notification POSTed to it (Alertmanager, Grafana) as JSON lines; with
    MSML_RECEIVER_TOKEN set, Alertmanager's POST /trigger also starts retraining behind the loop's guards."""
    import os

    from msml.monitoring.receiver import TOKEN_ENV, LoopMetrics, champion_reader, serve
    from msml.monitoring.render import notifications_path

    settings = _settings(None)
    token = os.environ.get(TOKEN_ENV) or None  # a secret: from the environment only
    trigger = None
    metrics = LoopMetrics(champion_reader(settings.tracking_uri, settings.model_name))
    if token:
        from msml.loop.store import open_store
        from msml.loop.trigger import Trigger, TriggerSettings

        trigger = Trigger(TriggerSettings.from_env(settings.run_dir), open_store(settings.loop_store), metrics.count)
    serve(host, port, out or notifications_path(settings.run_dir), trigger=trigger, token=token, metrics=metrics)


@monitoring_app.command("up")
def monitoring_up(
    gateway_port: int = typer.Option(
        DEFAULT_PORTS.gateway, "--gateway-port", help="Where Prometheus scrapes the gateway."
    ),
    prometheus_port: int = PrometheusPortOpt,
    alertmanager_port: int = AlertmanagerPortOpt,
    receiver_port: int = ReceiverPortOpt,
    fast: bool = typer.Option(False, "--fast", help="1 s scrapes and 2 s alert delays (demos, tests)."),
) -> None:
    """Start Prometheus, Alertmanager and the webhook receiver on 127.0.0.1 (pid files in .run/)."""
    from msml.monitoring import stack
    from msml.monitoring.render import FAST, PRODUCTION, Ports

    settings = _settings(None)
    ports = Ports(
        gateway=gateway_port, prometheus=prometheus_port, alertmanager=alertmanager_port, receiver=receiver_port
    )
    started = stack.start(settings.run_dir, ports, FAST if fast else PRODUCTION)
    for name, url in started.urls().items():
        typer.echo(f"{name:13s} {url}")


@monitoring_app.command("down")
def monitoring_down() -> None:
    """Stop the Prometheus, Alertmanager and receiver that `msml monitoring up` started."""
    from msml.monitoring import stack

    stopped = stack.stop(_settings(None).run_dir)
    typer.echo("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
