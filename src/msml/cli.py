"""The `msml` command: one sub-command per pipeline stage. It only wires options to the modules.

Expected failures (`msml.errors.MsmlError`) are caught once, in `main`: one line on stderr and the
error's exit code (0 ok, 1 check failed, 2 bad input, 3 tracking/registry, 4 port busy, 5 program
missing, 6 server not ready, 7 export). Anything else is a bug: a traceback, without local variables.
Credentials in any URI printed by this process are masked.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import typer

from msml.config import (
    DEFAULT_PORTS,
    DEFAULT_SEED,
    DEFAULT_TIME_BUDGET,
    DEFAULT_TRIALS,
    TRACKING_POSTGRES_PORT,
    Settings,
    load_settings,
    local_url,
)
from msml.data.contract import DEFAULT_MAX_INVALID_SHARE, DataError
from msml.errors import MaskingStream, MsmlError, TrackingError, mask
from msml.monitoring.drift import DEFAULT_WINDOW, MIN_ROWS
from msml.serving.settings import MODEL_URLS_ENV, GatewayConfig, model_urls

# show_locals=False: a traceback's local variables can hold a tracking password or token
app = typer.Typer(
    add_completion=False, no_args_is_help=True, help=__doc__.split("\n\n")[0], pretty_exceptions_show_locals=False
)

ContractOpt = typer.Option(None, "--contract", help="Dataset contract YAML (default: the Adult contract).")
RawOpt = typer.Option(None, "--raw", help="Raw CSV (default: data/<dataset>_raw/<dataset>.csv).")
OutOpt = typer.Option(None, "--out", help="Processed directory (default: data/<dataset>_preprocessing).")
SeedOpt = typer.Option(DEFAULT_SEED, "--seed", help="Random seed for the split (and everything seeded).")
MaxInvalidOpt = typer.Option(
    DEFAULT_MAX_INVALID_SHARE, "--max-invalid-share", help="Fail when more than this share of rows is invalid."
)


def _fail(message: str, code: int = 2) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def handles_errors(func):
    """Marks a command whose expected failures (MsmlError) `main` turns into one line and an exit code.

    Kept as a marker so commands written before the single handler need no change; it adds nothing."""
    return func


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"msml {version('msml')} (mlflow {version('mlflow')}, Python {sys.version.split()[0]})")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False,
        "--version",
        callback=_version,
        is_eager=True,
        help="Print the versions of msml, MLflow and Python, then exit.",
    ),
) -> None:
    pass


def _settings(contract: Path | None) -> Settings:
    return load_settings(contract_path=contract)


@app.command()
@handles_errors
def validate(
    raw: Path | None = RawOpt,
    contract: Path | None = ContractOpt,
    max_invalid_share: float = MaxInvalidOpt,
) -> None:
    """Validate a raw CSV against the contract; print the counts and the quarantined rows' reasons."""
    settings = _settings(contract)
    raw = raw or settings.raw_path
    df = settings.contract.read_csv(raw)
    result = settings.contract.validate(df, max_invalid_share=max_invalid_share)
    typer.echo(f"{raw}: {len(df)} rows, {len(result.valid)} valid, {len(result.quarantine)} quarantined")
    for index, reason in result.quarantine["reason"].head(20).items():
        typer.echo(f"  row {index + 2}: {reason}")  # +2: 1-based, after the header line


@app.command()
@handles_errors
def preprocess(
    raw: Path | None = RawOpt,
    contract: Path | None = ContractOpt,
    out: Path | None = OutOpt,
    seed: int = SeedOpt,
    test_size: float = typer.Option(
        0.2, "--test-size", min=0.05, max=0.5, help="Share of rows held out as the test split."
    ),
    max_invalid_share: float = MaxInvalidOpt,
) -> None:
    """Load → validate → clean → split → fit the transformer on train → write the processed dataset."""
    from msml.data.preprocessing import preprocess as run

    settings = _settings(contract)
    out = out or settings.processed_dir
    report, timings = run(
        raw or settings.raw_path,
        out,
        settings.contract,
        seed=seed,
        test_size=test_size,
        max_invalid_share=max_invalid_share,
    )
    summary = {k: v for k, v in report.items() if k not in ("features_in", "features_out")}
    summary["features_out"] = len(report["features_out"])
    typer.echo(json.dumps(summary, indent=2))
    typer.echo("seconds per step: " + ", ".join(f"{k} {v:.2f}" for k, v in timings.items()))
    typer.echo(f"processed dataset written to {out}")


