"""Evidence: screenshots of the running system with headless Chromium, saved as JPG.

`screenshot()` is shared by every evidence command. `monitoring_evidence()` saves what the course's
monitoring folders want: a Prometheus graph per dashboard metric (`1.monitoring_<metric>`), each alert's
rule and state (`1.rules_<metric>`), the received webhook notifications rendered to an image
(`2.notifikasi_<metric>`), and, given a Grafana URL, the Grafana dashboard panels and alert rules.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import textwrap
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
)
BLOCKED_PORTS = (5060, 5061)  # Chromium refuses these (SIP) with ERR_UNSAFE_PORT


def chromium() -> str:
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    raise FileNotFoundError("headless Chromium is not installed (run scripts/install-system-deps.sh)")


def screenshot(url: str, path: str | Path, width: int = 1400, height: int = 900, budget_ms: int = 10000,
               timeout: float = 90.0) -> Path:
    """Load `url` in headless Chromium and save the viewport as a JPG at `path`."""
    from PIL import Image

    port = urllib.parse.urlsplit(url).port
    if port in BLOCKED_PORTS:
        raise RuntimeError(f"Chromium refuses port {port} ({url}); serve it on another port")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="msml-chromium-") as tmp:
        png = Path(tmp) / "shot.png"
        cmd = [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={Path(tmp) / 'profile'}",
               f"--window-size={width},{height}", f"--virtual-time-budget={budget_ms}",
               f"--screenshot={png}", url]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if not png.exists():
            raise RuntimeError(f"Chromium saved no screenshot of {url} (exit {result.returncode}): "
                               f"{result.stderr.strip()[-500:]}")
        with Image.open(png) as image:
            image.convert("RGB").save(path, "JPEG", quality=90)
    return path


def text_image(text: str, path: str | Path, title: str = "", width: int = 1400) -> Path:
    """Render monospaced text (e.g. a JSON payload) to a JPG, for evidence that is data, not a page."""
    from PIL import Image, ImageDraw, ImageFont

    try:
        font = ImageFont.truetype("DejaVuSansMono.ttf", 16)
        title_font = ImageFont.truetype("DejaVuSans-Bold.ttf", 20)
    except OSError:
        font = ImageFont.load_default(size=16)
        title_font = ImageFont.load_default(size=20)
    lines = []
    for raw in text.splitlines():
        lines.extend(textwrap.wrap(raw, width=140, replace_whitespace=False, drop_whitespace=False) or [""])
    line_h, top = 20, 50 if title else 16
    image = Image.new("RGB", (width, top + line_h * len(lines) + 20), "white")
    draw = ImageDraw.Draw(image)
    if title:
        draw.text((16, 14), title, fill="black", font=title_font)
    for i, line in enumerate(lines):
        draw.text((16, top + i * line_h), line, fill=(30, 30, 30), font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, "JPEG", quality=90)
    return path


def prometheus_graph_url(prometheus_url: str, exprs: list[str], range_input: str = "15m") -> str:
    """The Prometheus UI graph page with one panel per expression."""
    params = {}
    for i, expr in enumerate(exprs):
        params.update({f"g{i}.expr": expr, f"g{i}.tab": "0", f"g{i}.range_input": range_input})
    return f"{prometheus_url.rstrip('/')}/graph?{urllib.parse.urlencode(params)}"


def prometheus_page(prometheus_url: str, page: str) -> str:
    """`/<page>` of the React UI, or `/classic/<page>` where only the classic UI is built in (Debian's package)."""
    base = prometheus_url.rstrip("/")
    try:
        with urllib.request.urlopen(f"{base}/{page}", timeout=5):
            return f"{base}/{page}"
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return f"{base}/classic/{page}"
        raise


def _alert_names(record: dict) -> set[str]:
    return {a.get("labels", {}).get("alertname", "") for a in record.get("payload", {}).get("alerts", [])}


def notification_images(notifications: Path, out: Path) -> list[Path]:
    """`2.notifikasi_<metric>.jpg` per alert with a received notification: its firing and resolved payloads."""
    from msml.monitoring.definitions import ALERTS
    from msml.monitoring.receiver import read_notifications

    records = read_notifications(notifications)
    written = []
    for alert in ALERTS:
        mine = [r for r in records if alert.name in _alert_names(r)]
        if not mine:
            continue
        # the first firing and the first resolved notification tell the story; more would only repeat it
        chosen = [r for status in ("firing", "resolved")
                  for r in [next((r for r in mine if r["payload"].get("status") == status), None)] if r]
        text = "\n\n".join(f"POST {r['path']}  received_at={r['received_at']:.0f}\n"
                           + json.dumps(r["payload"], indent=2) for r in chosen)
        written.append(text_image(text, out / f"2.notifikasi_{alert.key}.jpg",
                                  title=f"Webhook notifications received for {alert.name}"))
    return written


def monitoring_evidence(out: str | Path, prometheus_url: str, notifications: str | Path | None = None,
                        grafana_url: str | None = None, panels: list[str] | None = None,
                        alerts: list[str] | None = None) -> list[Path]:
    """Save the monitoring screenshots under `out` ({prometheus,grafana,notifications}/...); return the paths.

    `panels` / `alerts` limit which panel and alert keys are captured (default: all).
    """
    from msml.monitoring.definitions import ALERTS, PANELS
    from msml.monitoring.render import DASHBOARD_UID, grafana_rule_uid, panel_ids

    out = Path(out)
    chosen_panels = [p for p in PANELS if panels is None or p.key in panels]
    chosen_alerts = [a for a in ALERTS if alerts is None or a.key in alerts]
    written = []
    prom = out / "prometheus"
    for panel in chosen_panels:
        url = prometheus_graph_url(prometheus_url, [q.expr for q in panel.queries])
        written.append(screenshot(url, prom / f"1.monitoring_{panel.key}.jpg"))
    for alert in chosen_alerts:
        url = prometheus_graph_url(prometheus_url, [alert.expr, f'ALERTS{{alertname="{alert.name}"}}'])
        written.append(screenshot(url, prom / f"1.rules_{alert.key}.jpg"))
    written.append(screenshot(prometheus_page(prometheus_url, "alerts"), prom / "alerts.jpg", height=1400))
    written.append(screenshot(prometheus_page(prometheus_url, "rules"), prom / "rules.jpg", height=1400))
    if notifications is not None:
        written.extend(notification_images(Path(notifications), out / "notifications"))
    if grafana_url:
        graf = grafana_url.rstrip("/")
        written.append(screenshot(f"{graf}/d/{DASHBOARD_UID}?orgId=1&kiosk", out / "grafana" / "dashboard.jpg",
                                  height=2400, budget_ms=20000))
        ids = panel_ids()
        for panel in chosen_panels:
            written.append(screenshot(f"{graf}/d-solo/{DASHBOARD_UID}?orgId=1&panelId={ids[panel.key]}",
                                      out / "grafana" / f"1.monitoring_{panel.key}.jpg", budget_ms=15000))
        written.append(screenshot(f"{graf}/alerting/list", out / "grafana" / "alert_rules.jpg", budget_ms=15000))
        for alert in chosen_alerts:
            written.append(screenshot(f"{graf}/alerting/grafana/{grafana_rule_uid(alert)}/view",
                                      out / "grafana" / f"1.rules_{alert.key}.jpg", budget_ms=15000))
    return written


# --- MLflow UI (Kriteria 2: screenshoot_dashboard.jpg, screenshoot_artifak.jpg) ----------------------

MLFLOW_DASHBOARD = "screenshoot_dashboard.jpg"
MLFLOW_ARTIFACTS = "screenshoot_artifak.jpg"


def mlflow_evidence(settings, out: str | Path, mlflow_url: str | None = None) -> list[Path]:
    """Screenshot the MLflow UI: the experiment's runs page and the champion run's artifacts page.

    Uses `mlflow_url` when given (a server already showing the settings' store); otherwise starts
    `mlflow server` on a free loopback port over the settings' store and stops it afterwards.
    """
    import socket

    from mlflow import MlflowClient

    from msml.registry import CHAMPION
    from msml.serving.processes import spawn, stop_process, wait_ready
    from msml.tracking import server_command, setup_tracking

    out = Path(out)
    experiment_id = setup_tracking(settings)
    champion = MlflowClient().get_model_version_by_alias(settings.model_name, CHAMPION)
    proc = None
    if mlflow_url is None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        log = settings.run_dir / "evidence-mlflow-ui.log"
        proc = spawn(server_command(settings.tracking_uri, settings.artifact_root, port), log)
        mlflow_url = f"http://127.0.0.1:{port}"
    try:
        if proc is not None:
            wait_ready(f"{mlflow_url}/health", timeout=90, log=log)
        base = mlflow_url.rstrip("/")
        return [
            screenshot(f"{base}/#/experiments/{experiment_id}", out / MLFLOW_DASHBOARD, budget_ms=15000),
            screenshot(f"{base}/#/experiments/{experiment_id}/runs/{champion.run_id}/artifacts",
                       out / MLFLOW_ARTIFACTS, budget_ms=15000),
        ]
    finally:
        if proc is not None:
            stop_process(proc)
