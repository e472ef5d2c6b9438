"""`msml evidence grafana` up to the container, and the Grafana files it mounts, checked against Grafana's own types.

No Grafana can run here, so: the committed provisioning files round-trip through the grafana-foundation-sdk (11.6)
models without losing a key (a misspelled or misplaced field is caught: see the failing case); the `docker run` it
issues starts Grafana alone, on a port `make demo` does not use, with the compose host names the files point at mapped
to the ports where `make demo` serves Prometheus and the receiver; without Docker, or without the demo, it stops with
one line and a non-zero exit. (The alert rules' and panels' PromQL is evaluated live against Prometheus by
tests/integration/test_monitoring_live.py; that the files carry exactly those queries, by test_monitoring_config.py.)
"""

from __future__ import annotations

import copy
import json
import shutil
import urllib.parse
from dataclasses import fields

import pytest
import yaml

from msml.handin.grafana import (
    ALERT_NAMES,
    CONTAINER,
    FIRE_TIMEOUT,
    OUTAGE_ALERT,
    OUTAGE_TIMEOUT,
    TRAFFIC_ALERTS,
    GrafanaError,
    check_stack,
    compose_hosts,
    inhibited_among,
    run_command,
)
from msml.monitoring.definitions import ALERTS, alert
from msml.monitoring.render import DASHBOARD_UID, GRAFANA_IMAGE, Ports, _duration_seconds, _to_plain
from tests.conftest import ROOT, run_msml
from tests.integration.serving_fixtures import free_port

GRAFANA = ROOT / "monitoring" / "grafana"


def lost_keys(original, round_tripped, path="") -> list[str]:
    """Keys or values of `original` that the SDK model did not carry through (unknown to Grafana's schema)."""
    if isinstance(original, dict):
        if not isinstance(round_tripped, dict):
            return [f"{path}: not an object"]
        return [
            p
            for k, v in original.items()
            for p in ([f"{path}/{k}"] if k not in round_tripped else lost_keys(v, round_tripped[k], f"{path}/{k}"))
        ]
    if isinstance(original, list):
        if not isinstance(round_tripped, list) or len(original) != len(round_tripped):
            return [f"{path}: list changed"]
        return [
            p
            for i, (a, b) in enumerate(zip(original, round_tripped, strict=True))
            for p in lost_keys(a, b, f"{path}[{i}]")
        ]
    return [] if original == round_tripped else [f"{path}: {original!r} became {round_tripped!r}"]


def dashboard_problems(dash: dict) -> list[str]:
    from grafana_foundation_sdk.models import dashboard, prometheus

    problems = lost_keys(dash, _to_plain(dashboard.Dashboard.from_json(dash)))
    for i, panel in enumerate(dash["panels"]):
        for j, target in enumerate(panel.get("targets", [])):  # a row panel has none
            problems += lost_keys(
                target, _to_plain(prometheus.Dataquery.from_json(target)), f"/panels[{i}]/targets[{j}]"
            )
    return problems


def alerting_problems(prov: dict) -> list[str]:
    from grafana_foundation_sdk.models import alerting, prometheus

    problems = []
    for group in prov["groups"]:
        for rule in group["rules"]:
            problems += lost_keys(rule, _to_plain(alerting.Rule.from_json(rule)), f"/rule {rule.get('title')}")
            query = rule["data"][0]["model"]
            problems += lost_keys(query, _to_plain(prometheus.Dataquery.from_json(query)), f"/rule {rule['title']}/A")
    for point in prov["contactPoints"]:
        for receiver in point["receivers"]:
            problems += lost_keys(receiver, _to_plain(alerting.ContactPoint.from_json(receiver)), "/contactPoint")
    for policy in prov["policies"]:
        inner = {k: v for k, v in policy.items() if k != "orgId"}  # orgId belongs to the provisioning wrapper
        problems += lost_keys(inner, _to_plain(alerting.NotificationPolicy.from_json(inner)), "/policy")
    return problems


