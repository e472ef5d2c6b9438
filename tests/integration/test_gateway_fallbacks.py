"""The gateway with a misbehaving model server (a stand-in that answers 500, garbage, or too slowly)
and with no resolvable model: it answers quickly with 502/503 and a message, never hangs, and
still serves without model info or a drift reference."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from msml.contract import Contract
from msml.monitoring import metrics as M
from msml.serving.processes import stop_process
from tests.integration.serving_fixtures import parse_metrics, start_gateway

pytestmark = pytest.mark.slow


class FakeModelServer(BaseHTTPRequestHandler):
    """Answers /ping; /invocations as `mode` says: ok (probability 0.25 per row), error, garbage, slow."""

    mode = "ok"

    def log_message(self, *args):  # keep test output clean
        pass

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except BrokenPipeError:
            pass  # the gateway gave up first (the "slow" case): that is the point

    def do_GET(self):
        self._answer(200, b"\n") if self.path == "/ping" else self._answer(404, b"{}")

    def do_POST(self):
        rows = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["dataframe_split"]["data"]
        mode = type(self).mode
        if mode == "error":
            self._answer(500, b'{"error_code": "INTERNAL_ERROR", "message": "boom"}')
        elif mode == "garbage":
            self._answer(200, b"<html>not json</html>")
        elif mode == "short":
            self._answer(200, json.dumps({"predictions": [[0.75, 0.25]] * (len(rows) + 1)}).encode())
        else:
            if mode == "slow":
                time.sleep(3)
            self._answer(200, json.dumps({"predictions": [[0.75, 0.25]] * len(rows)}).encode())


@pytest.fixture(scope="module")
def fake_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeModelServer)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def gateway(fake_server, tmp_path_factory):
    work = tmp_path_factory.mktemp("gateway-fallbacks")
    # an empty tracking store and no model URI: the gateway must still serve
    proc, url = start_gateway(fake_server, f"sqlite:///{work / 'empty.db'}", work / "gateway.log",
                              "--model-uri", "", "--model-timeout", "0.5", "--probe-interval", "0.2")
    yield url, work / "gateway.log"
    stop_process(proc)


def valid_row(contract: Contract) -> dict:
    return {c.name: (c.values[0] if not c.is_numeric else c.min) for c in contract.columns}


@pytest.mark.parametrize("mode, status, words", [
    ("error", 502, "answered 500"),
    ("garbage", 502, "not understood"),
    ("short", 502, "2 predictions for 1 rows"),
    ("slow", 503, "did not answer in time"),
])
def test_model_server_failures_are_quick_502_or_503_with_a_message(gateway, mode, status, words):
    url, _ = gateway
    FakeModelServer.mode = mode
    try:
        start = time.perf_counter()
        resp = httpx.post(f"{url}/invocations", json={"rows": [valid_row(Contract.load())]}, timeout=10)
        elapsed = time.perf_counter() - start
    finally:
        FakeModelServer.mode = "ok"
    assert resp.status_code == status, resp.text
    assert words in resp.json()["error"]
    assert elapsed < 1.5  # the 0.5 s model timeout, never a hang
    errors = parse_metrics(httpx.get(f"{url}/metrics").text)
    assert sum(v for (name, _), v in errors.items() if name == M.MODEL_ERRORS) >= 1


def test_serves_without_model_info_or_drift_reference(gateway):
    url, log = gateway
    resp = httpx.post(f"{url}/invocations", json={"instances": [valid_row(Contract.load())]}, timeout=10)
    assert resp.status_code == 200 and resp.json()["predictions"] == [0.25]
    health = httpx.get(f"{url}/health").json()
    assert health["model"] is None and health["drift_reference"] is False and health["model_up"] is True
    metrics = parse_metrics(httpx.get(f"{url}/metrics").text)
    names = {name for name, _ in metrics}
    assert M.DRIFT_PSI not in names
    assert [labels for name, labels in metrics if name == M.MODEL_INFO + "_info"] in ([], [()])  # no model labels
    assert M.ROWS_SCORED in names
    assert "drift" in log.read_text()  # said clearly in the log
