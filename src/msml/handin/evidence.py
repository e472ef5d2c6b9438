"""Evidence: screenshots of the running system, taken with the Debian Chromium driven by Playwright, saved as JPG.

Each capture waits for the page's own content (a JavaScript condition that holds once the data is drawn: a graph
path, a rule's name, a table row), never for a fixed time; the image is cut to the content's height, then checked:
`blank_bands()` rejects a capture with a mostly uniform band (an empty graph area, a page drawn half-way down).

File names follow the course (`msml.handin.names`), numbered 1., 2., 3. ... within each folder and derived from
`msml.monitoring.definitions`: `prometheus_stems()` for `4.bukti monitoring Prometheus/` (one graph per dashboard
panel, then the Prometheus rules and alerts pages and Alertmanager's notifications) and `grafana_panel_stems()` /
`grafana_alert_stems()` for the Grafana folders (`msml.handin.grafana` fills those).

Its length (~450 lines): one browser driver, its wait conditions and the blank-band check serve every capture
(MLflow, Prometheus, the Grafana pages), and the conditions are only readable next to the pages they wait for.
"""

from __future__ import annotations

import json
import shutil
import textwrap
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from msml.errors import CaptureError

# the course's names (re-exported: evidence callers read them here too)
from msml.handin.names import (  # noqa: F401
    MLFLOW_ARTIFACTS,
    MLFLOW_DASHBOARD,
    grafana_alert_stems,
    grafana_panel_stems,
    numbered,
    prometheus_stems,
)
from msml.monitoring.definitions import GATEWAY_JOB

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
CHROMIUM_FLAGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
)
BLOCKED_PORTS = (5060, 5061)  # Chromium refuses these (SIP) with ERR_UNSAFE_PORT
WIDTH, HEIGHT = 1400, 900
# The lowest bottom edge of anything visible that carries content: the capture is cut there (no empty tail).
CONTENT_BOTTOM_JS = """() => {
  let bottom = 0;
  for (const el of document.querySelectorAll('body *')) {
    const r = el.getBoundingClientRect();
    if (!r.width || !r.height) continue;
    const style = getComputedStyle(el);
    if (style.visibility === 'hidden' || style.display === 'none') continue;
    const leaf = ['svg', 'canvas', 'img', 'input', 'textarea', 'button', 'table'].includes(el.tagName.toLowerCase())
      || [...el.childNodes].some(n => n.nodeType === 3 && n.textContent.trim());
    if (leaf) bottom = Math.max(bottom, r.bottom + window.scrollY);
  }
  return Math.ceil(bottom);
}"""


def chromium() -> str:
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    raise CaptureError("headless Chromium is not installed (run scripts/install-system-deps.sh)")


# --- the blank-capture check --------------------------------------------------------------------------------


