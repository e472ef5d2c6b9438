"""Every PromQL expression of the dashboard and of the alert rules returns data from a live Prometheus.

Starts for real, on 127.0.0.1 free ports: MLflow's scoring server for the session's registered model, the
gateway (`msml gateway`), Prometheus + Alertmanager + the webhook receiver (`msml.monitoring.stack`, 1 s
scrapes); drives traffic with `msml loadgen` (drifted and invalid rows, feedback), then asks Prometheus's
HTTP API for each expression. This is how the Grafana files are proven without a Grafana binary.
"""

from __future__ import annotations

import json
import re
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

from msml.config import load_settings
from msml.monitoring import stack
from msml.monitoring.definitions import ALERTS, GATEWAY_JOB, PROMETHEUS_JOB, all_queries
from msml.monitoring.drift import MIN_ROWS as DRIFT_MIN_ROWS
from msml.monitoring.metrics import PROCESS_CPU, PROCESS_MEMORY
from msml.monitoring.render import ALERTS_FILE, DASHBOARD_UID, FAST, RECORDING_FILE, Ports
from msml.ops.demo import start_tracking_server
from msml.ops.processes import stop as stop_pidfile
from msml.ops.processes import stop_process
from msml.serving.model_server import ModelServer
from tests.conftest import ROOT, run_msml
from tests.integration.serving_fixtures import RegisteredModel, free_port, start_gateway

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


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return resp.status == 200
    except OSError:
        return False


@contextmanager
def live_system(workdir: Path, processed: Path, contract, model: RegisteredModel, tracking_server: bool = False):
    """Model server, gateway and the monitoring stack (and, asked, the MLflow tracking server with
    `--expose-prometheus`) serving `model` (the session's `registered_model`), each stopped by the handle or pid
    file that started it."""
    ports = Ports(
        gateway=free_port(),
        model_server=free_port(),
        mlflow=free_port(),
        prometheus=free_port(),
        alertmanager=free_port(),
        receiver=free_port(),
    )
    server = ModelServer(model.uri, model.tracking_uri, ports.model_server, workdir / "model-server.log")
    gateway = tracking = None
    run_dir = workdir / "run"
    # the tracking server exactly as `make demo` starts it (demo.start_tracking_server: pid file in run_dir)
    settings = load_settings(contract_path=contract.path).with_overrides(
        root=workdir, tracking_uri=model.tracking_uri, artifact_root=model.artifact_root
    )
    try:
        if tracking_server:
            tracking = start_tracking_server(settings, ports)
        server.start(wait=180)
        gateway, gateway_url = start_gateway(
            server.url,
            model.tracking_uri,
            workdir / "gateway.log",
            "--model-uri",
            model.uri,
            "--probe-interval",
            "0.25",
            "--drift-window",
            str(DRIFT_MIN_ROWS),
            port=ports.gateway,
        )
        yield LiveSystem(server, gateway_url, stack.start(run_dir, ports, FAST), processed, tracking)
    finally:
        stack.stop(run_dir)
        stop_pidfile(settings.run_dir / "mlflow.pid")
        if gateway is not None:
            stop_process(gateway)
        server.stop()


def drive_traffic(system: LiveSystem, seconds: float = 6, check: bool = True, **extra: str) -> None:
    """`msml loadgen` against the gateway: real test rows, some drifted and invalid, with feedback."""
    args = [
        "loadgen",
        "--url",
        system.gateway_url,
        "--duration",
        str(seconds),
        "--concurrency",
        "4",
        "--batch-rows",
        "4",
        "--drift-share",
        "0.3",
        "--invalid-share",
        "0.1",
        "--feedback",
        "--data",
        str(system.processed),
        "--no-progress",
    ]
    for k, v in extra.items():
        args += [f"--{k.replace('_', '-')}", v]
    result = run_msml(*args, timeout=seconds + 60)
    if check:
        assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def live(tmp_path_factory, processed, contract, registered_model):
    workdir = tmp_path_factory.mktemp("monitoring-live")
    with live_system(workdir, processed, contract, registered_model, tracking_server=True) as system:
        # 25 rows a request: the drift window reaches its minimum (PSI is exported) even on a loaded machine
        drive_traffic(system, batch_rows="25")
        yield system


def dashboard_all_jobs(prometheus_url: str) -> str:
    """What the committed dashboard's `$job` set to "All" becomes, as Grafana resolves it: the variable's allValue,
    else its `label_values(metric, label)` query's values joined into a regex `(a|b)`."""
    dashboard = json.loads((ROOT / "monitoring/grafana/dashboards" / f"{DASHBOARD_UID}.json").read_text())
    variable = next(v for v in dashboard["templating"]["list"] if v["name"] == "job")
    if variable.get("allValue"):
        return variable["allValue"]
    metric, label = re.fullmatch(r"label_values\((\w+), ?(\w+)\)", variable["query"]["query"]).groups()
    url = f"{prometheus_url}/api/v1/label/{label}/values?{urllib.parse.urlencode({'match[]': metric})}"
    with urllib.request.urlopen(url, timeout=10) as resp:
        values = json.loads(resp.read())["data"]
    return "(" + "|".join(re.escape(v) for v in values) + ")"


