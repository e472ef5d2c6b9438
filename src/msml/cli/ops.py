"""Operations: the demo and stopping exactly what it started."""

from __future__ import annotations

from pathlib import Path

import typer

from msml.cli.app import (
    AlertmanagerPortOpt,
    ContractOpt,
    PrometheusPortOpt,
    ReceiverPortOpt,
    ReplicasOpt,
    _replica_ports,
    _settings,
    app,
)
from msml.config import (
    DEFAULT_PORTS,
    DEFAULT_TRIALS,
)
from msml.errors import MsmlError


@app.command()
def demo(
    contract: Path | None = ContractOpt,
    trials: int = typer.Option(DEFAULT_TRIALS, "--trials", min=1, help="Optuna trials for the tuned model."),
    traffic: float = typer.Option(20.0, "--traffic-seconds", min=1, max=600, help="Seconds of demo traffic."),
    gateway_port: int = typer.Option(
        DEFAULT_PORTS.gateway, "--gateway-port", help="Port of the gateway (API, /metrics)."
    ),
    model_port: int = typer.Option(DEFAULT_PORTS.model_server, "--model-port", help="Port of MLflow's scoring server."),
    mlflow_port: int = typer.Option(
        DEFAULT_PORTS.mlflow, "--mlflow-port", help="Port of the MLflow tracking server and UI."
    ),
    prometheus_port: int = PrometheusPortOpt,
    alertmanager_port: int = AlertmanagerPortOpt,
    receiver_port: int = ReceiverPortOpt,
    replicas: int = ReplicasOpt,
) -> None:
    """The main job on embedded defaults: data → tracked, registered model → served, monitored, with traffic."""
    from msml.monitoring.render import Ports
    from msml.ops.demo import run_demo

    settings = _settings(contract)
    _replica_ports(model_port, replicas)
    ports = Ports(
        gateway=gateway_port,
        model_server=model_port,
        mlflow=mlflow_port,
        prometheus=prometheus_port,
        alertmanager=alertmanager_port,
        receiver=receiver_port,
    )
    try:
        urls = run_demo(
            settings, trials=trials, traffic_seconds=traffic, ports=ports, echo=typer.echo, replicas=replicas
        )
    except MsmlError as exc:
        exc.args = (f"{exc} (`make down` stops whatever was started)",)
        raise
    typer.echo("\nrunning (stop everything with `make down`):")
    for name, url in urls.items():
        typer.echo(f"  {name:16} {url}")


@app.command()
def down() -> None:
    """Stop exactly the servers `msml demo` started (pid files in .run/) and report the pid files it left alone."""
    from msml.ops.demo import stop_all

    found = stop_all(_settings(None))
    stopped = [name for name, f in found.items() if f.state == "ours"]
    typer.echo("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
    for name, f in found.items():
        if f.state == "gone":
            typer.echo(f"{name}: pid {f.pid} had already exited; removed {f.path}")
        elif f.state in ("foreign", "unreadable"):
            typer.echo(f"{name}: left alone ({f.detail}); removed {f.path}")
