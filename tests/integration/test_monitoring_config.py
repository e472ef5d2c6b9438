"""Monitoring as code: committed files match the definitions, and the real tools accept them.

promtool (config check + rule unit tests), amtool, Debian's docker-compose; Grafana's files checked for
the shape Grafana 11 provisions (no Grafana binary can be installed here).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import threading
import urllib.request
from pathlib import Path

import pytest
import yaml

from msml import generated
from msml.monitoring import definitions, metrics, render
from msml.monitoring.receiver import make_server, read_notifications
from tests.conftest import ROOT, run_msml
from tests.helpers import need_binary

MON = ROOT / "monitoring"


def _run(*cmd: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, timeout=120)


def test_committed_files_are_what_the_definitions_render():
    result = run_msml("monitoring", "render", "--check")
    assert result.returncode == 0, result.stdout + result.stderr


def test_render_check_fails_on_a_stale_file(tmp_path):
    files = render.render_files()
    generated.write(tmp_path, files)
    assert generated.stale(tmp_path, files) == []
    (tmp_path / "monitoring/prometheus/rules/alerts.yml").write_text("groups: []\n")
    assert generated.stale(tmp_path, files) == ["monitoring/prometheus/rules/alerts.yml"]
    result = run_msml("monitoring", "render", "--check", "--root", str(tmp_path))
    assert result.returncode == 1 and "stale: monitoring/prometheus/rules/alerts.yml" in result.stdout


@pytest.mark.system
@pytest.mark.parametrize("config", ["prometheus.yml", "prometheus.compose.yml"])
def test_promtool_check_config(config):
    result = _run(need_binary("promtool"), "check", "config", str(MON / "prometheus" / config))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.system
def test_promtool_rule_unit_tests_pass():
    result = _run(need_binary("promtool"), "test", "rules", str(MON / "prometheus/tests/alerts_test.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_firing_and_a_not_firing_promtool_case():
    tests = yaml.safe_load((MON / "prometheus/tests/alerts_test.yml").read_text())["tests"]
    cases = [(t["alert_rule_test"][0]["alertname"], bool(t["alert_rule_test"][0]["exp_alerts"])) for t in tests]
    for a in definitions.ALERTS:
        assert (a.name, True) in cases and (a.name, False) in cases, a.name


@pytest.mark.system
def test_promtool_unit_tests_catch_a_broken_threshold(tmp_path):
    """The rule tests can fail: with each threshold flipped past its inputs, promtool reports the alerts."""
    broken = tuple(dataclasses.replace(a, threshold=-1 if a.op == ">" else 2) for a in definitions.ALERTS)
    original = render.ALERTS
    try:
        render.ALERTS = broken
        files = render.render_files()
    finally:
        render.ALERTS = original
    rules = tmp_path / "monitoring/prometheus/rules"
    rules.mkdir(parents=True)
    (rules / render.ALERTS_FILE).write_text(files[f"monitoring/prometheus/rules/{render.ALERTS_FILE}"])
    (rules / render.RECORDING_FILE).write_text(files[f"monitoring/prometheus/rules/{render.RECORDING_FILE}"])
    tests = tmp_path / "monitoring/prometheus/tests"
    tests.mkdir()
    # the committed tests (expectations from the real thresholds) against the broken rules
    shutil.copy(MON / "prometheus/tests/alerts_test.yml", tests / "alerts_test.yml")
    result = _run(need_binary("promtool"), "test", "rules", str(tests / "alerts_test.yml"))
    assert result.returncode != 0
    for a in definitions.ALERTS:
        assert a.name in result.stdout + result.stderr


@pytest.mark.system
@pytest.mark.parametrize("config", ["alertmanager.yml", "alertmanager.compose.yml"])
def test_amtool_check_config(config):
    result = _run(need_binary("amtool"), "check-config", str(MON / "alertmanager" / config))
    assert result.returncode == 0, result.stdout + result.stderr
    routed = yaml.safe_load((MON / "alertmanager" / config).read_text())
    hook = routed["receivers"][0]["webhook_configs"][0]
    assert hook["send_resolved"] is True and hook["url"].endswith("/alerts")


@pytest.mark.system
def test_docker_compose_config_is_valid():
    result = _run(need_binary("docker-compose"), "-f", str(ROOT / "docker-compose.yml"), "config")
    assert result.returncode == 0, result.stdout + result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    assert {"model-server", "gateway", "mlflow", "prometheus", "alertmanager", "grafana"} <= set(services)
    for name, service in services.items():
        for port in service.get("ports", []):
            published = port if isinstance(port, str) else f"{port.get('host_ip')}:{port.get('published')}"
            assert str(published).startswith("127.0.0.1:"), (name, port)
    grafana_mounts = " ".join(str(v) for v in services["grafana"]["volumes"])
    assert "monitoring/grafana/provisioning" in grafana_mounts


def test_panels_and_alerts_are_built_on_the_metric_constants():
    names = [v for k, v in vars(metrics).items() if k.isupper() and isinstance(v, str) and k != "PREFIX"]
    recorded = [r.record for r in definitions.RECORDING_RULES]
    for where, expr in definitions.all_queries().items():
        assert any(n in expr for n in names + recorded + ["up{"]), where
    panel_metrics = set()
    for panel in definitions.PANELS:
        text = " ".join(q.expr for q in panel.queries)
        for r in definitions.RECORDING_RULES:
            text = text.replace(r.record, r.expr)
        panel_metrics |= {n for n in names if n in text}
    assert len(definitions.PANELS) >= 10 and len(panel_metrics) >= 10


def test_grafana_dashboard_has_every_panel_with_its_query():
    dash = json.loads((MON / "grafana/dashboards" / f"{render.DASHBOARD_UID}.json").read_text())
    assert dash["uid"] == render.DASHBOARD_UID and dash["schemaVersion"] >= 39
    by_title = {p["title"]: p for p in dash["panels"]}
    assert len(by_title) == len(definitions.PANELS) >= 10
    for panel in definitions.PANELS:
        got = by_title[panel.title]
        assert [t["expr"] for t in got["targets"]] == [q.expr for q in panel.queries]
        assert got["datasource"]["uid"] == render.DATASOURCE_UID
        assert got["fieldConfig"]["defaults"]["unit"] == panel.unit
    ids = [p["id"] for p in dash["panels"]]
    assert len(set(ids)) == len(ids)


def test_grafana_provisioning_files_have_the_shape_grafana_11_reads():
    prov = MON / "grafana/provisioning"
    ds = yaml.safe_load((prov / "datasources/prometheus.yml").read_text())
    assert ds["apiVersion"] == 1 and ds["datasources"][0]["uid"] == render.DATASOURCE_UID
    dashboards = yaml.safe_load((prov / "dashboards/msml.yml").read_text())
    assert dashboards["providers"][0]["type"] == "file"
    alerting = yaml.safe_load((prov / "alerting/msml.yml").read_text())
    assert alerting["apiVersion"] == 1
    rules = alerting["groups"][0]["rules"]
    assert len(rules) >= 3 and len(rules) == len(definitions.ALERTS)
    for rule, a in zip(rules, definitions.ALERTS):
        assert rule["title"] == a.name and rule["condition"] == "C" and len(rule["uid"]) <= 40
        query = rule["data"][0]
        assert query["datasourceUid"] == render.DATASOURCE_UID and query["model"]["expr"] == a.query
        assert rule["data"][2]["model"]["conditions"][0]["evaluator"] == {"params": [a.threshold],
                                                                           "type": a.grafana_evaluator}
        assert "folderUID" not in rule and "ruleGroup" not in rule  # API-only fields
    interval = render._duration_seconds(alerting["groups"][0]["interval"])
    assert interval % 10 == 0  # Grafana's scheduler ticks every 10 s
    assert all(render._duration_seconds(r["for"]) >= interval for r in rules)  # the rule editor requires it
    contact = alerting["contactPoints"][0]
    assert contact["receivers"][0]["type"] == "webhook"
    assert alerting["policies"][0]["receiver"] == contact["name"]


def test_receiver_records_posted_notifications(tmp_path):
    out = tmp_path / "notes.jsonl"
    server = make_server("127.0.0.1", 0, out)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        body = json.dumps({"status": "firing", "alerts": [{"labels": {"alertname": "X"}}]}).encode()
        req = urllib.request.Request(f"{url}/alerts", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert resp.status == 200
        bad = urllib.request.Request(f"{url}/alerts", data=b"not json")
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(bad, timeout=5)
        assert err.value.code == 400
        with urllib.request.urlopen(f"{url}/alerts", timeout=5) as resp:
            listed = json.loads(resp.read())
    finally:
        server.shutdown()
        server.server_close()
    assert [n["payload"]["status"] for n in read_notifications(out)] == ["firing"]
    assert listed[0]["payload"]["alerts"][0]["labels"]["alertname"] == "X"


@pytest.mark.system
def test_stack_start_is_idempotent_and_stop_stops_exactly_its_processes(tmp_path):
    """Prometheus, Alertmanager and the receiver as plain processes: a second start reuses them, stop ends them."""
    from msml.monitoring import stack
    from tests.integration.serving_fixtures import free_port

    need_binary("prometheus")
    need_binary("alertmanager", "prometheus-alertmanager")
    ports = render.Ports(gateway=free_port(), mlflow=free_port(), prometheus=free_port(),
                         alertmanager=free_port(), receiver=free_port())
    try:
        first = stack.start(tmp_path, ports, render.FAST)
        pids = stack.running(tmp_path)
        assert all(pids.values()), pids
        stack.start(tmp_path, ports, render.FAST)
        assert stack.running(tmp_path) == pids  # nothing started twice
        with urllib.request.urlopen(f"{first.prometheus_url}/api/v1/status/flags", timeout=5) as resp:
            flags = json.loads(resp.read())["data"]
        assert flags["web.listen-address"] == f"127.0.0.1:{ports.prometheus}"
        with urllib.request.urlopen(f"{first.alertmanager_url}/api/v2/status", timeout=5) as resp:
            assert json.loads(resp.read())["cluster"]["status"] == "disabled"  # no cluster port opened
    finally:
        stopped = stack.stop(tmp_path)
    assert sorted(stopped) == sorted(stack.COMPONENTS)
    for pid in pids.values():  # gone, or a zombie waiting for this test process to reap it
        stat = Path(f"/proc/{pid}/stat")
        assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z", pid
    assert stack.stop(tmp_path) == []