RunInfoOpt = typer.Option(None, "--run-info", help="Write the run id, model URI and metrics to this JSON file.")
ExperimentOpt = typer.Option(None, "--experiment", help="MLflow experiment name (default from settings).")


@app.command()
@handles_errors
def train(
    contract: Path | None = ContractOpt,
    data: Path | None = typer.Option(None, "--data", help="Processed directory (default from settings)."),
    seed: int = SeedOpt,
    experiment: str | None = ExperimentOpt,
    run_info: Path | None = RunInfoOpt,
) -> None:
    """Baseline: LogisticRegression on the preprocessed data with MLflow autolog (the course's modelling.py)."""
    from msml.training.train import train_baseline

    settings = _settings(contract).with_overrides(processed_dir=data, experiment=experiment)
    typer.echo(f"training the baseline on {settings.processed_dir} (tracking: {settings.tracking_uri})")
    summary = train_baseline(settings, seed=seed, run_info=run_info)
    _print_summary(summary)


@app.command()
@handles_errors
def tune(
    contract: Path | None = ContractOpt,
    data: Path | None = typer.Option(None, "--data", help="Processed directory (default from settings)."),
    n_trials: int = typer.Option(DEFAULT_TRIALS, "--n-trials", min=1, help="Optuna trials."),
    cv_folds: int = typer.Option(3, "--cv-folds", min=2, help="Stratified CV folds on the train split."),
    seed: int = SeedOpt,
    experiment: str | None = ExperimentOpt,
    run_info: Path | None = RunInfoOpt,
    register: bool = typer.Option(True, "--register/--no-register", help="Register and gate-promote the model."),
    time_budget: float = typer.Option(
        DEFAULT_TIME_BUDGET, "--time-budget", min=0, help="Stop starting trials after this many seconds (0: no cap)."
    ),
    storage: str | None = typer.Option(
        None,
        "--storage",
        help="Optuna RDB URL (postgresql://… shares the study between processes and machines; default: in memory).",
    ),
    study: str | None = typer.Option(None, "--study", help="Optuna study name; an existing one is joined."),
    workers: int = typer.Option(1, "--workers", min=1, help="Tuning worker processes (above 1: postgresql storage)."),
    join: bool = typer.Option(False, "--join", help="Only join --study (wait for its creator), never create it."),
) -> None:
    """Optuna search with manual logging (the course's modelling_tuning.py); registers and promotes."""
    from msml.training.tuning import tune as run

    settings = _settings(contract).with_overrides(processed_dir=data, experiment=experiment)
    typer.echo(f"tuning with {n_trials} trials, {cv_folds}-fold CV (tracking: {settings.tracking_uri})")
    summary = run(
        settings,
        n_trials=n_trials,
        seed=seed,
        cv_folds=cv_folds,
        run_info=run_info,
        progress=typer.echo,
        time_budget=time_budget or None,
        storage=storage,
        study_name=study,
        workers=workers,
        join=join,
    )
    if summary is None:  # joined a study another `msml tune` created: that one refits and registers
        return
    _print_summary(summary)
    if register:
        _register(settings, summary.model_uri, summary.run_id)


@app.command()
@handles_errors
def register(
    run_id: str = typer.Argument(..., help="Run whose logged model to register."),
    contract: Path | None = ContractOpt,
) -> None:
    """Register a run's model and promote it to @champion when it beats the current champion."""
    from msml.tracking.client import setup_tracking
    from msml.training.train import MODEL_ARTIFACT

    settings = _settings(contract)
    setup_tracking(settings)
    _register(settings, f"runs:/{run_id}/{MODEL_ARTIFACT}", run_id)


