"""Evidence captures: the Debian Chromium (through Playwright) waits for a page's content, not for a time; the
blank-capture check rejects blank and half-drawn images and accepts real ones; file names are numbered as the course
writes them and derived from the definitions.

The pages are served for real by a local HTTP server; one of them draws its "graph" only after a data fetch.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image, ImageDraw

from msml.handin.evidence import (
    Browser,
    CaptureError,
    blank_bands,
    check_capture,
    grafana_alert_stems,
    grafana_panel_stems,
    numbered,
    prometheus_stems,
)
from msml.monitoring.definitions import ALERTS, PANELS

# A page like Prometheus's graph: the plot appears only once /data answered (slowly, 1.5 s).
LATE_PAGE = b"""<html><body style="margin:0;font-family:sans-serif">
<div style="background:#333;color:#fff;padding:16px">Graph page</div><div id="plot"></div>
<script>
fetch('/data').then(r => r.json()).then(points => {
  const svg = ['<svg width="1380" height="700" style="border:1px solid #999">'];
  for (let i = 0; i < 20; i++) svg.push(`<line x1="0" x2="1380" y1="${i*35}" y2="${i*35}" stroke="#ccc"/>`);
  svg.push('<polyline class="path" fill="none" stroke="#c00" stroke-width="3" points="' +
           points.map((y, x) => `${x * 60},${700 - y * 6}`).join(' ') + '"/></svg>');
  svg.push('<p class="legend">up{job="gateway"}</p>');
  document.getElementById('plot').innerHTML = svg.join('');
});
</script></body></html>"""
READY = "() => !!document.querySelector('#plot .path') && !!document.querySelector('.legend')"


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/data":
            threading.Event().wait(1.5)
            body, kind = b"[10,40,35,80,60,90,70,100,95,60,40,20,50,75,85,90,60,30,45,70,100,80,60]", "application/json"
        elif self.path == "/never":
            body, kind = b"<html><body><div>Loading...</div></body></html>", "text/html"
        else:
            body, kind = LATE_PAGE, "text/html"
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def site():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def browser():
    with Browser(timeout=20) as b:
        yield b


def test_capture_waits_for_the_data_and_is_not_blank(site, browser, tmp_path):
    shot = browser.capture(f"{site}/graph", tmp_path / "1.monitoring_x.jpg", READY, "late graph")
    with Image.open(shot) as image:
        assert image.format == "JPEG" and image.width == 1400
        assert 700 < image.height <= 900  # cut to the content, not the whole viewport
        assert blank_bands(image) == []
        # the plot's red line was drawn: it arrived 1.5 s after the page loaded
        assert any(r > 150 and g < 80 and b < 80 for r, g, b in image.convert("RGB").get_flattened_data())


def test_capture_of_a_page_that_never_shows_its_content_fails_and_writes_nothing(site, browser, tmp_path):
    with pytest.raises(CaptureError, match="did not show its content"):
        browser.capture(f"{site}/never", tmp_path / "x.jpg", READY, "never-loading page", timeout=3)
    assert not (tmp_path / "x.jpg").exists()


def _save(image, path):
    image.save(path, "JPEG", quality=90)
    return path


def test_blank_and_half_drawn_captures_are_rejected(tmp_path):
    blank = _save(Image.new("RGB", (1400, 900), "white"), tmp_path / "blank.jpg")
    with pytest.raises(CaptureError, match="blank capture"):
        check_capture(blank)
    # the old Prometheus rules capture: white page, the nav bar drawn half-way down, nothing else
    half = Image.new("RGB", (1400, 1400), "white")
    ImageDraw.Draw(half).rectangle((0, 650, 1400, 705), fill=(52, 58, 64))
    half_path = _save(half, tmp_path / "half.jpg")
    assert blank_bands(Image.open(half_path))
    with pytest.raises(CaptureError):
        check_capture(half_path)
    # a graph area left empty under a drawn header
    empty_graph = Image.new("RGB", (1400, 900), "white")
    draw = ImageDraw.Draw(empty_graph)
    for y in range(0, 300, 20):
        draw.text((20, y), "Prometheus  Alerts  Graph  Status  Help  " * 4, fill="black")
    with pytest.raises(CaptureError):
        check_capture(_save(empty_graph, tmp_path / "empty_graph.jpg"))


def test_names_are_numbered_from_one_and_derived_from_the_definitions():
    prom = numbered(prometheus_stems())
    assert prom[: len(PANELS)] == [f"{i}.monitoring_{p.key}.jpg" for i, p in enumerate(PANELS, start=1)]
    assert [n.split(".", 1)[0] for n in prom] == [str(i) for i in range(1, len(prom) + 1)]
    assert len(numbered(grafana_panel_stems())) >= 10
    keys = [a.key for a in ALERTS[:2]]
    assert numbered(grafana_alert_stems(keys)) == [
        f"1.rules_{keys[0]}.jpg",
        f"2.notifikasi_{keys[0]}.jpg",
        f"3.rules_{keys[1]}.jpg",
        f"4.notifikasi_{keys[1]}.jpg",
    ]
