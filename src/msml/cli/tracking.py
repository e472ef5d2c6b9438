"""The shared tracking server: `mlflow server` on PostgreSQL with proxied artifacts (`msml tracking up/down`)."""

from __future__ import annotations

import typer

from msml.cli.app import (
    _settings,
    app,
)
from msml.config import (
    DEFAULT_PORTS,
    TRACKING_POSTGRES_PORT,
)

tracking_app = typer.Typer(no_args_is_help=True, help="mlflow server on PostgreSQL with proxied artifacts.")
app.add_typer(tracking_app, name="tracking")


@tracking_app.command("up")
def tracking_up(
    port: int = typer.Option(DEFAULT_PORTS.mlflow, "--port", help="Tracking server port (Prometheus scrapes it)."),
    postgres_port: int = typer.Option(
        TRACKING_POSTGRES_PORT, "--postgres-port", help="Port of the PostgreSQL cluster it starts."
    ),
    backend_store_uri: str | None = typer.Option(
        None, "--backend-store-uri", help="An existing postgresql://… database instead of starting a cluster."
    ),
) -> None:
    """Start PostgreSQL and `mlflow server` (artifacts proxied, /metrics) on 127.0.0.1 (state in .run/tracking)."""
    from msml.tracking.server import up

    started = up(_settings(None).run_dir, port=port, postgres_port=postgres_port, backend_store_uri=backend_store_uri)
    typer.echo(f"tracking server {started.url} (pid {started.pid}; backend {started.backend_store_uri})")
    typer.echo(f"  export MLFLOW_TRACKING_URI={started.url}")
    if started.optuna_storage:
        typer.echo(f"  distributed tuning: msml tune --storage {started.optuna_storage} --study NAME --workers 2")
    if started.loop_store:
        typer.echo(f"  export MSML_LOOP_STORE={started.loop_store}  # the gateway's prediction log and labels")


@tracking_app.command("down")
def tracking_down() -> None:
    """Stop the tracking server and the PostgreSQL cluster `msml tracking up` started."""
    from msml.tracking.server import down as stop

    stopped = stop(_settings(None).run_dir)
    typer.echo("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