def _register(settings: Settings, model_uri: str, run_id: str) -> None:
    from mlflow.exceptions import MlflowException

    from msml.tracking.registry import register_and_promote

    try:
        promotion = register_and_promote(model_uri, settings.model_name, run_id)
    except MlflowException as exc:
        raise TrackingError(f"registry: {exc.message}") from None
    state = "promoted to @champion" if promotion.promoted else "registered, not promoted"
    typer.echo(f"{promotion.uri}: {state} ({promotion.reason})")


def _print_summary(summary) -> None:
    shown = {k: round(v, 4) for k, v in sorted(summary.metrics.items()) if k.startswith(("test_", "training_"))}
    typer.echo(json.dumps({"run_id": summary.run_id, "model_uri": summary.model_uri, "metrics": shown}, indent=2))


ReplicasOpt = typer.Option(
    1, "--replicas", min=1, max=64, help="Model servers to start, on consecutive ports from the model-server port."
)


@app.command()
@handles_errors
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
@handles_errors
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

    try:
        started = up(
            _settings(None).run_dir, port=port, postgres_port=postgres_port, backend_store_uri=backend_store_uri
        )
    except RuntimeError as exc:
        _fail(str(exc))
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


# --- Kriteria 3: the MLflow Project and the CI retraining job --------------------------------------------------

RootOpt = typer.Option(None, "--root", help="Repository root to write under (default: MSML_HOME/cwd).")
CheckOpt = typer.Option(False, "--check", help="Write nothing; exit 1 when a committed file is stale.")
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


def _render(files: dict[str, str], root: Path, check: bool, what: str, command: str) -> None:
    """Write generated files, or with `check` list the stale ones and exit 1 when there are any."""
    from msml.generated import stale, write

    if not check:
        for path in write(root, files):
            typer.echo(f"wrote {path}")
        return
    out_of_date = stale(root, files)
    for rel in out_of_date:
        typer.echo(f"stale: {rel}")
    if out_of_date:
        _fail(f"{what} files differ from their definitions; run `{command}`", code=1)
    typer.echo(f"{len(files)} {what} files are current")


@app.command()
@handles_errors
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
@handles_errors
def build_image(
    model_uri: str | None = typer.Option(None, "--model-uri", "-m", help="Default: models:/<model name>@champion."),
    name: str | None = typer.Option(None, "--name", "-n", help="Image name (default: <settings image>:latest)."),
) -> None:
    """The workflow's image step alone: mlflow models build-docker + the serving-env layer (DOCKER_HOST or podman)."""
    import os

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
@handles_errors
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
    """Record every webhook notification POSTed to it (Alertmanager, Grafana) as JSON lines."""
    from msml.monitoring.receiver import serve
    from msml.monitoring.render import notifications_path

    serve(host, port, out or notifications_path(_settings(None).run_dir))


