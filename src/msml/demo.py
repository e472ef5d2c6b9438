"""The main job (`make demo`): raw CSV → monitored model in production, on embedded defaults.

preprocess → baseline through the MLflow Project → tuning + registry gate → model server →
gateway → Prometheus + Alertmanager + webhook receiver → real traffic → URLs. Every server runs
in the background with a pid file in `settings.run_dir`; `msml down` (`make down`) stops exactly those.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from msml.config import DEFAULT_TRIALS, Settings
from msml.monitoring import stack
from msml.monitoring.render import Ports
from msml.registry import champion_uri
from msml.serving.model_server import serve_command, serve_env, wait_for_ping
from msml.serving.processes import read_pid, start_background, stop

SERVING = ("gateway", "model-server")  # stopped before the monitoring stack, in this order


def _msml(*args: str) -> list[str]:
    return [str(Path(sys.executable).parent / "msml"), *args]


def _step(echo, n: int, total: int, text: str) -> float:
    echo(f"[{n}/{total}] {text}")
    return time.perf_counter()


def start_serving(settings: Settings, ports: Ports) -> dict[str, str]:
    """Start the champion's model server and the gateway in front of it (unless already running)."""
    run_dir = settings.run_dir
    model_url = f"http://127.0.0.1:{ports.model_server}"
    gateway_url = f"http://127.0.0.1:{ports.gateway}"
    if read_pid(run_dir / "model-server.pid") is None:
        start_background(serve_command(champion_uri(settings.model_name), port=ports.model_server),
                         run_dir / "model-server.pid", run_dir / "model-server.log",
                         env=serve_env(settings.tracking_uri))
    wait_for_ping(model_url, timeout=180, log=run_dir / "model-server.log")
    if read_pid(run_dir / "gateway.pid") is None:
        env = {**os.environ, "MLFLOW_TRACKING_URI": settings.tracking_uri, "MSML_HOME": str(settings.root)}
        start_background(_msml("gateway", "--port", str(ports.gateway), "--model-url", model_url),
                         run_dir / "gateway.pid", run_dir / "gateway.log", env=env)
    wait_for_ping(gateway_url, timeout=60, log=run_dir / "gateway.log")
    return {"model server": model_url, "gateway": gateway_url}


def stop_all(settings: Settings) -> list[str]:
    """Stop every server the demo started (by pid file), serving first, then monitoring."""
    stopped = [name for name in SERVING if stop(settings.run_dir / f"{name}.pid")]
    return stopped + stack.stop(settings.run_dir)


def run_demo(settings: Settings, trials: int = DEFAULT_TRIALS, traffic_seconds: float = 20.0,
             ports: Ports = Ports(), echo=print) -> dict[str, str]:
    """Run the whole path and leave the servers running. Returns the URLs."""
    from msml.ci import run_ci
    from msml.preprocessing import preprocess
    from msml.tuning import tune
    from msml.registry import register_and_promote
    from msml.tracking import setup_tracking

    total = 6
    start = _step(echo, 1, total, f"preprocess {settings.raw_path}")
    report, _ = preprocess(settings.raw_path, settings.processed_dir, settings.contract)
    echo(f"      {report['rows_in']} rows in, {report['rows_quarantined']} quarantined, "
         f"{report['duplicates_removed']} duplicates removed → {report['train_rows']} train / "
         f"{report['test_rows']} test rows, {len(report['features_out'])} features "
         f"({time.perf_counter() - start:.1f} s) → {settings.processed_dir}")

    start = _step(echo, 2, total, "baseline through the MLflow Project (mlflow run MLProject -e main)")
    ci = run_ci(settings, settings.run_dir / "ci-main", entry="main", dockerfile=False, progress=lambda _: None)
    echo(f"      run {ci.run_id}: test ROC-AUC {ci.metrics['test_roc_auc']:.4f}, accuracy "
         f"{ci.metrics['test_accuracy']:.4f} ({time.perf_counter() - start:.1f} s)")

    start = _step(echo, 3, total, f"tune HistGradientBoosting with Optuna ({trials} trials) and gate-promote")
    summary = tune(settings, n_trials=trials, progress=echo)
    setup_tracking(settings)
    promotion = register_and_promote(summary.model_uri, settings.model_name, summary.run_id)
    echo(f"      test ROC-AUC {summary.metrics['test_roc_auc']:.4f}, accuracy {summary.metrics['test_accuracy']:.4f}; "
         f"{promotion.uri}: {'promoted to @champion' if promotion.promoted else 'not promoted'} "
         f"({promotion.reason}) ({time.perf_counter() - start:.1f} s)")

    start = _step(echo, 4, total, "serve the champion (mlflow models serve) behind the gateway")
    urls = start_serving(settings, ports)
    echo(f"      ready ({time.perf_counter() - start:.1f} s)")

    start = _step(echo, 5, total, "start Prometheus, Alertmanager and the webhook receiver")
    monitoring = stack.start(settings.run_dir, ports)
    urls |= monitoring.urls()
    echo(f"      ready ({time.perf_counter() - start:.1f} s)")

    _step(echo, 6, total, f"send {traffic_seconds:.0f} s of real test-split traffic (10 % drifted, 5 % invalid, "
                          "with feedback)")
    subprocess.run(_msml("loadgen", "--url", urls["gateway"], "--duration", str(traffic_seconds), "-c", "8",
                         "--drift-share", "0.1", "--invalid-share", "0.05", "--feedback", "--no-progress"),
                   check=False)
    urls |= {
        "gateway docs": f"{urls['gateway']}/docs",
        "gateway metrics": f"{urls['gateway']}/metrics",
        "MLflow UI": f"run: mlflow ui --backend-store-uri {settings.tracking_uri} --port {ports.mlflow}",
    }
    return urls