def test_every_dashboard_and_alert_query_returns_data(live):
    url = live.stack.prometheus_url
    all_jobs = dashboard_all_jobs(url)
    # "All" is the gateway's job: the process CPU and memory panels read series every scraped job exports,
    # Prometheus's own among them
    for metric in (PROCESS_CPU, PROCESS_MEMORY):
        exporting = {r["metric"]["job"] for r in prom_query(url, f"group by (job) ({metric})")}
        assert PROMETHEUS_JOB in exporting, (metric, exporting)
        shown = {r["metric"]["job"] for r in prom_query(url, f'group by (job) ({metric}{{job=~"{all_jobs}"}})')}
        assert shown == {GATEWAY_JOB}, (metric, all_jobs, shown)
    queries = all_queries(job=all_jobs)
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
    scraped = prom_query(
        live.stack.prometheus_url, f'count by (__name__) ({{__name__=~"msml_.+",job="{GATEWAY_JOB}"}})'
    )
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


def test_fresh_gateway_with_traffic_and_no_feedback_raises_no_alert_in_15_minutes(
    live, processed, contract, registered_model, tmp_path
):
    """A new gateway scored some rows (fewer than the drift minimum) and got no feedback: its live scrape, held
    for 15 minutes of promtool time, raises none of the alerts. Before issue 15, live accuracy exported 0 and
    LiveAccuracyDrop fired, and PSI over a handful of rows fired DataDriftPSI."""
    from msml.ops.loadgen import load_test_rows
    from tests.integration.serving_fixtures import parse_metrics

    model = registered_model
    proc, url = start_gateway(
        live.model_server.url,
        model.tracking_uri,
        tmp_path / "fresh-gateway.log",
        "--model-uri",
        model.uri,
        "--drift-window",
        str(DRIFT_MIN_ROWS),
    )
    try:
        rows = load_test_rows(processed, contract)[0][: DRIFT_MIN_ROWS // 2]
        for start in range(0, len(rows), 50):
            assert (
                httpx.post(f"{url}/invocations", json={"rows": rows[start : start + 50]}, timeout=30).status_code == 200
            )
        text = httpx.get(f"{url}/metrics", timeout=10).text
    finally:
        stop_process(proc)
    scraped = parse_metrics(text)
    assert any(name == "msml_rows_scored_total" and v == len(rows) for (name, _), v in scraped.items())
    tests = {
        "rule_files": [str(ROOT / "monitoring/prometheus/rules" / f) for f in (RECORDING_FILE, ALERTS_FILE)],
        "evaluation_interval": "15s",
        "tests": [
            {
                "interval": "15s",
                "input_series": [{"series": k, "values": v} for k, v in _promtool_series(text, "gateway:8000").items()],
                "alert_rule_test": [
                    {"eval_time": f"{m}m", "alertname": a.name, "exp_alerts": []}
                    for a in ALERTS
                    for m in (1, 5, 10, 15)
                ],
            }
        ],
    }
    path = tmp_path / "fresh_gateway_test.yml"
    path.write_text(yaml.safe_dump(tests, sort_keys=False))
    promtool = shutil.which("promtool")
    assert promtool, "promtool is not installed: run scripts/install-system-deps.sh"
    result = subprocess.run([promtool, "test", "rules", str(path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_targets_are_scraped_and_the_rules_loaded(live):
    up = {r["metric"]["job"]: r["value"][1] for r in prom_query(live.stack.prometheus_url, "up")}
    assert up == {
        "gateway": "1",
        "prometheus": "1",
        "mlflow": "1",
        "loop": "1",
    }  # loop: the receiver; mlflow: `mlflow server --expose-prometheus`
    with urllib.request.urlopen(f"{live.stack.prometheus_url}/api/v1/rules", timeout=10) as resp:
        groups = json.loads(resp.read())["data"]["groups"]
    assert all(rule["health"] == "ok" for g in groups for rule in g["rules"]), groups


def test_every_target_is_up_and_the_mlflow_ui_answers(live, registered_model):
    """What `make demo` ends with (its last step is the same `wait_targets_up`), the MLflow UI included."""
    assert stack.wait_targets_up(live.stack.prometheus_url, timeout=30) == {
        "gateway": "up",
        "prometheus": "up",
        "mlflow": "up",
        "loop": "up",  # the webhook receiver's /metrics
    }
    with urllib.request.urlopen(f"{live.mlflow_url}/", timeout=10) as resp:
        assert resp.status == 200 and b"<title>MLflow</title>" in resp.read()
    with urllib.request.urlopen(f"{live.mlflow_url}/api/2.0/mlflow/registered-models/search", timeout=10) as resp:
        assert registered_model.name in {m["name"] for m in json.loads(resp.read())["registered_models"]}


def test_prometheus_evidence_is_numbered_and_every_image_shows_its_content(live, tmp_path):
    """Every Prometheus page of `4.bukti monitoring Prometheus/`, captured after its data drew, none blank."""
    from PIL import Image

    from msml.handin.evidence import check_capture, numbered, prometheus_evidence, prometheus_stems

    written = prometheus_evidence(tmp_path, live.stack.prometheus_url, live.stack.notifications)
    notified = [
        n.split("notifikasi_alertmanager_", 1)[1].removesuffix(".jpg")
        for n in (p.name for p in written)
        if "notifikasi_alertmanager_" in n
    ]
    assert [p.name for p in written] == numbered(prometheus_stems(notified))
    for shot in written:
        check_capture(shot)  # raises on a blank or half-drawn capture
        with Image.open(shot) as image:
            assert image.format == "JPEG" and image.width == 1400 and image.height >= 200


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