@monitoring_app.command("up")
def monitoring_up(
    gateway_port: int = typer.Option(
        DEFAULT_PORTS.gateway, "--gateway-port", help="Where Prometheus scrapes the gateway."
    ),
    prometheus_port: int = typer.Option(DEFAULT_PORTS.prometheus, "--prometheus-port", help="Port of Prometheus."),
    alertmanager_port: int = typer.Option(
        DEFAULT_PORTS.alertmanager, "--alertmanager-port", help="Port of Alertmanager."
    ),
    receiver_port: int = typer.Option(
        DEFAULT_PORTS.receiver, "--receiver-port", help="Port of the alert webhook receiver."
    ),
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


evidence_app = typer.Typer(no_args_is_help=True, help="Screenshots of the running system (headless Chromium).")
app.add_typer(evidence_app, name="evidence")


@evidence_app.command("monitoring")
def evidence_monitoring(
    out: Path = typer.Option(Path("evidence/monitoring"), "--out", help="Directory for the JPG files."),
    prometheus: str = typer.Option(local_url(DEFAULT_PORTS.prometheus), "--prometheus", help="Prometheus URL."),
    notifications: Path | None = typer.Option(
        None, "--notifications", help="Receiver JSON lines (default: .run/monitoring/notifications.jsonl)."
    ),
) -> None:
    """Prometheus graphs per dashboard metric, its rules and alerts pages, Alertmanager's notifications."""
    from msml.handin.evidence import prometheus_evidence
    from msml.monitoring.render import notifications_path

    settings = _settings(None)
    notifications = notifications or notifications_path(settings.run_dir)
    try:
        written = prometheus_evidence(out, prometheus, notifications)
    except (RuntimeError, FileNotFoundError) as exc:
        _fail(str(exc))
    for path in written:
        typer.echo(f"wrote {path}")


@evidence_app.command("grafana")
def evidence_grafana(
    out: Path = typer.Option(Path("dist"), "--out", help="The `msml export --out` directory to complete."),
    student: str | None = typer.Option(None, "--student", help="Student name (default: MSML_STUDENT / config)."),
) -> None:
    """Grafana 11.6 in Docker against `make demo`'s stack: fire 3 alerts, capture panels, rules and notifications."""
    from msml.handin.export import ExportError
    from msml.handin.grafana import GrafanaError, grafana_evidence

    settings = _settings(None).with_overrides(student=student)
    try:
        written = grafana_evidence(settings, out, echo=typer.echo)
    except (GrafanaError, ExportError, RuntimeError) as exc:
        _fail(str(exc))
    for path in written:
        typer.echo(f"wrote {path}")


@evidence_app.command("mlflow")
@handles_errors
def evidence_mlflow(
    out: Path = typer.Option(Path("evidence/mlflow"), "--out", help="Directory for the JPG files."),
    mlflow_url: str | None = typer.Option(
        None, "--mlflow-url", help="A running MLflow UI over the same store (default: start one on loopback)."
    ),
) -> None:
    """The MLflow UI's runs page and the champion run's artifacts page (screenshoot_dashboard/artifak.jpg)."""
    from mlflow.exceptions import MlflowException

    from msml.handin.evidence import mlflow_evidence

    try:
        written = mlflow_evidence(_settings(None), out, mlflow_url=mlflow_url)
    except (RuntimeError, FileNotFoundError) as exc:
        _fail(str(exc))
    except MlflowException as exc:
        _fail(f"{exc.message} (train and tune first: `msml tune` registers a champion)")
    for path in written:
        typer.echo(f"wrote {path}")


# --- serving: MLflow's scoring server, the gateway, the load generator ----------------------------------------


def _sigterm_as_interrupt() -> None:
    import signal

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def _replica_ports(port: int, replicas: int) -> list[int]:
    from msml.serving.model_server import replica_ports

    try:
        return replica_ports(port, replicas)
    except ValueError as exc:
        _fail(str(exc))


@app.command()
def serve(
    port: int = typer.Option(DEFAULT_PORTS.model_server, "--port", help="Port of MLflow's scoring server."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0: every interface)."),
    workers: int = typer.Option(1, "--workers", min=1, help="gunicorn workers."),
    model_uri: str | None = typer.Option(None, "--model-uri", help="Default: models:/<model name>@champion."),
    wait: float = typer.Option(180.0, "--wait", help="Seconds to wait for /ping."),
    replicas: int = ReplicasOpt,
) -> None:
    """Serve the champion with `mlflow models serve --env-manager local` (foreground; Ctrl-C stops).

    With --replicas N: N servers on consecutive ports from --port, for `msml gateway --model-url` repeated."""
    import time

    from msml.ops.processes import check_port
    from msml.serving.model_server import ModelServer, replica_name
    from msml.tracking.registry import champion_uri

    settings = _settings(None)
    uri = model_uri or champion_uri(settings.model_name)
    ports = _replica_ports(port, replicas)
    servers = [
        ModelServer(
            uri, settings.tracking_uri, p, settings.run_dir / f"{replica_name(i)}.log", host=host, workers=workers
        )
        for i, p in enumerate(ports)
    ]
    for server in servers:
        check_port(server.port, "model server", "--port", host=host)
        typer.echo(f"starting: {' '.join(server.command)} (log: {server.log})")
    _sigterm_as_interrupt()  # `kill <pid>` stops the model servers too, not only Ctrl-C
    try:
        for server in servers:  # all at once: each takes seconds to load the model
            server.start(wait=None)
        for server in servers:
            server.wait_ready(wait)
        typer.echo(f"model servers ready: {' '.join(s.url for s in servers)} (/ping, /invocations); Ctrl-C stops them")
        while all(s.proc.poll() is None for s in servers):
            time.sleep(0.5)
        gone = next(s for s in servers if s.proc.poll() is not None)
        _fail(f"model server {gone.url} exited with code {gone.proc.returncode} (log: {gone.log})", code=1)
    except KeyboardInterrupt:
        typer.echo("stopping the model servers")
    finally:
        for server in servers:
            server.stop()


@app.command()
def gateway(
    port: int = typer.Option(DEFAULT_PORTS.gateway, "--port", help="Gateway port."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0: every interface)."),
    model_url: list[str] = typer.Option(
        [],
        "--model-url",
        help="MLflow scoring server or the model's Docker image (/ping, /invocations); repeat it for replicas "
        f"(least busy first). Default: ${MODEL_URLS_ENV} (comma-separated), else the model-server port's.",
        show_default=False,
    ),
    model_uri: str | None = typer.Option(
        None,
        "--model-uri",
        help="Registry URI for model info and drift reference (default: models:/<model name>@champion; '' for none).",
    ),
    drift_reference: Path | None = typer.Option(None, "--drift-reference", help="Reference JSON file instead."),
    max_batch_rows: int = typer.Option(
        GatewayConfig.max_batch_rows, "--max-batch-rows", min=1, help="Most rows in one model call."
    ),
    max_wait_ms: float = typer.Option(
        GatewayConfig.max_wait_ms,
        "--max-wait-ms",
        min=0.0,
        help="How long a request waits for others to share its batch.",
    ),
    max_concurrent_batches: int = typer.Option(
        GatewayConfig.max_concurrent_batches,
        "--max-concurrent-batches",
        min=1,
        help="Model calls in flight at a time per replica (match its workers); one more for a whole batch.",
    ),
    probe_interval: float = typer.Option(
        1.0, "--probe-interval", min=0.05, help="Seconds between health probes of the model server."
    ),
    drift_window: int = typer.Option(
        DEFAULT_WINDOW,
        "--drift-window",
        min=MIN_ROWS,
        help="Recent rows the drift statistics cover (at least the measured minimum).",
    ),
    model_timeout: float = typer.Option(
        10.0, "--model-timeout", min=0.05, help="Every request's deadline in seconds (504 when it passes)."
    ),
    max_queue_ms: float = typer.Option(
        GatewayConfig.max_queue_delay_ms,
        "--max-queue-ms",
        min=1.0,
        help="Refuse new requests (503, Retry-After) while the oldest queued one has waited longer than this.",
    ),
    max_loop_lag_ms: float = typer.Option(
        GatewayConfig.max_loop_lag_ms,
        "--max-loop-lag-ms",
        min=1.0,
        help="Refuse new requests (503, Retry-After) while the gateway's event loop runs this far behind.",
    ),
    max_accept_queue: int = typer.Option(
        GatewayConfig.max_accept_queue,
        "--max-accept-queue",
        min=1,
        help="Refuse new requests (503, Retry-After) while more connections than this wait to be accepted.",
    ),
) -> None:
    """The validating, micro-batching gateway with /metrics (the course's prometheus_exporter; foreground)."""
    from msml.serving.gateway import GatewayConfig, run
    from msml.tracking.registry import champion_uri

    settings = _settings(None)
    try:
        urls = model_urls(model_url, os.environ)
    except ValueError as exc:
        _fail(str(exc))
    config = GatewayConfig(
        model_urls=urls,
        contract=settings.contract,
        tracking_uri=settings.tracking_uri,
        model_uri=champion_uri(settings.model_name) if model_uri is None else (model_uri or None),
        drift_reference=drift_reference,
        max_batch_rows=max_batch_rows,
        max_wait_ms=max_wait_ms,
        max_concurrent_batches=max_concurrent_batches,
        probe_interval=probe_interval,
        drift_window=drift_window,
        request_timeout=model_timeout,
        max_queue_delay_ms=max_queue_ms,
        max_loop_lag_ms=max_loop_lag_ms,
        max_accept_queue=max_accept_queue,
        feedback_token=os.environ.get("MSML_FEEDBACK_TOKEN") or None,  # a secret: from the environment only
    )
    typer.echo(
        f"gateway on http://{host}:{port} → {', '.join(urls)} (/invocations, /feedback, /metrics, /health, /docs)"
    )
    run(config, host=host, port=port)


@app.command()
def loadgen(
    url: str = typer.Option(local_url(DEFAULT_PORTS.gateway), "--url", help="Gateway (or model server) base URL."),
    concurrency: int = typer.Option(
        8, "--concurrency", "-c", min=1, max=1024, help="Requests in flight at a time (closed loop)."
    ),
    rate: float | None = typer.Option(None, "--rate", min=0.1, help="Target requests/s (open loop)."),
    duration: float | None = typer.Option(None, "--duration", min=0.1, max=3600, help="Seconds."),
    count: int | None = typer.Option(None, "--count", min=1, help="Requests (default 1000 without --duration)."),
    drift_share: float = typer.Option(0.0, "--drift-share", min=0.0, max=1.0, help="Share of drifted rows."),
    invalid_share: float = typer.Option(0.0, "--invalid-share", min=0.0, max=1.0, help="Share of invalid rows."),
    feedback: bool = typer.Option(False, "--feedback/--no-feedback", help="Send ground truth to /feedback."),
    wrong_feedback_share: float = typer.Option(
        0.0,
        "--wrong-feedback-share",
        help="Share of scored rows whose feedback is the label the gateway did not "
        "predict (simulates concept drift or a labelling change: LiveAccuracyDrop); needs --feedback.",
    ),
    batch_rows: int = typer.Option(1, "--batch-rows", min=1, max=1000, help="Rows per request."),
    seed: int = SeedOpt,
    data: Path | None = typer.Option(None, "--data", help="Processed directory (default from settings)."),
    allow_remote: bool = typer.Option(False, "--allow-remote", help="Allow a non-loopback URL."),
    progress_bar: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Send real test-split rows (the course's inference.py); print throughput, latency and errors."""
    import asyncio
    from urllib.parse import urlparse

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from msml.ops.loadgen import load_test_rows, run_load

    if invalid_share + drift_share > 1:
        _fail("--invalid-share + --drift-share must be at most 1")
    if not 0 <= wrong_feedback_share <= 1:
        _fail(f"--wrong-feedback-share must be between 0 and 1, got {wrong_feedback_share:g}")
    if wrong_feedback_share and not feedback:
        _fail("--wrong-feedback-share needs --feedback (it is a share of the feedback sent)")
    if urlparse(url).hostname not in ("127.0.0.1", "localhost", "::1") and not allow_remote:
        _fail(f"{url} is not loopback; pass --allow-remote to load another host")
    if duration is None and count is None:
        count = 1000
    settings = _settings(None).with_overrides(processed_dir=data)
    try:
        rows, truths = load_test_rows(settings.processed_dir, settings.contract)
    except DataError as exc:
        _fail(str(exc))
    mode = f"{rate} req/s" if rate else f"concurrency {concurrency}"
    bound = " and ".join(x for x in (f"{count} requests" if count else "", f"{duration} s" if duration else "") if x)
    typer.echo(f"loading {url} with {len(rows)} test rows: {mode}, up to {bound}")
    with Progress(
        TextColumn("requests"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        disable=not progress_bar,
        transient=False,
    ) as bar:
        task = bar.add_task("load", total=count)
        report = asyncio.run(
            run_load(
                url,
                rows,
                truths,
                concurrency=concurrency,
                rate=rate,
                duration=duration,
                count=count,
                drift_share=drift_share,
                invalid_share=invalid_share,
                feedback=feedback,
                wrong_feedback_share=wrong_feedback_share,
                batch_rows=batch_rows,
                seed=seed,
                contract=settings.contract,
                progress=lambda n: bar.advance(task, n),
            )
        )
    typer.echo(report.summary())
    if report.failed:
        _fail(f"{report.errors} request(s) failed", code=1)


# --- the course's repositories and submission folder -----------------------------------------------------------


@app.command()
@handles_errors
def export(
    out: Path = typer.Option(Path("dist"), "--out", help="Directory for the repositories, folder and zip."),
    student: str | None = typer.Option(None, "--student", help="Student name (default: MSML_STUDENT / config)."),
    github_user: str | None = typer.Option(None, "--github-user", help="GitHub user of the repository links."),
    dockerhub_user: str | None = typer.Option(None, "--dockerhub-user", help="Docker Hub user of the image."),
    evidence: bool = typer.Option(
        True,
        "--evidence/--no-evidence",
        help="Screenshot the running system (what is not running is listed as missing).",
    ),
    model_url: str = typer.Option(local_url(DEFAULT_PORTS.model_server), "--model-url", help="Running model server."),
    gateway_url: str = typer.Option(local_url(DEFAULT_PORTS.gateway), "--gateway", help="Running gateway."),
    prometheus: str = typer.Option(local_url(DEFAULT_PORTS.prometheus), "--prometheus", help="Running Prometheus."),
    notifications: Path | None = typer.Option(
        None, "--notifications", help="Receiver JSON lines (default: .run/monitoring/notifications.jsonl)."
    ),
) -> None:
    """Write Eksperimen_SML_<student>/, Workflow-CI/ (git repositories), SMSML_<student>/ and its zip."""
    from msml.handin.export import MISSING_FILE
    from msml.handin.export import export as run

    settings = _settings(None).with_overrides(student=student, github_user=github_user, dockerhub_user=dockerhub_user)
    result = run(
        settings,
        out,
        evidence=evidence,
        model_url=model_url,
        gateway_url=gateway_url,
        prometheus_url=prometheus,
        notifications=notifications,
        echo=typer.echo,
    )
    for name, path in result.repositories.items():
        typer.echo(
            f"repository {path}  (push: cd '{path}' && git remote add origin "
            f"https://github.com/{settings.github_user}/{name}.git && git push -u origin main)"
        )
    typer.echo(f"submission {result.submission}\nzip        {result.archive}")
    for path in result.evidence:
        typer.echo(f"evidence   {path}")
    if result.missing:
        typer.echo(f"\nnot produced ({len(result.missing)}; listed in {result.out / MISSING_FILE}):")
        for item in result.missing:
            typer.echo(f"  {item.path}: {item.what}\n      {item.command}")
    typer.echo("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in result.seconds.items()))


def _one_line(text: str, limit: int = 1000) -> str:
    flat = " | ".join(line.strip() for line in text.strip().splitlines() if line.strip())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def main() -> None:
    # every line this process prints passes the credential mask (MLflow's own "View run at <uri>" too)
    sys.stdout, sys.stderr = MaskingStream(sys.stdout), MaskingStream(sys.stderr)
    try:
        app(prog_name="msml")
    except MsmlError as exc:  # the one place expected failures are caught
        typer.secho(f"error: {_one_line(mask(str(exc)))}", fg=typer.colors.RED, err=True)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    sys.exit(main())