def blank_bands(image, bands: int = 6, share: float = 0.998, tolerance: int = 12) -> list[int]:
    """Indexes of the horizontal bands (top to bottom) in which `share` of the pixels are one grey level (±tolerance).

    A page with content has text, lines or a plot in every band of its content-cut capture; a blank capture,
    an empty graph area or a page drawn half-way down leaves at least one band uniform.
    """
    grey = image.convert("L")
    width, height = grey.size
    bands = max(1, min(bands, height // 150))  # a band of a short image still holds a line of text or a row
    step = max(1, height // bands)
    found = []
    for i in range(bands):
        band = grey.crop((0, i * step, width, height if i == bands - 1 else (i + 1) * step))
        histogram = band.histogram()
        total = sum(histogram)
        peak = max(range(256), key=histogram.__getitem__)
        near = sum(histogram[max(0, peak - tolerance) : peak + tolerance + 1])
        if total and near / total >= share:
            found.append(i)
    return found


def check_capture(path: str | Path) -> Path:
    """Raise CaptureError when the image at `path` is blank or has a blank band; return the path."""
    from PIL import Image

    path = Path(path)
    with Image.open(path) as image:
        blank = blank_bands(image)
        size = image.size
    if blank:
        raise CaptureError(f"{path.name}: blank capture ({size[0]}x{size[1]}, uniform horizontal band(s) {blank})")
    return path


# --- capturing pages ----------------------------------------------------------------------------------------


class Browser:
    """One headless Chromium for a batch of captures (the Debian binary through Playwright's executable_path)."""

    def __init__(self, timeout: float = 60.0) -> None:
        self.timeout = timeout

    def __enter__(self) -> Browser:
        from playwright.sync_api import sync_playwright

        self._playwright = sync_playwright().start()
        try:
            self._browser = self._playwright.chromium.launch(executable_path=chromium(), args=list(CHROMIUM_FLAGS))
        except Exception:
            self._playwright.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._browser.close()
        self._playwright.stop()

    def capture(
        self,
        url: str,
        path: str | Path,
        ready: str,
        what: str,
        width: int = WIDTH,
        height: int = HEIGHT,
        full: bool = False,
        timeout: float | None = None,
        prepare=None,
        fit: str | None = None,
        check_blank: bool = True,
    ) -> Path:
        """Open `url`, wait until the JavaScript expression `ready` is true, save the content as a JPG at `path`.

        `full`: the whole page down to its content (a list of rules); else at most one `height` viewport.
        `timeout`: seconds to wait for the content (default: the browser's). `prepare(page)` acts on the loaded
        page (e.g. expands nested runs); `fit` is a JavaScript expression giving the height the content needs: the
        viewport shrinks to it, so a page whose footer is pinned to the window's bottom leaves no empty gap.
        `check_blank=False` for a page whose content is one large uniform area by design (a Grafana stat panel sizes
        its value to the panel and fills the rest with one colour): `ready` alone proves it drew.
        """
        from PIL import Image
        from playwright.sync_api import Error as PlaywrightError

        port = urllib.parse.urlsplit(url).port
        if port in BLOCKED_PORTS:
            raise CaptureError(f"Chromium refuses port {port} ({url}); serve it on another port")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        wait_ms = (timeout or self.timeout) * 1000
        page = self._browser.new_page(viewport={"width": width, "height": height})
        try:
            try:
                page.goto(url, wait_until="domcontentloaded", timeout=wait_ms)
                page.wait_for_function(ready, timeout=wait_ms)
                page.wait_for_load_state("networkidle", timeout=wait_ms)
                if prepare is not None:
                    prepare(page)
                    page.wait_for_function(ready, timeout=wait_ms)
                    page.wait_for_load_state("networkidle", timeout=wait_ms)
                # the layout settled: the content's bottom edge is the same at two polls 0.5 s apart
                page.wait_for_function(
                    f"() => {{ const b = ({CONTENT_BOTTOM_JS})(); const same = window.__msmlBottom"
                    f" === b; window.__msmlBottom = b; return same; }}",
                    polling=500,
                    timeout=wait_ms,
                )
                if fit is not None:
                    page.set_viewport_size({"width": width, "height": max(300, min(height, int(page.evaluate(fit))))})
                    page.wait_for_timeout(300)  # one re-layout after the resize (not a data wait)
            except PlaywrightError as exc:
                first = str(exc).strip().splitlines()[0]
                raise CaptureError(f"{what}: the page did not show its content ({url}): {first}") from None
            bottom = max(200, min(page.evaluate(CONTENT_BOTTOM_JS) + 16, 20000 if full else height))
            if full and bottom > height:
                # a window as tall as the content, scrolled to the top: a fixed nav bar stays at the top (a
                # full-page screenshot of a scrolled page draws it half-way down)
                page.evaluate(
                    "() => { document.activeElement && document.activeElement.blur(); window.scrollTo(0, 0); }"
                )
                page.set_viewport_size({"width": width, "height": bottom})
                page.wait_for_function(
                    f"() => ({CONTENT_BOTTOM_JS})() + 16 >= {bottom} && window.scrollY === 0", timeout=wait_ms
                )
            png = page.screenshot(clip={"x": 0, "y": 0, "width": width, "height": bottom})
        finally:
            page.close()
        from io import BytesIO

        with Image.open(BytesIO(png)) as image:
            image.convert("RGB").save(path, "JPEG", quality=90)
        if not check_blank:
            return path
        try:
            return check_capture(path)
        except CaptureError as exc:
            path.unlink(missing_ok=True)
            raise CaptureError(f"{what} ({url}): {exc}") from None


def screenshot(url: str, path: str | Path, ready: str, what: str, **kw) -> Path:
    """One capture in its own browser (see `Browser.capture`)."""
    with Browser() as browser:
        return browser.capture(url, path, ready, what, **kw)


def text_image(text: str, path: str | Path, title: str = "", width: int = WIDTH) -> Path:
    """Render monospaced text (e.g. a JSON payload) to a JPG, for evidence that is data, not a page."""
    from PIL import Image, ImageDraw, ImageFont

    try:
        font = ImageFont.truetype("DejaVuSansMono.ttf", 16)
        title_font = ImageFont.truetype("DejaVuSans-Bold.ttf", 20)
    except OSError:
        font = ImageFont.load_default(size=16)
        title_font = ImageFont.load_default(size=20)
    lines, columns = [], max(40, (width - 32) // 10)  # DejaVu Sans Mono at 16 px: ~10 px a character
    for raw in text.splitlines():
        lines.extend(textwrap.wrap(raw, width=columns, replace_whitespace=False, drop_whitespace=False) or [""])
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


# --- Prometheus ---------------------------------------------------------------------------------------------


def prometheus_graph_url(
    prometheus_url: str, exprs: list[str], range_input: str = "15m", classic: bool = True, end: float | None = None
) -> str:
    """The Prometheus graph page with one panel per expression (the classic UI where the React one is not built);
    `end` (epoch seconds) fixes the graph's right edge, else it is now."""
    params = {}
    for i, expr in enumerate(exprs):
        params.update({f"g{i}.expr": expr, f"g{i}.tab": "0", f"g{i}.range_input": range_input})
        if end is not None:
            params[f"g{i}.end_input"] = time.strftime("%Y-%m-%d %H:%M", time.gmtime(end))
            params[f"g{i}.moment_input"] = params[f"g{i}.end_input"]
    page = "classic/graph" if classic else "graph"
    return f"{prometheus_url.rstrip('/')}/{page}?{urllib.parse.urlencode(params)}"


def has_react_ui(prometheus_url: str) -> bool:
    """Debian's Prometheus package ships only the classic UI: its /graph redirects to /classic/graph (or is a 404)."""
    try:
        with urllib.request.urlopen(f"{prometheus_url.rstrip('/')}/graph", timeout=5) as response:
            return "/classic/" not in response.geturl()
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return False
        raise


# Ready once every graph panel drew a line and its legend (classic: rickshaw SVG; React: flot canvas).
GRAPH_READY = (
    "() => { const n = document.querySelectorAll('.graph_wrapper, .panel .graph-chart').length;"
    " const drawn = document.querySelectorAll('.graph_area svg path.path').length"
    " + document.querySelectorAll('.graph-chart canvas.flot-base').length;"
    " const legend = [...document.querySelectorAll('.legend, .graph-legend')].every(l => l.textContent.trim());"
    " return n > 0 && drawn >= n && legend; }"
)


def _text_ready(words: list[str]) -> str:
    return f"() => {{ const t = document.body.innerText; return {json.dumps(words)}.every(w => t.includes(w)); }}"


def _alert_names(record: dict) -> set[str]:
    return {a.get("labels", {}).get("alertname", "") for a in record.get("payload", {}).get("alerts", [])}


def from_grafana(record: dict) -> bool:
    """Grafana's webhook payload carries `orgId`; Alertmanager's does not."""
    return "orgId" in record.get("payload", {})


def notification_text(records: list[dict]) -> str | None:
    """The first firing and first resolved notification of one alert, as text; None when none was firing."""
    chosen = [
        r
        for status in ("firing", "resolved")
        for r in [next((r for r in records if r["payload"].get("status") == status), None)]
        if r
    ]
    if not any(r["payload"].get("status") == "firing" for r in chosen):
        return None
    return "\n\n".join(
        f"POST {r['path']}  received_at={r['received_at']:.0f}\n" + json.dumps(r["payload"], indent=2) for r in chosen
    )


def notifications_by_alert(notifications: Path, grafana: bool) -> dict[str, str]:
    """{alert key: notification text} for each alert whose firing notification the receiver recorded, from
    Grafana (`grafana`) or from Alertmanager."""
    from msml.monitoring.definitions import ALERTS
    from msml.monitoring.receiver import read_notifications

    records = [r for r in read_notifications(notifications) if from_grafana(r) == grafana]
    found = {}
    for alert in ALERTS:
        text = notification_text([r for r in records if alert.name in _alert_names(r)])
        if text:
            found[alert.key] = text
    return found


def prometheus_evidence(
    out: str | Path,
    prometheus_url: str,
    notifications: str | Path | None = None,
    panels: list[str] | None = None,
    range_input: str = "15m",
    end: float | None = None,
    alert_names: list[str] | None = None,
    job: str = GATEWAY_JOB,
) -> list[Path]:
    """`out/<n>.monitoring_<panel>.jpg` (a graph of each panel's queries), `<n>.rules_prometheus.jpg`,
    `<n>.alerts_prometheus.jpg` and `<n>.notifikasi_alertmanager_<alert>.jpg`, numbered 1., 2., ... in that order.

    `panels` limits the panels captured (default: all). A panel whose queries return no data cannot be drawn:
    CaptureError names it. `range_input` and `end` fit the graphs' time range; `alert_names` are the rules the
    rules and alerts pages must show (default: every alert of the definitions); `job` the scrape job(s) graphed.
    """
    from msml.monitoring.definitions import ALERTS, PANELS, promql

    out = Path(out)
    texts = notifications_by_alert(Path(notifications), grafana=False) if notifications else {}
    classic = not has_react_ui(prometheus_url)
    base = prometheus_url.rstrip("/") + ("/classic" if classic else "")
    chosen = [p for p in PANELS if panels is None or p.key in panels]
    stems = [f"monitoring_{p.key}" for p in chosen] + prometheus_stems(list(texts))[len(PANELS) :]
    names = iter(numbered(stems))
    written = []
    with Browser() as browser:
        for panel in chosen:
            exprs = [promql(q.expr, job=job) for q in panel.queries]
            url = prometheus_graph_url(prometheus_url, exprs, range_input=range_input, classic=classic, end=end)
            written.append(
                browser.capture(url, out / next(names), GRAPH_READY, f"Prometheus graph of {panel.key}", full=True)
            )
        alert_names = alert_names or [a.name for a in ALERTS]
        written.append(
            browser.capture(
                f"{base}/rules", out / next(names), _text_ready(alert_names), "Prometheus rules page", full=True
            )
        )
        written.append(
            browser.capture(
                f"{base}/alerts", out / next(names), _text_ready(alert_names), "Prometheus alerts page", full=True
            )
        )
    for key, text in texts.items():
        name = next(a.name for a in ALERTS if a.key == key)
        written.append(text_image(text, out / next(names), title=f"Alertmanager notifications received for {name}"))
    return written


# --- MLflow UI (Kriteria 2: screenshoot_dashboard.jpg, screenshoot_artifak.jpg) ----------------------


# The runs table's last row, plus the "N matching runs" footer MLflow pins to the window's bottom.
RUNS_FIT = (
    "() => Math.max(0, ...[...document.querySelectorAll('.ag-row')].map(r => r.getBoundingClientRect().bottom)) + 80"
)


def _expand_runs(page) -> None:
    """Expand each parent run (a tuning run and its trials) in MLflow's runs table."""
    buttons = page.locator('.ag-row [col-id="attributes.`Run Name`"] button')
    for i in range(buttons.count()):
        buttons.nth(i).click()


def mlflow_evidence(settings, out: str | Path, mlflow_url: str | None = None) -> list[Path]:
    """Screenshot the MLflow UI: the experiment's runs page and the champion run's artifacts page.

    Uses `mlflow_url` when given (a server already showing the settings' store); otherwise starts
    `mlflow server` on a free loopback port over the settings' store and stops it afterwards.
    """
    import socket

    from mlflow import MlflowClient

    from msml.ops.processes import spawn, stop_process, wait_ready
    from msml.tracking.client import server_command, setup_tracking
    from msml.tracking.registry import CHAMPION

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
        client = MlflowClient()
        run_name = client.get_run(champion.run_id).info.run_name
        artifacts = [a.path.rsplit("/", 1)[-1] for a in client.list_artifacts(champion.run_id)][:6]
        with Browser(timeout=90) as browser:
            # ready: the runs table lists the champion's run (its nested trials expanded); the artifact tree lists
            # the run's top-level artifacts
            return [
                browser.capture(
                    f"{base}/#/experiments/{experiment_id}",
                    out / MLFLOW_DASHBOARD,
                    _text_ready([run_name]),
                    "MLflow runs page",
                    prepare=_expand_runs,
                    fit=RUNS_FIT,
                ),
                browser.capture(
                    f"{base}/#/experiments/{experiment_id}/runs/{champion.run_id}/artifacts",
                    out / MLFLOW_ARTIFACTS,
                    _text_ready([*artifacts, "MLflow Model"]),
                    "MLflow artifacts page",
                ),
            ]
    finally:
        if proc is not None:
            stop_process(proc)
