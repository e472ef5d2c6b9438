"""Every PromQL expression of the dashboard and of the alert rules returns data from a live Prometheus.

Starts for real, on 127.0.0.1 free ports: MLflow's scoring server for a freshly registered model, the
gateway (`msml gateway`), Prometheus + Alertmanager + the webhook receiver (`msml.monitoring.stack`, 1 s
scrapes); drives traffic with `msml loadgen` (drifted and invalid rows, feedback), then asks Prometheus's
HTTP API for each expression. This is how the Grafana files are proven without a Grafana binary.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from msml.monitoring import stack
from msml.monitoring.definitions import ALERTS, GATEWAY_JOB, all_queries
from msml.monitoring.drift import MIN_ROWS as DRIFT_MIN_ROWS
from msml.monitoring.render import ALERTS_FILE, FAST, RECORDING_FILE, Ports
from msml.serving.model_server import ModelServer
from msml.serving.processes import spawn, stop_process
from tests.conftest import BIN, ROOT, run_msml
from tests.integration.serving_fixtures import free_port, start_gateway, train_and_register

pytestmark = pytest.mark.slow


@dataclass
class LiveSystem:
    model_server: ModelServer
    gateway_url: str
    stack: stack.Stack
    processed: Path


def prom_query(prometheus_url: str, expr: str) -> list[dict]:
    url = f"{prometheus_url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
    with urllib.request.urlopen(url, timeout=10) as resp:
        body = json.loads(resp.read())
    assert body["status"] == "success", body
    return body["data"]["result"]


def wait_until(predicate, timeout: float, interval: float = 0.5, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"{what} not met within {timeout:.0f} s")


_MODELS: dict[Path, object] = {}  # one registered model per processed dir and test session (training is slow)


def registered_model(workdir: Path, processed: Path, contract):
    if processed not in _MODELS:
        _MODELS[processed] = train_and_register(processed, contract, workdir / "model", "monitoring-live-model")
    return _MODELS[processed]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return resp.status == 200
    except OSError:
        return False


@contextmanager
def live_system(workdir: Path, processed: Path, contract, tracking_server: bool = False):
    """Model server, gateway and the monitoring stack (and, asked, the MLflow tracking server with
    `--expose-prometheus`), each stopped by the handle or pid file that started it."""
    model = registered_model(workdir, processed, contract)
    ports = Ports(gateway=free_port(), model_server=free_port(), mlflow=free_port(), prometheus=free_port(),
                  alertmanager=free_port(), receiver=free_port())
    server = ModelServer(model.uri, model.tracking_uri, ports.model_server, workdir / "model-server.log")
    gateway = tracking = None
    run_dir = workdir / "run"
    env = {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}", "MLFLOW_TRACKING_URI": model.tracking_uri}
    try:
        if tracking_server:
            tracking = spawn([str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(ports.mlflow),
                              "--workers", "1", "--backend-store-uri", model.tracking_uri,
                              "--expose-prometheus", str(workdir / "mlflow-metrics")],
                             workdir / "mlflow-server.log", env=env)
        server.start(wait=180)
        gateway, gateway_url = start_gateway(server.url, model.tracking_uri, workdir / "gateway.log",
                                             "--model-uri", model.uri, "--probe-interval", "0.25",
                                             "--drift-window", str(DRIFT_MIN_ROWS), port=ports.gateway)
        if tracking is not None:
            wait_until(lambda: _answers(f"http://127.0.0.1:{ports.mlflow}/metrics") or tracking.poll() is not None,
                       120, 0.5, "MLflow tracking server /metrics")
            assert tracking.poll() is None, (workdir / "mlflow-server.log").read_text()[-3000:]
        yield LiveSystem(server, gateway_url, stack.start(run_dir, ports, FAST), processed)
    finally:
        stack.stop(run_dir)
        for proc in (gateway, tracking):
            if proc is not None:
                stop_process(proc)
        server.stop()


def drive_traffic(system: LiveSystem, seconds: float = 6, check: bool = True, **extra: str) -> None:
    """`msml loadgen` against the gateway: real test rows, some drifted and invalid, with feedback."""
    args = ["loadgen", "--url", system.gateway_url, "--duration", str(seconds), "--concurrency", "4",
            "--batch-rows", "4", "--drift-share", "0.3", "--invalid-share", "0.1", "--feedback",
            "--data", str(system.processed), "--no-progress"]
    for k, v in extra.items():
        args += [f"--{k.replace('_', '-')}", v]
    result = run_msml(*args, timeout=seconds + 60)
    if check:
        assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def live(tmp_path_factory, processed, contract):
    with live_system(tmp_path_factory.mktemp("monitoring-live"), processed, contract, tracking_server=True) as system:
        # 25 rows a request: the drift window reaches its minimum (PSI is exported) even on a loaded machine
        drive_traffic(system, batch_rows="25")
        yield system


def test_every_dashboard_and_alert_query_returns_data(live):
    queries = all_queries()
    empty = dict(queries)

    def poll():
        for where, expr in list(empty.items()):
            if prom_query(live.stack.prometheus_url, expr):
                del empty[where]
        return not empty

    # rates need two scrapes after the traffic, recording rules one more evaluation
    try:
        wait_until(poll, timeout=30, interval=1, what="every query returning data")
    except AssertionError:
        pytest.fail("queries without data: " + json.dumps(empty, indent=1))
    # live data, not the definitions: the gateway's own metric names Prometheus holds samples for
    scraped = prom_query(live.stack.prometheus_url, f'count by (__name__) ({{__name__=~"msml_.+",job="{GATEWAY_JOB}"}})')
    assert len(scraped) >= 12, sorted(r["metric"]["__name__"] for r in scraped)


def _promtool_series(metrics_text: str, instance: str) -> dict[str, str]:
    """A live /metrics page as promtool input series over 15 minutes at 15 s steps: cumulative samples
    (counters, histograms) grow by their scraped value every step, gauges hold their value (NaN included)."""
    from prometheus_client.parser import text_string_to_metric_families

    series = {f'up{{job="{GATEWAY_JOB}",instance="{instance}"}}': "1x60"}
    for family in text_string_to_metric_families(metrics_text):
        cumulative = family.type in ("counter", "histogram", "summary")
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            labels = {**sample.labels, "job": GATEWAY_JOB, "instance": instance}
            selector = sample.name + "{" + ",".join(f"{k}={json.dumps(v)}" for k, v in sorted(labels.items())) + "}"
            if sample.value != sample.value:  # NaN: promtool's notation cannot expand it, so it is written out
                series[selector] = " ".join(["NaN"] * 61)
            else:
                series[selector] = f"0+{sample.value:g}x60" if cumulative else f"{sample.value:g}x60"
    return series


def test_fresh_gateway_with_traffic_and_no_feedback_raises_no_alert_in_15_minutes(live, processed, contract,
                                                                                    tmp_path):
    """A new gateway scored some rows (fewer than the drift minimum) and got no feedback: its live scrape, held
    for 15 minutes of promtool time, raises none of the alerts. Before issue 15, live accuracy exported 0 and
    LiveAccuracyDrop fired, and PSI over a handful of rows fired DataDriftPSI."""
    from msml.loadgen import load_test_rows
    from tests.integration.serving_fixtures import parse_metrics

    model = registered_model(tmp_path, processed, contract)
    proc, url = start_gateway(live.model_server.url, model.tracking_uri, tmp_path / "fresh-gateway.log",
                              "--model-uri", model.uri, "--drift-window", str(DRIFT_MIN_ROWS))
    try:
        rows = load_test_rows(processed, contract)[0][: DRIFT_MIN_ROWS // 2]
        for start in range(0, len(rows), 50):
            assert httpx.post(f"{url}/invocations", json={"rows": rows[start:start + 50]}, timeout=30).status_code == 200
        text = httpx.get(f"{url}/metrics", timeout=10).text
    finally:
        stop_process(proc)
    scraped = parse_metrics(text)
    assert any(name == "msml_rows_scored_total" and v == len(rows) for (name, _), v in scraped.items())
    tests = {
        "rule_files": [str(ROOT / "monitoring/prometheus/rules" / f) for f in (RECORDING_FILE, ALERTS_FILE)],
        "evaluation_interval": "15s",
        "tests": [{"interval": "15s", "input_series": [{"series": k, "values": v} for k, v in
                                                       _promtool_series(text, "gateway:8000").items()],
                   "alert_rule_test": [{"eval_time": f"{m}m", "alertname": a.name, "exp_alerts": []}
                                       for a in ALERTS for m in (1, 5, 10, 15)]}],
    }
    path = tmp_path / "fresh_gateway_test.yml"
    path.write_text(yaml.safe_dump(tests, sort_keys=False))
    promtool = shutil.which("promtool")
    assert promtool, "promtool is not installed: run scripts/install-system-deps.sh"
    result = subprocess.run([promtool, "test", "rules", str(path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_targets_are_scraped_and_the_rules_loaded(live):
    up = {r["metric"]["job"]: r["value"][1] for r in prom_query(live.stack.prometheus_url, "up")}
    assert up == {"gateway": "1", "prometheus": "1", "mlflow": "1"}  # mlflow: `mlflow server --expose-prometheus`
    with urllib.request.urlopen(f"{live.stack.prometheus_url}/api/v1/rules", timeout=10) as resp:
        groups = json.loads(resp.read())["data"]["groups"]
    assert all(rule["health"] == "ok" for g in groups for rule in g["rules"]), groups


def test_evidence_screenshot_of_a_prometheus_graph(live, tmp_path):
    from msml.evidence import monitoring_evidence

    written = monitoring_evidence(tmp_path, live.stack.prometheus_url, panels=["throughput"], alerts=[])
    shot = tmp_path / "prometheus" / "1.monitoring_throughput.jpg"
    assert shot in written and shot.stat().st_size > 20_000  # a rendered page, not a blank one
    from PIL import Image

    with Image.open(shot) as image:
        assert image.format == "JPEG" and image.size == (1400, 900)
        low, high = image.convert("L").getextrema()
        assert high - low > 100  # not a blank page


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
