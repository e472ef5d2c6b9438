"""Every PromQL expression of the dashboard and of the alert rules returns data from a live Prometheus.

Starts for real, on 127.0.0.1 free ports: MLflow's scoring server for a freshly registered model, the
gateway (`msml gateway`), Prometheus + Alertmanager + the webhook receiver (`msml.monitoring.stack`, 1 s
scrapes); drives traffic with `msml loadgen` (drifted and invalid rows, feedback), then asks Prometheus's
HTTP API for each expression. This is how the Grafana files are proven without a Grafana binary.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.parse
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from msml.monitoring import stack
from msml.monitoring.definitions import all_queries
from msml.monitoring.render import FAST, Ports
from msml.serving.model_server import ModelServer
from msml.config import load_settings
from msml.demo import start_tracking_server
from msml.serving.processes import stop as stop_pidfile
from msml.serving.processes import stop_process
from tests.conftest import run_msml
from tests.integration.serving_fixtures import free_port, start_gateway, train_and_register

pytestmark = pytest.mark.slow


@dataclass
class LiveSystem:
    model_server: ModelServer
    gateway_url: str
    stack: stack.Stack
    processed: Path
    mlflow_url: str | None = None


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
    # the tracking server exactly as `make demo` starts it (demo.start_tracking_server: pid file in run_dir)
    settings = load_settings(contract_path=contract.path).with_overrides(
        root=workdir, tracking_uri=model.tracking_uri, artifact_root=workdir / "model" / "artifacts")
    try:
        if tracking_server:
            tracking = start_tracking_server(settings, ports)
        server.start(wait=180)
        gateway, gateway_url = start_gateway(server.url, model.tracking_uri, workdir / "gateway.log",
                                             "--model-uri", model.uri, "--probe-interval", "0.25",
                                             "--drift-window", "200", port=ports.gateway)
        yield LiveSystem(server, gateway_url, stack.start(run_dir, ports, FAST), processed, tracking)
    finally:
        stack.stop(run_dir)
        stop_pidfile(settings.run_dir / "mlflow.pid")
        if gateway is not None:
            stop_process(gateway)
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
        drive_traffic(system)
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
    assert len(queries) >= 10 + 3


def test_the_targets_are_scraped_and_the_rules_loaded(live):
    up = {r["metric"]["job"]: r["value"][1] for r in prom_query(live.stack.prometheus_url, "up")}
    assert up == {"gateway": "1", "prometheus": "1", "mlflow": "1"}  # mlflow: `mlflow server --expose-prometheus`
    with urllib.request.urlopen(f"{live.stack.prometheus_url}/api/v1/rules", timeout=10) as resp:
        groups = json.loads(resp.read())["data"]["groups"]
    assert all(rule["health"] == "ok" for g in groups for rule in g["rules"]), groups


def test_every_target_is_up_and_the_mlflow_ui_answers(live):
    """What `make demo` ends with (its last step is the same `wait_targets_up`), the MLflow UI included."""
    assert stack.wait_targets_up(live.stack.prometheus_url, timeout=30) == {
        "gateway": "up", "prometheus": "up", "mlflow": "up"}
    with urllib.request.urlopen(f"{live.mlflow_url}/", timeout=10) as resp:
        assert resp.status == 200 and b"<title>MLflow</title>" in resp.read()
    with urllib.request.urlopen(f"{live.mlflow_url}/api/2.0/mlflow/registered-models/search", timeout=10) as resp:
        assert "monitoring-live-model" in {m["name"] for m in json.loads(resp.read())["registered_models"]}


def test_prometheus_evidence_is_numbered_and_every_image_shows_its_content(live, tmp_path):
    """Every Prometheus page of `4.bukti monitoring Prometheus/`, captured after its data drew, none blank."""
    from PIL import Image

    from msml.evidence import check_capture, numbered, prometheus_evidence, prometheus_stems

    written = prometheus_evidence(tmp_path, live.stack.prometheus_url, live.stack.notifications)
    notified = [n.split("notifikasi_alertmanager_", 1)[1].removesuffix(".jpg") for n in
                (p.name for p in written) if "notifikasi_alertmanager_" in n]
    assert [p.name for p in written] == numbered(prometheus_stems(notified))
    for shot in written:
        check_capture(shot)  # raises on a blank or half-drawn capture
        with Image.open(shot) as image:
            assert image.format == "JPEG" and image.width == 1400 and image.height >= 200


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
