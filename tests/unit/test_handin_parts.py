"""The parts of `msml handin` and of the Grafana capture that need no server: the XWD framebuffer reader, the metric
names an evidence image carries, the contact point chosen from the environment (checked against Grafana 11.6's own
types), the rule-state poll that survives a refused connection, stopping every model-server replica by PID, and
the missing-evidence list that a run's images shorten.
"""

from __future__ import annotations

import struct
import sys
import time

import pytest

from msml.errors import ExportError
from msml.handin import contact
from msml.handin.manifest import metric_names
from msml.handin.terminal import read_xwd


def _xwd(path, width: int, height: int, pixels: bytes, order: str = "<") -> None:
    """An XWD file as Xvfb's -fbdir writes it (32 bits a pixel, TrueColor, no colormap entries)."""
    header = [100, 7, 2, 24, width, height, 0, 0 if order == "<" else 1, 32, 0, 32, 32, width * 4, 4]
    header += [0xFF0000, 0xFF00, 0xFF, 8, 0, 0, width, height, 0, 0, 0]
    path.write_bytes(struct.pack(order + "25I", *header) + pixels)


def test_read_xwd_gives_the_pixels_xvfb_wrote(tmp_path):
    # little-endian BGRX: red, green / blue, white
    pixels = bytes([0, 0, 255, 0, 0, 255, 0, 0, 255, 0, 0, 0, 255, 255, 255, 0])
    _xwd(tmp_path / "screen", 2, 2, pixels)
    image = read_xwd(tmp_path / "screen")
    assert image.size == (2, 2)
    assert [image.getpixel(p) for p in ((0, 0), (1, 0), (0, 1), (1, 1))] == [
        (255, 0, 0),
        (0, 255, 0),
        (0, 0, 255),
        (255, 255, 255),
    ]


def test_read_xwd_refuses_what_is_not_xwd(tmp_path):
    (tmp_path / "x").write_bytes(b"\0" * 200)
    with pytest.raises(Exception, match="not an XWD file"):
        read_xwd(tmp_path / "x")


def test_metric_names_resolve_recording_rules_to_exported_series():
    from msml.monitoring.definitions import ERROR_RATIO, LATENCY_P95, PANELS, promql

    assert metric_names([promql(f"max({ERROR_RATIO.record})")]) == ["msml_requests_total"]
    assert metric_names([LATENCY_P95.record]) == ["msml_request_duration_seconds_bucket"]
    memory = next(p for p in PANELS if p.key == "memory")
    assert metric_names([promql(q.expr) for q in memory.queries]) == ["process_resident_memory_bytes"]


def test_webhook_is_the_default_contact_and_changes_nothing():
    provisioning = {"contactPoints": [{"name": "msml-webhook", "receivers": [{"type": "webhook"}]}]}
    assert contact.chosen({}) is None
    assert contact.with_contact(provisioning, None) is provisioning
    assert contact.container_env(None, {}) == []


@pytest.mark.parametrize("kind", ["discord", "slack", "telegram", "email"])
def test_a_chosen_contact_names_its_secrets_by_variable_never_by_value(kind):
    import yaml

    from msml.config import load_settings
    from tests.integration.test_grafana_evidence import alerting_problems

    spec = contact.CONTACTS[kind]
    env = {contact.CHOICE: kind, **{v: f"secret-{v}" for v in (*spec.settings.values(), *spec.needs)}}
    env["GF_SMTP_PASSWORD"] = "smtp-secret"
    chosen = contact.chosen(env)
    committed = load_settings().root / "monitoring/grafana/provisioning/alerting/msml.yml"
    provisioning = contact.with_contact(yaml.safe_load(committed.read_text()), chosen)
    assert alerting_problems(provisioning) == []  # Grafana 11.6's own types carry every key
    receivers = provisioning["contactPoints"][0]["receivers"]
    assert [r["type"] for r in receivers] == ["webhook", kind]  # the receiver still gets the payload
    text = yaml.safe_dump(provisioning) + " ".join(contact.container_env(chosen, env))
    assert "secret" not in text
    assert all(f"$__env{{{v}}}" in yaml.safe_dump(receivers[1]) for v in spec.settings.values())
    args = contact.container_env(chosen, env)
    assert set(spec.settings.values()) <= set(args[1::2])
    assert ("GF_SMTP_PASSWORD" in args) == (kind == "email")


