"""The main job (`make demo`): raw CSV → monitored model in production, on embedded defaults.

preflight (system programs, every port) → preprocess → baseline through the MLflow Project →
tuning + registry gate → model server → gateway → MLflow tracking server/UI → Prometheus +
Alertmanager + webhook receiver → real traffic → every Prometheus target up → URLs. Every server
runs in the background with a pid file (PID, start time, command line) in `settings.run_dir`;
`msml down` (`make down`) stops exactly those and reports the rest.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from msml.config import DEFAULT_PORTS, DEFAULT_TRIALS, Settings, local_url
from msml.errors import mask
from msml.monitoring import stack
from msml.monitoring.render import Ports
from msml.ops.processes import PidFile, check_port, read_pid, start_background, stop, wait_ready
from msml.serving.model_server import replica_name, replica_ports, serve_command, serve_env

# msml.tracking.registry and .client import MLflow (seconds): imported where used, so `msml down` stays quick

# The demo's own servers (stopped before the monitoring stack, in this order), each with the port it
# listens on and the `msml demo` option that moves it.
SERVERS = {
    "gateway": ("gateway", "--gateway-port"),
    "model-server": ("model_server", "--model-port"),
    "mlflow": ("mlflow", "--mlflow-port"),
}


def _pidfile(settings: Settings, name: str) -> Path:
    return settings.run_dir / f"{name}.pid"


def _option(name: str) -> str:
    """The `msml demo` option that moves this server's port (every replica follows --model-port)."""
    return SERVERS["model-server" if name.startswith("model-server") else name][1]


def _is_remote(uri: str) -> bool:
    from msml.tracking.client import is_remote

    return is_remote(uri)


def preflight(settings: Settings, ports: Ports, replicas: int = 1) -> None:
    """Before any training: the system programs are installed and every port is free (or already ours)."""
    stack.binary("prometheus")
    stack.binary("alertmanager", "prometheus-alertmanager")
    wanted = {name: getattr(ports, field) for name, (field, _) in SERVERS.items()}
    wanted |= {replica_name(i): port for i, port in enumerate(replica_ports(ports.model_server, replicas))}
    for name, port in wanted.items():
        if name == "mlflow" and _is_remote(settings.tracking_uri):
            continue  # tracking goes to a remote server: no local one to start
        if read_pid(_pidfile(settings, name)) is None:
            check_port(port, name, _option(name))
    stack.check_ports(settings.run_dir, ports)


def _alive(pidfile: Path):
    return lambda: read_pid(pidfile) is not None


def _launch(settings: Settings, name: str, cmd: list[str], port: int, env: dict[str, str]) -> None:
    """Start one server in the background unless ours already runs."""
    if read_pid(_pidfile(settings, name)) is None:
        check_port(port, name, _option(name))
        start_background(cmd, _pidfile(settings, name), settings.run_dir / f"{name}.log", env=env)


def _wait(settings: Settings, name: str, ready_url: str, timeout: float) -> None:
    """Ready = the process of `name`'s pid file alive and `ready_url` answering."""
    pidfile = _pidfile(settings, name)
    wait_ready(ready_url, timeout, alive=_alive(pidfile), log=settings.run_dir / f"{name}.log")


def _start(
    settings: Settings, name: str, cmd: list[str], port: int, ready_url: str, timeout: float, env: dict[str, str]
) -> None:
    """Start one server unless ours already runs, and wait until it is ready."""
    _launch(settings, name, cmd, port, env)
    _wait(settings, name, ready_url, timeout)


def _msml(*args: str) -> list[str]:
    return [str(Path(sys.executable).parent / "msml"), *args]


def _step(echo, n: int, total: int, text: str) -> float:
    echo(f"[{n}/{total}] {text}")
    return time.perf_counter()


def start_serving(settings: Settings, ports: Ports, replicas: int = 1) -> dict[str, str]:
    """Start the champion's model servers (`replicas`, on consecutive ports from ports.model_server) and the
    gateway in front of them (each unless already running)."""
    from msml.tracking.registry import champion_uri

    names = {replica_name(i): port for i, port in enumerate(replica_ports(ports.model_server, replicas))}
    for name, port in names.items():  # all at once: each takes seconds to load the model
        _launch(
            settings,
            name,
            serve_command(champion_uri(settings.model_name), port=port),
            port,
            serve_env(settings.tracking_uri),
        )
    for name, port in names.items():
        _wait(settings, name, f"{local_url(port)}/ping", 180)
    model_urls = [local_url(port) for port in names.values()]
    gateway_url = local_url(ports.gateway)
    env = {**os.environ, "MLFLOW_TRACKING_URI": settings.tracking_uri, "MSML_HOME": str(settings.root)}
    _start(
        settings,
        "gateway",
        _msml("gateway", "--port", str(ports.gateway), *(a for url in model_urls for a in ("--model-url", url))),
        ports.gateway,
        f"{gateway_url}/ping",
        60,
        env,
    )
    return {"model server" if replicas == 1 else "model servers": ", ".join(model_urls), "gateway": gateway_url}


def start_tracking_server(settings: Settings, ports: Ports) -> str:
    """MLflow's tracking server and UI over the demo's store, with `--expose-prometheus` (a scrape target).

    Returns the UI's URL; with a remote tracking URI there is nothing to start and that URI is the UI."""
    from msml.tracking.client import is_remote, server_command

    if is_remote(settings.tracking_uri):
        return settings.tracking_uri
    url = f"http://127.0.0.1:{ports.mlflow}"
    metrics = settings.run_dir / "mlflow-metrics"  # prometheus_flask_exporter's multiprocess files
    if read_pid(_pidfile(settings, "mlflow")) is None:
        shutil.rmtree(metrics, ignore_errors=True)  # a dead server's counters would be merged into the new one's
        metrics.mkdir(parents=True)
    cmd = server_command(settings.tracking_uri, settings.artifact_root, ports.mlflow, expose_prometheus=metrics)
    _start(settings, "mlflow", cmd, ports.mlflow, f"{url}/health", 120, serve_env(settings.tracking_uri))
    return url


