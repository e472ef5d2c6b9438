"""Live alert proof: stop the model server and the alert fires and reaches the webhook receiver while the error
rate it causes is inhibited; restart it and the resolved notification arrives. Drifted traffic raises a drift
notification that names the feature.

Model server, gateway, Prometheus, Alertmanager and the receiver all run for real on 127.0.0.1 (test timing:
1 s scrapes and evaluations, `for: 2s`, Alertmanager group_wait/interval 1 s).
"""

from __future__ import annotations

import json
import time
import urllib.request

import pytest

from msml.handin.evidence import check_capture, notifications_by_alert, text_image
from msml.monitoring.definitions import alert
from msml.monitoring.receiver import read_notifications
from tests.integration.test_monitoring_live import drive_traffic, live_system, prom_query, wait_until

pytestmark = pytest.mark.slow
NOTIFY_WITHIN = 60.0


def _notified(system, name: str, status: str, since: float) -> list[dict]:
    return [
        r
        for r in read_notifications(system.stack.notifications)
        if r["received_at"] >= since
        and r["payload"].get("status") == status
        and any(a["labels"].get("alertname") == name and a["status"] == status for a in r["payload"]["alerts"])
    ]


def _firing_in_prometheus(system, name: str) -> bool:
    return bool(prom_query(system.stack.prometheus_url, f'ALERTS{{alertname="{name}",alertstate="firing"}}'))


def _am_state(system, name: str) -> str | None:
    with urllib.request.urlopen(f"{system.stack.alertmanager_url}/api/v2/alerts", timeout=5) as resp:
        states = [a["status"]["state"] for a in json.loads(resp.read()) if a["labels"].get("alertname") == name]
    return states[0] if states else None


@pytest.fixture(scope="module")
def system(tmp_path_factory, processed, contract, registered_model):
    with live_system(tmp_path_factory.mktemp("alerts-live"), processed, contract, registered_model) as live:
        drive_traffic(live, seconds=4)
        yield live


def test_model_server_down_fires_notifies_and_resolves(system, tmp_path):
    down = alert("ModelServerDown")
    errors = alert("HighErrorRate")
    assert not _firing_in_prometheus(system, down.name)

    stopped_at = time.time()
    system.model_server.stop()
    # requests while the model is down answer 503: the error-rate alert is driven by this traffic
    drive_traffic(system, seconds=4, check=False)
    wait_until(
        lambda: _notified(system, down.name, "firing", stopped_at),
        NOTIFY_WITHIN,
        0.5,
        f"{down.name} firing notification at the receiver",
    )
    assert _firing_in_prometheus(system, down.name)
    fired = _notified(system, down.name, "firing", stopped_at)[0]
    assert fired["payload"]["alerts"][0]["labels"]["severity"] == down.severity
    assert fired["payload"]["alerts"][0]["annotations"]["summary"] == down.summary
    assert fired["received_at"] - stopped_at < NOTIFY_WITHIN
    # the error rate the outage causes fires in Prometheus, but Alertmanager inhibits its notification
    wait_until(lambda: _firing_in_prometheus(system, errors.name), NOTIFY_WITHIN, 0.5, f"{errors.name} in Prometheus")
    wait_until(
        lambda: _am_state(system, errors.name) == "suppressed",
        NOTIFY_WITHIN,
        0.5,
        f"{errors.name} suppressed by Alertmanager",
    )
    assert not _notified(system, errors.name, "firing", stopped_at)

    restarted_at = time.time()
    system.model_server.start(wait=180)
    drive_traffic(system, seconds=2)  # served again: 200s
    wait_until(
        lambda: _notified(system, down.name, "resolved", restarted_at),
        NOTIFY_WITHIN,
        0.5,
        f"{down.name} resolved notification at the receiver",
    )
    assert not _firing_in_prometheus(system, down.name)

    # the course's notification evidence: the received payloads rendered to an image
    texts = notifications_by_alert(system.stack.notifications, grafana=False)
    assert down.key in texts
    check_capture(text_image(texts[down.key], tmp_path / f"notifikasi_{down.key}.jpg"))


def test_drifted_traffic_notifies_with_the_feature_and_its_value(system):
    drift = alert("DataDriftPSI")
    started = time.time()
    # only drifted rows: the window (the drift minimum) fills with them within the run
    drive_traffic(system, seconds=4, drift_share="1.0", invalid_share="0", batch_rows="50")
    wait_until(
        lambda: _notified(system, drift.name, "firing", started),
        NOTIFY_WITHIN,
        0.5,
        f"{drift.name} firing notification at the receiver",
    )
    alerts = [
        a
        for r in _notified(system, drift.name, "firing", started)
        for a in r["payload"]["alerts"]
        if a["labels"].get("alertname") == drift.name
    ]
    features = {a["labels"]["feature"] for a in alerts}
    assert {"education", "occupation"} <= features, features
    for a in alerts:
        text = a["annotations"]["description"]
        assert f"Feature {a['labels']['feature']} drifted" in text and f"> {drift.threshold:g}" in text, text
        assert a["annotations"]["runbook_url"].endswith("#datadriftpsi")