def test_provisioning_files_fit_grafana_11_6_types():
    dash = json.loads((GRAFANA / "dashboards" / f"{DASHBOARD_UID}.json").read_text())
    assert len(dash["panels"]) >= 10
    assert dashboard_problems(dash) == []
    prov = yaml.safe_load((GRAFANA / "provisioning/alerting/msml.yml").read_text())
    assert alerting_problems(prov) == []
    titles = {r["title"] for g in prov["groups"] for r in g["rules"]}
    assert set(ALERT_NAMES) <= titles  # the three the command fires are Grafana-managed rules


def test_a_misspelled_field_is_caught_by_the_type_check():
    dash = json.loads((GRAFANA / "dashboards" / f"{DASHBOARD_UID}.json").read_text())
    bad = copy.deepcopy(dash)
    bad["panels"][0]["gridPoss"] = bad["panels"][0].pop("gridPos")
    bad["panels"][1]["targets"][0]["exprr"] = bad["panels"][1]["targets"][0].pop("expr")
    problems = dashboard_problems(bad)
    assert "/panels[0]/gridPoss" in problems and "/panels[1]/targets[0]/exprr" in problems
    prov = yaml.safe_load((GRAFANA / "provisioning/alerting/msml.yml").read_text())
    prov["groups"][0]["rules"][0]["conditon"] = prov["groups"][0]["rules"][0].pop("condition")
    assert any(p.endswith("/conditon") for p in alerting_problems(prov))


def test_docker_run_starts_grafana_alone_against_the_demo_ports():
    ports = Ports()
    cmd = run_command("docker", ROOT, ports)
    assert cmd[:3] == ["docker", "run", "-d"] and cmd[-1] == GRAFANA_IMAGE and GRAFANA_IMAGE.endswith(":11.6.0")
    assert cmd[cmd.index("--name") + 1] == CONTAINER and cmd[cmd.index("--network") + 1] == "host"
    assert "--rm" not in cmd  # Grafana's log outlives a failed start (`docker logs`, saved to grafana.log)
    mounts = [cmd[i + 1] for i, a in enumerate(cmd) if a == "-v"]
    assert [m.split(":")[0] for m in mounts] == [str(GRAFANA / "provisioning"), str(GRAFANA / "dashboards")]
    assert all(m.endswith(":ro") for m in mounts)
    env = dict(cmd[i + 1].split("=", 1) for i, a in enumerate(cmd) if a == "-e")
    demo_ports = {getattr(ports, f.name) for f in fields(Ports) if f.name != "grafana"}
    assert int(env["GF_SERVER_HTTP_PORT"]) == ports.grafana not in demo_ports  # no clash with make demo
    assert env["GF_SERVER_HTTP_ADDR"] == "127.0.0.1"
    # the provisioning files' hosts resolve to 127.0.0.1, and their ports are the ones make demo listens on
    hosts = dict(cmd[i + 1].split(":", 1) for i, a in enumerate(cmd) if a == "--add-host")
    datasource = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())["datasources"][0]
    contact = yaml.safe_load((GRAFANA / "provisioning/alerting/msml.yml").read_text())["contactPoints"][0]
    prom, hook = (
        urllib.parse.urlsplit(datasource["url"]),
        urllib.parse.urlsplit(contact["receivers"][0]["settings"]["url"]),
    )
    assert hosts == {prom.hostname: "127.0.0.1", hook.hostname: "127.0.0.1"} and sorted(hosts) == compose_hosts()
    assert (prom.port, hook.port) == (ports.prometheus, ports.receiver)


