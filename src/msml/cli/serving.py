"""Serving commands: MLflow's scoring server (and replicas), the gateway in front of it, the load generator."""

from __future__ import annotations

import functools
import inspect
import os
from pathlib import Path

import typer

from msml.cli.app import ReplicasOpt, SeedOpt, _fail, _replica_ports, _settings, _sigterm_as_interrupt, app
from msml.config import (
    DEFAULT_PORTS,
    local_url,
)
from msml.serving.settings import MODEL_URLS_ENV, cli_options, model_urls

# --- serving: MLflow's scoring server, the gateway, the load generator ----------------------------------------


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


def with_gateway_options(command):
    """Adds one option per GatewayConfig field that declares one (`serving.settings.option`: flag, help, bounds and
    default live there, once) and hands their values to the command as `tuning`, {field name: value}."""
    options = cli_options()
    signature = inspect.signature(command)
    extra = [
        inspect.Parameter(
            name,
            inspect.Parameter.KEYWORD_ONLY,
            default=typer.Option(default, flag, help=help_, min=low),
            annotation=type(default),
        )
        for name, (default, flag, help_, low) in options.items()
    ]

    @functools.wraps(command)
    def wrapper(**kwargs):
        tuning = {name: kwargs.pop(name) for name in options}
        return command(**kwargs, tuning=tuning)

    own = [p for p in signature.parameters.values() if p.name != "tuning"]
    wrapper.__signature__ = signature.replace(parameters=own + extra)
    return wrapper


@app.command()
@with_gateway_options
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
    loop_store: str | None = typer.Option(
        None,
        "--loop-store",
        help="Where served rows and /feedback labels are kept (SQLAlchemy URL; default: MSML_LOOP_STORE, "
        "else sqlite:///.run/loop.db). --no-prediction-log: neither is kept.",
    ),
    prediction_log: bool = typer.Option(
        True, "--prediction-log/--no-prediction-log", help="Log every served row and keep labels in the loop store."
    ),
    tuning: dict | None = None,  # the options built from GatewayConfig's fields (with_gateway_options)
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
        **tuning,
        feedback_token=os.environ.get("MSML_FEEDBACK_TOKEN") or None,  # a secret: from the environment only
        loop_store=(loop_store or settings.loop_store) if prediction_log else None,
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
    from msml.ops.loadgen import check_plan, load_test_rows, run_with_progress

    check_plan(url, drift_share, invalid_share, feedback, wrong_feedback_share, allow_remote)
    if duration is None and count is None:
        count = 1000
    settings = _settings(None).with_overrides(processed_dir=data)
    rows, truths = load_test_rows(settings.processed_dir, settings.contract)
    mode = f"{rate} req/s" if rate else f"concurrency {concurrency}"
    bound = " and ".join(x for x in (f"{count} requests" if count else "", f"{duration} s" if duration else "") if x)
    typer.echo(f"loading {url} with {len(rows)} test rows: {mode}, up to {bound}")
    report = run_with_progress(
        url,
        rows,
        truths,
        show=progress_bar,
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
    )
    typer.echo(report.summary())
    if report.failed:
        _fail(f"{report.errors} request(s) failed", code=1)
