"""Operations: the demo, stopping what msml started, the shared tracking server, the MLflow Project, the CI job,
the image build and the container engine."""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer

from msml.cli.app import (
    CheckOpt,
    ContractOpt,
    ReplicasOpt,
    RootOpt,
    SeedOpt,
    _fail,
    _render,
    _replica_ports,
    _settings,
    _sigterm_as_interrupt,
    app,
)
from msml.config import (
    DEFAULT_PORTS,
    DEFAULT_TRIALS,
    TRACKING_POSTGRES_PORT,
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
    prometheus_port: int = typer.Option(DEFAULT_PORTS.prometheus, "--prometheus-port", help="Port of Prometheus."),
    alertmanager_port: int = typer.Option(
        DEFAULT_PORTS.alertmanager, "--alertmanager-port", help="Port of Alertmanager."
    ),
    receiver_port: int = typer.Option(
        DEFAULT_PORTS.receiver, "--receiver-port", help="Port of the alert webhook receiver."
    ),
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


# --- the shared tracking server: mlflow server on PostgreSQL --------------------------------------------------

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


@tracking_app.command("down")
def tracking_down() -> None:
    """Stop the tracking server and the PostgreSQL cluster `msml tracking up` started."""
    from msml.tracking.server import down as stop

    stopped = stop(_settings(None).run_dir)
    typer.echo("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))


project_app = typer.Typer(no_args_is_help=True, help="The MLflow Project folder (MLProject/).")
app.add_typer(project_app, name="project")


@project_app.command("render")
def project_render(
    root: Path | None = RootOpt,
    check: bool = CheckOpt,
) -> None:
    """Render MLProject/MLproject, conda.yaml (pins from pyproject + the runtime lock) and the Docker Hub link."""
    from msml.ops.project import project_files

    settings = _settings(None)
    root = root or settings.root
    _render(project_files(settings, root), root, check, "MLProject", "msml project render")


@app.command()
def ci(
    entry: str = typer.Option("tune", "--entry", "-e", help="MLproject entry point: main (baseline) or tune."),
    trials: int | None = typer.Option(None, "--trials", min=1, help="Optuna trials for `tune` (default: CI budget)."),
    cv_folds: int | None = typer.Option(None, "--cv-folds", min=2, help="CV folds for `tune`."),
    seed: int = SeedOpt,
    data: Path | None = typer.Option(None, "--data", help="Processed directory (default from settings)."),
    out: Path = typer.Option(Path(".run/ci"), "--out", help="Run info, artifacts, run_summary.json, docker/."),
    image_tag: str = typer.Option("latest", "--image-tag", help="Tag recorded for the image (CI: the git sha)."),
    dockerfile: bool = typer.Option(
        True,
        "--dockerfile/--no-dockerfile",
        help="Generate and check the model's Dockerfile (no Docker engine needed).",
    ),
    env_manager: str = typer.Option("local", "--env-manager", help="mlflow run --env-manager: local or conda."),
    project: Path | None = typer.Option(None, "--project", help="MLflow Project dir (default: <root>/MLProject)."),
    image: bool = typer.Option(
        False,
        "--image/--no-image",
        help="Build the image as the workflow does (mlflow models build-docker + serving "
        "env), through DOCKER_HOST or podman started here.",
    ),
) -> None:
    """The CI retraining job: mlflow run MLProject → run-info file → artifacts + summary → Dockerfile/image."""
    from msml.ops.ci import run_ci
    from msml.ops.project import CI_CV_FOLDS, CI_TRIALS

    settings = _settings(None).with_overrides(processed_dir=data)
    result = run_ci(
        settings,
        out,
        entry=entry,
        trials=trials or CI_TRIALS,
        cv_folds=cv_folds or CI_CV_FOLDS,
        seed=seed,
        image_tag=image_tag,
        dockerfile=dockerfile,
        env_manager=env_manager,
        project_dir=project,
        progress=typer.echo,
        image=image,
    )
    typer.echo(
        json.dumps(
            {
                "run_id": result.run_id,
                "model_uri": result.model_uri,
                "image": result.image,
                "seconds": {k: round(v, 1) for k, v in result.seconds.items()},
            },
            indent=2,
        )
    )


@app.command("build-image")
def build_image(
    model_uri: str | None = typer.Option(None, "--model-uri", "-m", help="Default: models:/<model name>@champion."),
    name: str | None = typer.Option(None, "--name", "-n", help="Image name (default: <settings image>:latest)."),
) -> None:
    """The workflow's image step alone: mlflow models build-docker + the serving-env layer (DOCKER_HOST or podman)."""

    from msml.ops.ci import build_image_with_engine
    from msml.tracking.registry import champion_uri

    settings = _settings(None)
    env = {**os.environ, "MLFLOW_TRACKING_URI": settings.tracking_uri}
    built = build_image_with_engine(
        model_uri or champion_uri(settings.model_name), name or f"{settings.image}:latest", env, progress=typer.echo
    )
    typer.echo(
        json.dumps(
            {
                "image": built.name,
                "as_built": built.as_built,
                "base": built.base,
                "seconds": {k: round(v, 1) for k, v in built.seconds.items()},
            },
            indent=2,
        )
    )


@app.command()
def engine() -> None:
    """podman's Docker API on a private socket (foreground; Ctrl-C stops): for docker / build-image / ci --image."""
    from msml.ops.containers import Engine

    _sigterm_as_interrupt()
    with Engine(log=typer.echo) as running:
        typer.echo(
            f"export DOCKER_HOST={running.docker_host}   # then: docker run --network host <image>; Ctrl-C stops"
        )
        try:
            running.proc.wait()
            _fail(f"podman system service exited with code {running.proc.returncode}", code=1)
        except KeyboardInterrupt:
            typer.echo("stopping the engine")
