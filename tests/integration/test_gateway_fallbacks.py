"""The real gateway with a misbehaving model server (a stand-in that answers 500, garbage, truncated, huge or
too slowly), with hostile clients (huge error lists, deep nesting, disconnects, forged feedback) and with
no resolvable model: every answer is a quick JSON 4xx/5xx of bounded size, upstream text never leaks,
nothing hangs, and the gateway still serves without model info or a drift reference."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import BinaryIO
from urllib.parse import urlparse

import httpx
import pytest

from msml.data.contract import Contract
from msml.monitoring import metrics as M
from msml.ops.processes import stop_process
from tests.integration.serving_fixtures import parse_metrics, start_gateway

pytestmark = [pytest.mark.slow, pytest.mark.timing]  # run last (tests/conftest.py)

UPSTREAM_SECRET = "Traceback-SECRET-upstream-text"
TOKEN = "test-feedback-token"
MAX_ANSWER = 64 * 1024


class FakeModelServer(BaseHTTPRequestHandler):
    """Answers /ping; /invocations as `mode` says (ok: probability 0.25 per row). Counts the rows it scored."""

    mode = "ok"
    rows_seen = 0

    def log_message(self, *args):  # keep test output clean
        pass

    def _answer(self, status: int, body: bytes, length: int | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the gateway gave up first: the point
            self.wfile.write(body)

    def do_GET(self):
        self._answer(200, b"\n") if self.path == "/ping" else self._answer(404, b"{}")

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        # the gateway's two upstream formats (Upstream.body): columnar inputs, or dataframe_split
        rows = body["dataframe_split"]["data"] if "dataframe_split" in body else next(iter(body["inputs"].values()))
        type(self).rows_seen += len(rows)
        mode = type(self).mode
        ok = json.dumps({"predictions": [[0.75, 0.25]] * len(rows)}).encode()
        if mode == "error":
            self._answer(500, json.dumps({"error_code": "INTERNAL_ERROR", "message": UPSTREAM_SECRET}).encode())
        elif mode == "garbage":
            self._answer(200, f"<html>{UPSTREAM_SECRET}</html>".encode())
        elif mode == "short":
            self._answer(200, json.dumps({"predictions": [[0.75, 0.25]] * (len(rows) + 1)}).encode())
        elif mode == "truncated":
            self._answer(200, ok[: len(ok) // 2], length=len(ok))
            self.close_connection = True
        elif mode == "huge":
            self._answer(200, b" " * 2_000_000 + ok)  # over the gateway's 4 KB × its batch rows (128)
        else:
            if mode == "slow":
                time.sleep(3)
            self._answer(200, ok)


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
    proc, url = start_gateway(
        fake_server,
        f"sqlite:///{work / 'empty.db'}",
        work / "gateway.log",
        "--model-uri",
        "",
        "--model-timeout",
        "0.5",
        "--probe-interval",
        "0.2",
        "--max-queue-ms",
        "100",
        env={"MSML_FEEDBACK_TOKEN": TOKEN},
    )
    yield url, work / "gateway.log"
    stop_process(proc)


@pytest.fixture
def mode():
    def set_mode(m: str) -> None:
        FakeModelServer.mode = m

    yield set_mode
    FakeModelServer.mode = "ok"


def valid_row(contract: Contract) -> dict:
    return {c.name: (c.values[0] if not c.is_numeric else c.min) for c in contract.columns}


def metric(url: str, name: str, **labels) -> float:
    return parse_metrics(httpx.get(f"{url}/metrics").text).get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.mark.parametrize(
    "kind, status, words, counted",
    [
        ("error", 502, "answered 500", "http_5xx"),
        ("garbage", 502, "not understood", "bad_response"),
        ("short", 502, "2 predictions for 1 rows", "bad_response"),
        ("truncated", 502, "malformed answer", "transport"),
        ("huge", 502, "malformed answer", "transport"),
        ("slow", 504, "in time|deadline", "timeout"),
    ],
)
def test_model_server_failures_are_quick_502_or_504_without_upstream_text(gateway, mode, kind, status, words, counted):
    url, log = gateway
    before = metric(url, M.MODEL_ERRORS, kind=counted)
    mode(kind)
    start = time.perf_counter()
    resp = httpx.post(f"{url}/invocations", json={"rows": [valid_row(Contract.load())]}, timeout=10)
    elapsed = time.perf_counter() - start
    assert resp.status_code == status, resp.text
    assert re.search(words, resp.json()["error"]) and resp.json()["request_id"]
    assert UPSTREAM_SECRET not in resp.text and "html" not in resp.text
    assert elapsed < 1.5  # the 0.5 s deadline, never a hang
    wait = time.monotonic() + 1  # a timeout is counted when the model call gives up, a moment after the answer
    while metric(url, M.MODEL_ERRORS, kind=counted) == before and time.monotonic() < wait:
        time.sleep(0.05)
    assert metric(url, M.MODEL_ERRORS, kind=counted) == before + 1
    if kind in ("error", "garbage"):
        assert UPSTREAM_SECRET in log.read_text()  # the operator still sees it


def test_queue_full_is_503_with_retry_after_and_counted(gateway, mode):
    url, _ = gateway
    body = {"rows": [valid_row(Contract.load())]}
    before = metric(url, M.REJECTED, reason="queue_full")
    mode("slow")  # the first request holds the model; the second waits in the queue past --max-queue-ms

    async def main():
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            first = asyncio.create_task(client.post("/invocations", json=body))
            await asyncio.sleep(0.1)
            second = asyncio.create_task(client.post("/invocations", json=body))
            await asyncio.sleep(0.2)
            start = time.perf_counter()
            third = await client.post("/invocations", json=body)
            elapsed = time.perf_counter() - start
            # a client that asks to close: the refusal says so and closes (it is written below ASGI)
            reader, writer = await asyncio.open_connection(u.hostname, u.port)
            raw = _post_bytes(json.dumps(body).encode()).replace(b"Host: x\r\n", b"Host: x\r\nConnection: close\r\n")
            writer.write(raw)
            closing = await asyncio.wait_for(reader.read(), 5)  # to EOF: the gateway closed it
            writer.close()
            # one connection kept alive: a request read whole (answered before parsing), then one whose body
            # comes in a later read (answered once its headers are parsed), then pipelined after a refusal
            reader, writer = await asyncio.open_connection(u.hostname, u.port)
            kept = []
            whole = _post_bytes(json.dumps(body).encode())
            for parts in ([whole], [whole[:-10], whole[-10:]], [whole * 2]):
                for i, part in enumerate(parts):
                    await asyncio.sleep(0.01 * (i > 0))  # a later read
                    writer.write(part)
                kept.append(await asyncio.wait_for(_read_answer(reader), 5))
            kept.append(await asyncio.wait_for(_read_answer(reader), 5))
            writer.close()
            return elapsed, third, closing, kept, await first, await second

    u = urlparse(url)
    elapsed, third, closing, kept, first, second = asyncio.run(main())
    assert third.status_code == 503 and third.headers["retry-after"] == "1", third.text
    assert third.json()["kind"] == "queue_full" and elapsed < 0.2
    head, _, answer = closing.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 ") and b"\r\nconnection: close" in head.lower(), closing
    assert json.loads(answer)["kind"] == "queue_full"
    assert [status for status, _ in kept] == [503] * 4, kept
    assert all(json.loads(answer)["kind"] == "queue_full" for _, answer in kept)
    assert first.status_code == second.status_code == 504  # each within its own deadline
    assert metric(url, M.REJECTED, reason="queue_full") == before + 6


def _post_bytes(body: bytes) -> bytes:
    return (
        b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


async def _read_answer(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One HTTP/1.1 answer with Content-Length: its status and body."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)[1])
    return int(head.split()[1]), await reader.readexactly(length)


def _status_and_body(reader: BinaryIO) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 answer with Content-Length from `reader` (`sock.makefile("rb")`; the socket has a timeout).
    One reader per socket: pipelined answers can arrive in one segment, and a second reader would not see
    what the first has buffered."""
    status = reader.readline()
    assert status, "connection closed before an answer"
    headers = {}
    while (line := reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        headers[name.lower()] = value.strip()
    return int(status.split()[1]), headers, reader.read(int(headers["content-length"]))


def test_a_backlog_built_while_the_gateway_could_not_run_is_refused_at_once(fake_server, tmp_path):
    """Connections and requests pile up in the kernel while the gateway cannot run (SIGSTOP: what a saturated
    CPU does to it for longer); once it runs again it refuses the backlog with quick 503s instead of serving
    every request seconds late, and then serves normally."""
    proc, url = start_gateway(
        fake_server,
        f"sqlite:///{tmp_path / 'empty.db'}",
        tmp_path / "gateway.log",
        "--model-uri",
        "",
        "--max-accept-queue",
        "8",
    )
    u = urlparse(url)
    body = json.dumps({"rows": [valid_row(Contract.load())]}).encode()
    clients, readers = [], []
    try:
        os.killpg(proc.pid, signal.SIGSTOP)
        try:
            for _ in range(50):  # the kernel completes each connection and buffers its request
                sock = socket.create_connection((u.hostname, u.port), timeout=10)
                sock.sendall(_post_bytes(body))
                clients.append(sock)
            time.sleep(0.3)
        finally:
            os.killpg(proc.pid, signal.SIGCONT)
        readers += [sock.makefile("rb") for sock in clients]
        answers = [_status_and_body(r) for r in readers]  # every one answered: none dropped or reset
        refused = [json.loads(b) for status, h, b in answers if status == 503 and h.get("retry-after") == "1"]
        assert {status for status, _, _ in answers} <= {200, 503}
        assert refused and all(r["kind"] == "queue_full" for r in refused), answers[:3]
        assert any("wait to be accepted" in r["error"] or "to be read" in r["error"] for r in refused)
        time.sleep(0.1)  # the backlog is gone: the next request is served
        assert httpx.post(f"{url}/invocations", json=json.loads(body), timeout=10).status_code == 200
        # a refusal is answered before its body is read (protocol.RefusingProtocol): the body is skipped and
        # the connection stays usable for the next request, one at a time or pipelined
        kept = [status for status, _, _ in answers].index(503)
        clients[kept].sendall(_post_bytes(body) * 2)
        assert [_status_and_body(readers[kept])[0] for _ in range(2)] == [200, 200]
    finally:
        for each in [*readers, *clients]:
            each.close()
        stop_process(proc)


def _raw(url: str, data: bytes, then_wait: float) -> None:
    """Send raw bytes to the gateway, wait, and close without reading the answer (a client that leaves)."""
    u = urlparse(url)
    with socket.create_connection((u.hostname, u.port)) as s:
        s.sendall(data)
        time.sleep(then_wait)


def test_a_client_that_leaves_is_counted_499_and_its_rows_never_reach_the_model(gateway, mode):
    url, _ = gateway
    body = json.dumps({"rows": [valid_row(Contract.load())]}).encode()
    request = _post_bytes(body)
    before = {s: metric(url, M.REQUESTS, endpoint="/invocations", status=s) for s in ("499", "500")}
    withdrawn = metric(url, M.REJECTED, reason="withdrawn")
    mode("slow")
    holder = threading.Thread(
        target=lambda: httpx.post(
            f"{url}/invocations", content=body, timeout=10, headers={"Content-Type": "application/json"}
        )
    )
    seen = FakeModelServer.rows_seen
    holder.start()  # keeps the model busy, so the next request waits in the queue
    wait = time.monotonic() + 2
    while FakeModelServer.rows_seen == seen and time.monotonic() < wait:
        time.sleep(0.01)
    seen += 1  # the holder's row
    _raw(url, request, then_wait=0.05)  # queued, then the client leaves
    time.sleep(0.02)  # the gateway has seen it leave (else its request would still count as queued)
    _raw(url, request[: -len(body) + 5], then_wait=0.05)  # leaves in the middle of its body
    holder.join()
    time.sleep(0.6)  # the held batch times out; the queue drains
    assert FakeModelServer.rows_seen == seen  # the queued request of the client that left was not sent
    assert metric(url, M.REQUESTS, endpoint="/invocations", status="499") == before["499"] + 2
    assert metric(url, M.REQUESTS, endpoint="/invocations", status="500") == before["500"]
    assert metric(url, M.REJECTED, reason="withdrawn") == withdrawn + 1


def test_every_admitted_request_leaves_the_count_in_hand(gateway):
    """Admission counts a request from before it is parsed until it is answered (`msml_requests_in_flight`),
    and while shedding bounds that count: a request it admitted that the parser then refused (a bad header
    name in a read framed as one whole request) must leave it too, as answered, refused and 4xx ones do."""
    url, _ = gateway
    body = json.dumps({"rows": [valid_row(Contract.load())]}).encode()
    assert httpx.post(f"{url}/invocations", content=body, headers={"Content-Type": "application/json"}).is_success
    assert httpx.post(f"{url}/invocations", json={"rows": [{}]}).status_code == 422
    u = urlparse(url)
    bad_header = _post_bytes(body).replace(b"Host: x", b"Ho\x01st: x")
    with socket.create_connection((u.hostname, u.port), timeout=5) as sock:
        sock.sendall(bad_header)
        status, _, _ = _status_and_body(sock.makefile("rb"))
    assert status == 400
    deadline = time.monotonic() + 2
    while (in_flight := metric(url, M.IN_FLIGHT)) and time.monotonic() < deadline:  # answers finish their sends
        time.sleep(0.05)
    assert in_flight == 0


def test_huge_error_lists_are_capped(gateway):
    url, _ = gateway
    contract = Contract.load()
    required = sum(not c.nullable for c in contract.columns)
    start = time.perf_counter()
    resp = httpx.post(f"{url}/invocations", json={"rows": [{}] * 1000}, timeout=10)
    assert time.perf_counter() - start < 1.0
    assert resp.status_code == 422 and len(resp.content) < MAX_ANSWER
    body = resp.json()
    assert body["error_count"] == 1000 * required and len(body["details"]) == 20
    assert body["details"][0] == {**body["details"][0], "row": 0, "reason": "missing"}
    long = "x" * 100_000
    resp = httpx.post(
        f"{url}/invocations",
        json={"rows": [{**valid_row(contract), "education": long[:500]}] * 1000, long: 1},
        timeout=10,
    )
    assert resp.status_code == 400 and len(resp.content) < 2000
    resp = httpx.post(f"{url}/invocations", json={"rows": [{**valid_row(contract), "education": long}] * 9}, timeout=10)
    assert resp.status_code == 422 and len(resp.content) < 4000 and resp.json()["error_count"] == 9


def test_feedback_lists_are_capped(gateway):
    url, _ = gateway
    auth = {"Authorization": f"Bearer {TOKEN}"}
    start = time.perf_counter()
    resp = httpx.post(f"{url}/feedback", json={"feedback": [{}] * 100_000}, headers=auth, timeout=10)
    assert time.perf_counter() - start < 1.0
    assert resp.status_code == 413 and "100000 feedback items" in resp.json()["error"]
    resp = httpx.post(f"{url}/feedback", json={"feedback": [{}] * 1000}, headers=auth, timeout=10)
    assert resp.status_code == 422 and len(resp.content) < MAX_ANSWER and resp.json()["error_count"] == 1000


@pytest.mark.parametrize("depth", [1000, 100_000])
def test_deep_nesting_is_a_json_4xx(gateway, depth):
    url, _ = gateway
    nested = "[" * depth + "]" * depth
    for body in (
        f'{{"rows": [{{"age": {nested}}}]}}',
        f'{{"feedback": [{{"id": "a", "label": {nested}}}]}}',
        f'{{"rows": [{nested}]}}',
    ):
        path = "/feedback" if "feedback" in body else "/invocations"
        resp = httpx.post(
            f"{url}{path}",
            content=body.encode(),
            timeout=10,
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"},
        )
        assert 400 <= resp.status_code < 500, (depth, body[:30], resp.status_code, resp.text[:200])
        assert resp.headers["content-type"] == "application/json" and resp.json()["error"]


def test_booleans_are_not_numbers(gateway):
    url, _ = gateway
    contract = Contract.load()
    ints = [c.name for c in contract.columns if c.is_numeric]
    resp = httpx.post(f"{url}/invocations", json={"rows": [{**valid_row(contract), ints[0]: True}]}, timeout=10)
    assert resp.status_code == 422
    assert resp.json()["details"][0] | {"field": ints[0], "reason": "wrong_type"} == resp.json()["details"][0]


def test_feedback_needs_the_token_and_ids_cannot_be_guessed(gateway):
    url, _ = gateway
    answer = httpx.post(f"{url}/invocations", json={"rows": [valid_row(Contract.load())] * 3}, timeout=10).json()
    ids = answer["ids"]
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids) and len(set(ids)) == 3  # 128 random bits each
    item = {"feedback": [{"id": ids[0], "label": 1}]}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN + "x"}):
        resp = httpx.post(f"{url}/feedback", json=item, headers=headers, timeout=10)
        assert resp.status_code == 401 and resp.json()["details"][0]["reason"] == "unauthorised"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    first = httpx.post(f"{url}/feedback", json=item, headers=auth, timeout=10).json()
    again = httpx.post(f"{url}/feedback", json=item, headers=auth, timeout=10).json()
    assert first["accepted"] == 1 and (again["accepted"], again["duplicate_count"], again["unknown_count"]) == (0, 1, 0)
    forged = [f"{ids[1][:-1]}{c}" for c in "0123456789abcdef" if f"{ids[1][:-1]}{c}" != ids[1]]
    resp = httpx.post(
        f"{url}/feedback", json={"feedback": [{"id": f, "label": 1} for f in forged]}, headers=auth, timeout=10
    ).json()
    assert resp["accepted"] == 0 and resp["unknown_count"] == 15


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
