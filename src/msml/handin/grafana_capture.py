"""The Grafana images of `msml evidence grafana`: panels (taken while the system is healthy, before the outage),
then each alert's rule page and its notification.

A notification is shown as Grafana's own page of the contact point (its last delivery) beside the payload the
receiver got: the first firing alert of the alert's notification, its labels and annotations (the full JSON of a
drift notification is ~10,000 px tall, one entry per feature).
"""

from __future__ import annotations

import json
from pathlib import Path

from msml.monitoring.definitions import alert
from msml.monitoring.render import CONTACT_POINT, DASHBOARD_UID, grafana_rule_uid, panel_ids

# Ready once the panel drew its data (uPlot canvas for graphs and heatmaps, a value for stats) and stopped loading.
PANEL_READY = (
    "() => { if (document.querySelector('[aria-label=\"Panel loading bar\"]')) return false;"
    " const body = document.body.innerText; if (body.includes('No data')) return false;"
    " return !!document.querySelector('canvas, [data-testid=\"data-testid panel content\"] span'); }"
)
PAYLOAD_WIDTH = 900


def capture_panels(grafana_url: str, panels_dir: Path, minutes: int = 30, keys: list[str] | None = None) -> list[Path]:
    """One image per dashboard panel (those in `keys`, default all) into `panels_dir`, numbered as the course does."""
    from msml.handin.evidence import Browser, numbered
    from msml.monitoring.definitions import PANELS

    for stale in panels_dir.glob("*.jpg"):
        stale.unlink()
    ids = panel_ids()
    written = []
    with Browser(timeout=90) as browser:
        chosen = [p for p in PANELS if keys is None or p.key in keys]
        for panel, name in zip(chosen, numbered([f"monitoring_{p.key}" for p in chosen]), strict=True):
            url = f"{grafana_url}/d-solo/{DASHBOARD_UID}?orgId=1&panelId={ids[panel.key]}&from=now-{minutes}m&to=now"
            # a stat panel is one value on one colour by design: its readiness (a drawn value) is the check
            written.append(
                browser.capture(
                    url, panels_dir / name, PANEL_READY, f"Grafana panel {panel.key}", check_blank=panel.kind != "stat"
                )
            )
    return written


def payload_summary(record: dict) -> str:
    """The delivered notification in a few lines: status, receiver, and the first alert's labels and annotations."""
    payload = record["payload"]
    alerts = payload.get("alerts", [])
    first = alerts[0] if alerts else {}
    summary = {
        "status": payload.get("status"),
        "receiver": payload.get("receiver"),
        "alerts": f"{len(alerts)} ({sum(a.get('status') == 'firing' for a in alerts)} firing)",
        "first alert": {
            "labels": first.get("labels", {}),
            "annotations": first.get("annotations", {}),
            "startsAt": first.get("startsAt"),
        },
    }
    return f"POST {record['path']}\n" + json.dumps(summary, indent=2)


def side_by_side(page: Path, payload: Path, out: Path) -> Path:
    """Grafana's page and the payload image, left and right, as one JPG."""
    from PIL import Image

    with Image.open(page) as left, Image.open(payload) as right:
        height = max(left.height, right.height)
        image = Image.new("RGB", (left.width + right.width, height), "white")
        image.paste(left, (0, 0))
        image.paste(right, (left.width, 0))
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out, "JPEG", quality=90)
    return out


def first_firing(notifications: Path, name: str) -> dict | None:
    """The first firing notification Grafana delivered to the receiver for alert `name`."""
    from msml.handin.evidence import from_grafana
    from msml.monitoring.receiver import read_notifications

    for record in read_notifications(notifications):
        alerts = record.get("payload", {}).get("alerts", [])
        if (
            from_grafana(record)
            and record["payload"].get("status") == "firing"
            and any(a.get("labels", {}).get("alertname") == name for a in alerts)
        ):
            return record
    return None


def capture_alerts(grafana_url: str, alerting_dir: Path, notifications: Path, names) -> list[Path]:
    """Each alert's rule page (firing), then its notification: Grafana's contact point page beside the payload."""
    import tempfile

    from msml.handin.evidence import Browser, _text_ready, grafana_alert_stems, numbered, text_image

    for stale in alerting_dir.glob("*.jpg"):
        stale.unlink()
    files = iter(numbered(grafana_alert_stems([alert(n).key for n in names])))
    written = []
    with Browser(timeout=90) as browser, tempfile.TemporaryDirectory() as tmp:
        for name in names:
            a = alert(name)
            written.append(
                browser.capture(
                    f"{grafana_url}/alerting/grafana/{grafana_rule_uid(a)}/view",
                    alerting_dir / next(files),
                    _text_ready([a.name, "Firing"]),
                    f"Grafana rule {a.name}",
                )
            )
            record = first_firing(notifications, name)
            if record is None:
                from msml.handin.grafana import GrafanaError

                raise GrafanaError(f"no firing notification of {name} reached the receiver")
            page = browser.capture(
                f"{grafana_url}/alerting/notifications?search={CONTACT_POINT}",
                Path(tmp) / f"{a.key}-contact.jpg",
                _text_ready([CONTACT_POINT, "Last delivery"]),
                f"Grafana contact point {CONTACT_POINT}",
            )
            payload = text_image(
                payload_summary(record),
                Path(tmp) / f"{a.key}-payload.jpg",
                title=f"Delivered: {a.name}",
                width=PAYLOAD_WIDTH,
            )
            written.append(side_by_side(page, payload, alerting_dir / next(files)))
    return written
