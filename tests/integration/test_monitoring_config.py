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
import time
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
    cases = [
        (t["alert_rule_test"][0]["alertname"], bool(t["alert_rule_test"][0]["exp_alerts"]))
        for t in tests
        if "alert_rule_test" in t
    ]
    for a in definitions.ALERTS:
        assert (a.name, True) in cases and (a.name, False) in cases, a.name


def test_alert_annotations_are_templated_and_link_a_runbook_section():
    """The firing promtool cases expect the description rendered from the series (labels and value), so
    `promtool test rules` above proves the templates; here: each names what fired and has its runbook."""
    readme = (MON / "README.md").read_text().lower()
    for a in definitions.ALERTS:
        assert "{{ $labels." in a.description and "{{ $value" in a.description, a.name
        assert a.annotations["description"] not in (a.description, "")  # the rendered form differs
        anchor = a.runbook_url.split("#")[1]
        assert f"### {anchor}" in readme, f"monitoring/README.md has no runbook section for {a.name}"
    drift = definitions.alert("DataDriftPSI").annotations["description"]
    assert "age" in drift and "0.35" in drift and f"{definitions.DRIFT_PSI_THRESHOLD:g}" in drift


@pytest.mark.system
def test_promtool_catches_a_grafana_rule_without_its_inhibition(tmp_path):
    """The Grafana form of an inhibited alert must be empty while its cause fires: without `unless`, the
    committed promtool expression tests fail."""
    inhibited = [a for a in definitions.ALERTS if a.inhibited_by]
    assert inhibited, "no alert is inhibited by its cause"
    tests = yaml.safe_load((MON / "prometheus/tests/alerts_test.yml").read_text())
    for t in tests["tests"]:
        for case in t.get("promql_expr_test", []):
            for a in inhibited:
                case["expr"] = case["expr"].replace(a.grafana_query, a.query)
    tests["rule_files"] = [str(MON / "prometheus/rules" / Path(f).name) for f in tests["rule_files"]]
    (tmp_path / "t.yml").write_text(yaml.safe_dump(tests))
    result = _run(need_binary("promtool"), "test", "rules", str(tmp_path / "t.yml"))
    assert result.returncode != 0
    assert all(f'expr: "{a.query}"' in result.stdout + result.stderr for a in inhibited)


@pytest.mark.system
def test_live_alertmanager_inhibits_the_error_rate_while_the_model_server_is_down(tmp_path):
    """A real Alertmanager with the rendered config: HighErrorRate posted alongside ModelServerDown for the
    same job is suppressed (inhibited by it); for another job it is not."""
    import urllib.request

    from msml.ops.processes import spawn, stop_process
    from tests.integration.serving_fixtures import free_port

    port = free_port()
    config = tmp_path / "alertmanager.yml"
    config.write_text(
        render._yaml(render.alertmanager_config(render.Targets.local(render.Ports(receiver=free_port()))))
    )
    proc = spawn(
        [
            need_binary("prometheus-alertmanager"),
            f"--config.file={config}",
            f"--storage.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
        ],
        tmp_path / "am.log",
    )
    base = f"http://127.0.0.1:{port}/api/v2/alerts"
    try:
        alerts = [
            {"labels": {"alertname": "ModelServerDown", "job": "gateway", "severity": "critical"}},
            {"labels": {"alertname": "HighErrorRate", "job": "gateway", "severity": "critical"}},
            {"labels": {"alertname": "HighErrorRate", "job": "other", "severity": "critical"}},
        ]
        deadline = time.monotonic() + 30
        while True:
            try:
                req = urllib.request.Request(
                    base, data=json.dumps(alerts).encode(), method="POST", headers={"Content-Type": "application/json"}
                )
                urllib.request.urlopen(req, timeout=2).close()
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, (tmp_path / "am.log").read_text()
                time.sleep(0.2)

        def states():
            with urllib.request.urlopen(base, timeout=5) as resp:
                return {(a["labels"]["alertname"], a["labels"]["job"]): a["status"] for a in json.loads(resp.read())}

        while len(got := states()) < 3 or got[("HighErrorRate", "gateway")]["state"] != "suppressed":
            assert time.monotonic() < deadline, got
            time.sleep(0.2)
        assert got[("HighErrorRate", "gateway")]["inhibitedBy"]
        assert got[("HighErrorRate", "other")]["state"] == "active"
        assert got[("ModelServerDown", "gateway")]["state"] == "active"
    finally:
        stop_process(proc)


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
    by_title = {p["title"]: p for p in dash["panels"] if p["type"] != "row"}
    assert len(by_title) == len(definitions.PANELS) >= 10
    rows = [p["title"].lower() for p in dash["panels"] if p["type"] == "row"]
    assert rows == list(definitions.ROWS) == ["traffic", "model", "data", "loop"]
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert variables["job"]["type"] == "query" and variables["job"]["datasource"]["uid"] == "${datasource}"
    # "All" is the jobs the variable lists (the gateways), not an allValue such as `.+` (every scraped job):
    # test_monitoring_live.py resolves it against a live Prometheus
    assert variables["job"]["query"]["query"] == definitions.JOB_VALUES and "allValue" not in variables["job"]
    for panel in definitions.PANELS:
        got = by_title[panel.title]
        assert [t["expr"] for t in got["targets"]] == [q.expr for q in panel.queries]
        assert got["datasource"]["uid"] == "${datasource}"
        assert got["fieldConfig"]["defaults"]["unit"] == panel.unit
        for q in panel.queries:  # the gateway(s) chosen on the dashboard, or the loop's receiver
            loop = f'{{job="{definitions.LOOP_JOB}"}}' in q.expr
            assert '{job=~"$job"' in q.expr or ',job=~"$job"' in q.expr or loop, panel.key
            assert "[1m]" not in q.expr  # raw rates use $__rate_interval; recording rules carry their own window
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
    for rule, a in zip(rules, definitions.ALERTS, strict=True):
        assert rule["title"] == a.name and rule["condition"] == "C" and len(rule["uid"]) <= 40
        query = rule["data"][0]
        assert query["datasourceUid"] == render.DATASOURCE_UID and query["model"]["expr"] == a.grafana_query
        # missing data alerts once, through the alert that owns it
        assert rule["noDataState"] == ("Alerting" if a.name == "GatewayDown" else "OK"), a.name
        assert rule["annotations"]["runbook_url"] == a.runbook_url
        assert rule["data"][2]["model"]["conditions"][0]["evaluator"] == {
            "params": [a.threshold],
            "type": a.grafana_evaluator,
        }
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
    ports = render.Ports(
        gateway=free_port(), mlflow=free_port(), prometheus=free_port(), alertmanager=free_port(), receiver=free_port()
    )
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