def test_a_contact_without_its_variables_is_refused_with_their_names():
    with pytest.raises(ExportError, match="MSML_TELEGRAM_BOT_TOKEN, MSML_TELEGRAM_CHAT_ID"):
        contact.chosen({contact.CHOICE: "telegram"})
    with pytest.raises(ExportError, match="choose one of webhook, email, discord, telegram, slack"):
        contact.chosen({contact.CHOICE: "pager"})


def test_rule_polling_retries_a_refused_connection_then_stops_with_the_cause(monkeypatch):
    from msml.handin import grafana
    from tests.integration.serving_fixtures import free_port

    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: every poll is refused
    polls = []

    def condition():
        polls.append(1)
        if len(polls) == 2:
            return True  # a transient failure, then the answer: no error
        return grafana.rule_states(dead) == {}

    grafana._wait(condition, 10, "a rule firing", interval=0.01)
    assert len(polls) == 2
    with pytest.raises(grafana.GrafanaError, match=r"failed 5 times in a row, last: .*refused"):
        grafana._wait(lambda: grafana.rule_states(dead), 10, "a rule firing", interval=0.01)


def test_every_model_server_replica_is_stopped_and_counted(tmp_path):
    from msml.handin.grafana import replica_pidfiles, stop_replicas
    from msml.ops.processes import start_background
    from msml.serving.model_server import replica_name

    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    pids = [start_background(sleeper, tmp_path / f"{replica_name(i)}.pid", tmp_path / f"{i}.log") for i in range(3)]
    assert [p.name for p in replica_pidfiles(tmp_path)] == [
        "model-server.pid",
        "model-server-2.pid",
        "model-server-3.pid",
    ]
    assert stop_replicas(tmp_path) == 3
    time.sleep(0.2)
    import psutil

    assert not [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert stop_replicas(tmp_path) == 0  # nothing of ours is left to stop: the outage cannot be claimed


def test_a_handin_run_leaves_listed_exactly_the_evidence_it_did_not_make(tmp_path):
    """`msml export --evidence` prints, and MISSING_EVIDENCE.md keeps, what is still missing once `msml handin`
    (no --grafana) has made its images: the two Grafana folders, though the serving image shares their folder."""
    from msml.handin.missing import drop_items, grafana_missing, missing_report, not_taken, still_missing
    from msml.handin.names import (
        ALERTING_DIR,
        GRAFANA_DIR,
        MEMBANGUN,
        MISSING_FILE,
        MLFLOW_ARTIFACTS,
        MLFLOW_DASHBOARD,
        MONITORING,
        PROMETHEUS_DIR,
        SERVING_IMAGE,
    )

    out, submission = tmp_path, tmp_path / "SMSML_student"
    listed = out / MISSING_FILE
    everything = not_taken(out, submission)  # what the export lists before the run
    listed.write_text(missing_report(everything))
    images = [  # the images' "file" entries as msml.handin.capture records them
        f"{MEMBANGUN}/{MLFLOW_DASHBOARD}",
        f"{MEMBANGUN}/{MLFLOW_ARTIFACTS}",
        f"{MONITORING}/{SERVING_IMAGE}",
        f"{MONITORING}/{PROMETHEUS_DIR}/1.monitoring_throughput.jpg",
    ]
    made = [f"{submission.name}/{file}" for file in images]  # as msml.handin.run passes them
    drop_items(listed, made)
    left = still_missing(everything, made)
    assert left == grafana_missing(out, submission)
    assert listed.read_text() == missing_report(left)

    # the MLflow dashboard alone: the artifacts image beside it stays listed
    assert still_missing(everything, made[:1]) == everything[1:]

    # then `msml evidence grafana` makes both Grafana folders: nothing is left and the list goes
    drop_items(listed, [f"{submission.name}/{MONITORING}/{d}/" for d in (GRAFANA_DIR, ALERTING_DIR)])
    assert not listed.exists()