def stop_all(settings: Settings) -> dict[str, PidFile]:
    """Stop every server the demo started and still running as started (by pid file): serving, the
    tracking server, then monitoring. What each pid file held, by server name."""
    found = {name: stop(_pidfile(settings, name)) for name in SERVERS}
    # replicas past the first (`msml demo --replicas N`): model-server-2.pid, …
    found |= {p.stem: stop(p) for p in sorted(settings.run_dir.glob("model-server-*.pid"))}
    return found | stack.stop_report(settings.run_dir)


def run_demo(
    settings: Settings,
    trials: int = DEFAULT_TRIALS,
    traffic_seconds: float = 20.0,
    ports: Ports = DEFAULT_PORTS,
    echo=print,
    replicas: int = 1,
) -> dict[str, str]:
    """Run the whole path and leave the servers running (`replicas` model servers). Returns the URLs."""
    preflight(settings, ports, replicas)  # before minutes of training: a busy port or a missing program stops us now
    from msml.data.preprocessing import preprocess
    from msml.loop import showcase
    from msml.ops.ci import run_ci
    from msml.tracking.client import setup_tracking
    from msml.tracking.registry import register_and_promote
    from msml.training.tuning import FAMILY_NAMES, tune

    total = 9
    start = _step(echo, 1, total, f"preprocess {settings.raw_path}")
    report, _ = preprocess(settings.raw_path, settings.processed_dir, settings.contract)
    echo(
        f"      {report['rows_in']} rows in, {report['rows_quarantined']} quarantined, "
        f"{report['duplicates_removed']} duplicates removed → {report['train_rows']} train / "
        f"{report['test_rows']} test rows, {len(report['features_out'])} features "
        f"({time.perf_counter() - start:.1f} s) → {settings.processed_dir}"
    )

    start = _step(echo, 2, total, "baseline through the MLflow Project (mlflow run MLProject -e main)")
    ci = run_ci(settings, settings.run_dir / "ci-main", entry="main", dockerfile=False, progress=lambda _: None)
    echo(
        f"      run {ci.run_id}: test ROC-AUC {ci.metrics['test_roc_auc']:.4f}, accuracy "
        f"{ci.metrics['test_accuracy']:.4f} ({time.perf_counter() - start:.1f} s)"
    )

    start = _step(
        echo, 3, total, f"tune {' + '.join(FAMILY_NAMES.values())} with Optuna ({trials} trials) and gate-promote"
    )
    summary = tune(settings, n_trials=trials, progress=echo)
    setup_tracking(settings)
    promotion = register_and_promote(summary.model_uri, settings.model_name, summary.run_id)
    echo(
        f"      test ROC-AUC {summary.metrics['test_roc_auc']:.4f}, accuracy {summary.metrics['test_accuracy']:.4f}; "
        f"{promotion.uri}: {'promoted to @champion' if promotion.promoted else 'not promoted'} "
        f"({promotion.reason}) ({time.perf_counter() - start:.1f} s)"
    )

    start = _step(echo, 4, total, "serve the champion (mlflow models serve) behind the gateway")
    urls = start_serving(settings, ports, replicas)
    echo(f"      ready ({time.perf_counter() - start:.1f} s)")

    start = _step(echo, 5, total, "start the MLflow tracking server and UI (mlflow server --expose-prometheus)")
    urls["MLflow UI"] = start_tracking_server(settings, ports)
    echo(f"      ready ({time.perf_counter() - start:.1f} s)")

    start = _step(echo, 6, total, "start Prometheus, Alertmanager and the webhook receiver")
    # the loop's settings for the receiver, and alerts held 30 s (not 10 min) so the loop shows in step 9
    monitoring = stack.start(settings.run_dir, ports, showcase.DEMO_TIMING, receiver_env=showcase.DEMO_LOOP_ENV)
    urls |= monitoring.urls()
    echo(f"      ready ({time.perf_counter() - start:.1f} s)")

    _step(
        echo,
        7,
        total,
        f"send {traffic_seconds:.0f} s of real test-split traffic (10 % drifted, 5 % invalid, with feedback)",
    )
    subprocess.run(
        _msml(
            "loadgen",
            "--url",
            urls["gateway"],
            "--duration",
            str(traffic_seconds),
            "-c",
            "8",
            "--drift-share",
            "0.1",
            "--invalid-share",
            "0.05",
            "--feedback",
            "--no-progress",
        ),
        check=False,
    )
    start = _step(echo, 8, total, "wait until Prometheus scrapes every target")
    health = stack.wait_targets_up(monitoring.prometheus_url, timeout=90)
    echo(f"      up: {', '.join(sorted(health))} ({time.perf_counter() - start:.1f} s)")

    start = _step(
        echo,
        9,
        total,
        f"the closed loop: {showcase.PHASE_REQUESTS * showcase.PHASE_BATCH_ROWS} labelled rows of one subpopulation "
        "→ drift alert → receiver → msml retrain → gate",
    )
    phase = time.time()
    showcase.drifted_phase(settings, urls["gateway"], echo)
    showcase.follow(settings, urls["gateway"], since=phase, echo=echo)
    echo(f"      ({time.perf_counter() - start:.1f} s)")
    urls |= {"gateway docs": f"{urls['gateway']}/docs", "gateway metrics": f"{urls['gateway']}/metrics"}
    return {name: mask(url) for name, url in urls.items()}