def test_without_docker_the_command_fails_with_one_line(tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    result = run_msml("evidence", "grafana", "--out", str(tmp_path / "dist"), env={"PATH": str(empty)}, timeout=120)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: Docker is not installed"), result.stderr


def test_handin_with_grafana_but_no_docker_fails_in_one_line_before_any_work(tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    result = run_msml(
        "handin",
        "--grafana",
        "--out",
        str(tmp_path / "dist"),
        "--workspace",
        str(tmp_path / "ws"),
        env={"PATH": str(empty)},
        timeout=120,
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Docker is not installed" in lines[0], result.stderr
    assert not (tmp_path / "ws" / "logs").exists()  # nothing was copied or installed


def test_grafana_for_the_handin_reads_its_prometheus_and_posts_to_its_receiver(tmp_path):
    """The provisioning `msml handin --grafana` mounts: the datasource is the hand-in's Prometheus, the webhook its
    receiver, the rest the committed files, and every key still fits Grafana 11.6's types."""
    from pathlib import Path

    from msml.handin.grafana import Stack
    from msml.handin.grafana_run import write_provisioning

    stack = Stack(
        "hand-in",
        list,
        lambda: (0, 0),
        lambda: None,
        Path("n.jsonl"),
        "http://127.0.0.1:41001",
        "http://127.0.0.1:41002/alerts",
    )
    written = write_provisioning(ROOT, tmp_path, None, stack)
    datasource = yaml.safe_load((written / "datasources/prometheus.yml").read_text())["datasources"][0]
    assert datasource["url"] == "http://127.0.0.1:41001"
    alerting = yaml.safe_load((written / "alerting/msml.yml").read_text())
    assert alerting["contactPoints"][0]["receivers"][0]["settings"]["url"] == "http://127.0.0.1:41002/alerts"
    assert alerting_problems(alerting) == []
    committed = yaml.safe_load((GRAFANA / "provisioning/alerting/msml.yml").read_text())
    assert alerting["groups"] == committed["groups"]  # the rules are the committed ones


def test_a_contact_point_without_its_secret_fails_before_anything_starts(tmp_path):
    result = run_msml(
        "evidence", "grafana", "--out", str(tmp_path / "dist"), env={"MSML_GRAFANA_CONTACT": "slack"}, timeout=120
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "MSML_GRAFANA_CONTACT=slack needs MSML_SLACK_WEBHOOK_URL" in lines[0], result.stderr


@pytest.mark.skipif(not shutil.which("docker"), reason="no docker CLI on this machine")
def test_with_an_unreachable_daemon_the_command_fails_with_one_line(tmp_path):
    result = run_msml(
        "evidence",
        "grafana",
        "--out",
        str(tmp_path / "dist"),
        env={"DOCKER_HOST": f"unix://{tmp_path / 'no-daemon.sock'}"},
        timeout=120,
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "daemon does not answer" in lines[0], result.stderr


def test_without_the_demo_stack_it_says_which_server_is_missing():
    ports = Ports(
        gateway=free_port(), model_server=free_port(), prometheus=free_port(), receiver=free_port(), grafana=free_port()
    )
    with pytest.raises(
        GrafanaError, match=rf"gateway of `make demo` does not answer at http://127.0.0.1:{ports.gateway}"
    ):
        check_stack(ports)


def test_the_alerts_it_fires_are_in_the_definitions():
    assert len(set(ALERT_NAMES)) == 3 and all(alert(name) for name in ALERT_NAMES)
    # each wait outlasts the alert's `for` (the alert must hold that long before Grafana fires it)
    assert max(_duration_seconds(alert(n).for_) for n in TRAFFIC_ALERTS) < FIRE_TIMEOUT
    assert _duration_seconds(alert(OUTAGE_ALERT).for_) < OUTAGE_TIMEOUT
    assert set(ALERT_NAMES) == {*TRAFFIC_ALERTS, OUTAGE_ALERT}


def test_no_alert_it_fires_is_inhibited_by_another_it_fires():
    # from the definitions: no chosen alert lists another chosen one as its cause
    assert inhibited_among(ALERT_NAMES) == []
    # and from the committed Grafana rules: no chosen rule's query is muted (`unless`) by another chosen alert
    prov = yaml.safe_load((GRAFANA / "provisioning/alerting/msml.yml").read_text())
    queries = {r["title"]: r["data"][0]["model"]["expr"] for g in prov["groups"] for r in g["rules"]}
    for name in ALERT_NAMES:
        assert queries[name] == alert(name).grafana_query
        for other in ALERT_NAMES:
            assert other == name or f"unless on (job) ({alert(other).expr})" not in queries[name], (name, other)


def test_the_inhibition_check_catches_an_inhibited_choice():
    # the choice before #15's inhibition (HighErrorRate could never fire while ModelServerDown does)
    inhibited = [a for a in ALERTS if a.inhibited_by]
    assert inhibited, "no alert is inhibited any more: this check has nothing to catch"
    for a in inhibited:
        assert inhibited_among((a.name, *a.inhibited_by)) == [(a.name, a.inhibited_by[0])]
