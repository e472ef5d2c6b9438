"""Live alert proof: stop the model server and the alerts fire and reach the webhook receiver; restart it and
the resolved notification arrives.

Model server, gateway, Prometheus, Alertmanager and the receiver all run for real on 127.0.0.1 (test timing:
1 s scrapes and evaluations, `for: 2s`, Alertmanager group_wait/interval 1 s).
"""

from __future__ import annotations

import time

import pytest

from msml.evidence import notification_images
from msml.monitoring.definitions import alert
from msml.monitoring.receiver import read_notifications
from tests.integration.test_monitoring_live import drive_traffic, live_system, prom_query, wait_until

pytestmark = pytest.mark.slow
NOTIFY_WITHIN = 60.0


def _notified(system, name: str, status: str, since: float) -> list[dict]:
    return [r for r in read_notifications(system.stack.notifications)
            if r["received_at"] >= since and r["payload"].get("status") == status
            and any(a["labels"].get("alertname") == name and a["status"] == status for a in r["payload"]["alerts"])]


def _firing_in_prometheus(system, name: str) -> bool:
    return bool(prom_query(system.stack.prometheus_url, f'ALERTS{{alertname="{name}",alertstate="firing"}}'))


@pytest.fixture(scope="module")
def system(tmp_path_factory, processed, contract):
    with live_system(tmp_path_factory.mktemp("alerts-live"), processed, contract) as live:
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
    wait_until(lambda: _notified(system, down.name, "firing", stopped_at), NOTIFY_WITHIN, 0.5,
               f"{down.name} firing notification at the receiver")
    assert _firing_in_prometheus(system, down.name)
    fired = _notified(system, down.name, "firing", stopped_at)[0]
    assert fired["payload"]["alerts"][0]["labels"]["severity"] == down.severity
    assert fired["payload"]["alerts"][0]["annotations"]["summary"] == down.summary
    assert fired["received_at"] - stopped_at < NOTIFY_WITHIN
    wait_until(lambda: _notified(system, errors.name, "firing", stopped_at), NOTIFY_WITHIN, 0.5,
               f"{errors.name} firing notification at the receiver")

    restarted_at = time.time()
    system.model_server.start(wait=180)
    drive_traffic(system, seconds=2)  # served again: 200s
    wait_until(lambda: _notified(system, down.name, "resolved", restarted_at), NOTIFY_WITHIN, 0.5,
               f"{down.name} resolved notification at the receiver")
    assert not _firing_in_prometheus(system, down.name)

    # the course's notification evidence: the received payloads rendered to an image
    images = notification_images(system.stack.notifications, tmp_path)
    assert tmp_path / f"2.notifikasi_{down.key}.jpg" in images
    assert tmp_path / f"2.notifikasi_{errors.key}.jpg" in images
    assert all(p.stat().st_size > 10_000 for p in images)
