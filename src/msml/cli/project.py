"""Kriteria 3 from the command line: the MLflow Project folder, the CI retraining job, the image build and the
container engine it uses."""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer

from msml.cli.app import (
    CheckOpt,
    RootOpt,
    SeedOpt,
    _fail,
    _render,
    _settings,
    _sigterm_as_interrupt,
    app,
)

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
