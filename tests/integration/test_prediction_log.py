"""The prediction log and persisted feedback for real: MLflow's scoring server, `msml gateway` processes and their
SQLite loop store. Rows logged equal rows answered under concurrent load (and survive the gateway's stop); a store
locked by another connection costs counted drops, never an answer or half a request; a label for a prediction made
before a restart is accepted after it and joins in `collect`."""

from __future__ import annotations

import asyncio
import sqlite3
import time

import httpx
import pytest

from msml.loop.collect import collect
from msml.loop.store import open_store
from msml.monitoring import metrics as M
from msml.ops.loadgen import frame_to_rows
from msml.ops.processes import stop_process
from msml.serving.model_server import ModelServer
from tests.integration.serving_fixtures import free_port, parse_metrics, start_gateway

pytestmark = pytest.mark.slow

REQUESTS = 240
CONCURRENCY = 24


@pytest.fixture(scope="module")
def model_server(registered_model, tmp_path_factory):
    log = tmp_path_factory.mktemp("model-server") / "model-server.log"
    server = ModelServer(registered_model.uri, registered_model.tracking_uri, free_port(), log)
    server.start(wait=180)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def rows(processed, contract):
    from msml.data.preprocessing import load_clean_splits

    _, test = load_clean_splits(processed, contract)
    return frame_to_rows(test[contract.features].head(2000)), test[contract.target].head(2000).astype(str).tolist()


def gateway(model_server, registered_model, folder, store_url, *extra):
    return start_gateway(
        model_server.url,
        registered_model.tracking_uri,
        folder / f"gateway-{time.monotonic_ns()}.log",
        "--model-uri",
        registered_model.uri,
        *extra,
        env={"MSML_LOOP_STORE": store_url},
    )


def metric(url: str, name: str) -> float:
    return parse_metrics(httpx.get(f"{url}/metrics", timeout=10).text).get((name, ()), 0.0)


def wait_until(check, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return check()


def test_rows_logged_equal_rows_answered_under_concurrent_load(model_server, registered_model, rows, tmp_path):
    url_store = f"sqlite:///{tmp_path / 'loop.db'}"
    proc, url = gateway(model_server, registered_model, tmp_path, url_store)
    answered: dict[str, float] = {}  # id → probability, of every 200
    statuses = []

    async def load():
        sem = asyncio.Semaphore(CONCURRENCY)
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:

            async def one(k):
                body = {"rows": rows[0][3 * k : 3 * k + 1 + k % 3]}  # 1, 2 or 3 rows
                async with sem:
                    resp = await client.post("/invocations", json=body)
                statuses.append(resp.status_code)
                if resp.status_code == 200:
                    answer = resp.json()
                    answered.update(zip(answer["ids"], answer["predictions"], strict=True))

            await asyncio.gather(*(one(k) for k in range(REQUESTS)))

    try:
        asyncio.run(load())
        assert statuses.count(200) == REQUESTS, sorted(set(statuses))
        assert wait_until(lambda: metric(url, M.PREDICTION_LOG_ROWS) == len(answered))
        assert metric(url, M.PREDICTION_LOG_DROPPED) == 0 and metric(url, M.PREDICTION_LOG_PENDING) == 0
    finally:
        stop_process(proc)
    store = open_store(url_store)
    logged = store.predictions(answered)
    store.close()
    assert len(logged) == len(answered) == sum(1 + k % 3 for k in range(REQUESTS))
    assert all(logged[i].probability == p for i, p in answered.items())
    assert {(p.model_name, p.model_version) for p in logged.values()} == {
        (registered_model.name, registered_model.version)
    }


def test_a_locked_store_costs_counted_drops_never_an_answer(model_server, registered_model, rows, tmp_path):
    """Another connection holds the store's write lock: every request is still answered 200; the first 13
    requests' 39 rows wait in the 40-row buffer, the rest are dropped whole and counted; a label is refused (503)
    rather than lost; when the lock goes the waiting rows are written, and each request's rows are in the store
    entirely or not at all."""
    url_store = f"sqlite:///{tmp_path / 'loop.db'}"
    open_store(url_store).close()  # the tables exist; now lock them
    blocker = sqlite3.connect(tmp_path / "loop.db", isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    proc, url = gateway(model_server, registered_model, tmp_path, url_store, "--prediction-log-rows", "40")
    try:
        requests_ids = []
        with httpx.Client(base_url=url, timeout=30) as client:
            for k in range(30):
                resp = client.post("/invocations", json={"rows": rows[0][3 * k : 3 * k + 3]})
                assert resp.status_code == 200
                requests_ids.append(resp.json()["ids"])
        assert metric(url, M.PREDICTION_LOG_DROPPED) == 90 - 39
        assert metric(url, M.PREDICTION_LOG_PENDING) == 39 and metric(url, M.PREDICTION_LOG_ROWS) == 0
        # a label cannot be kept while the store is locked: 503 with Retry-After, nothing counted; it is
        # accepted once the store takes writes again
        label = {"feedback": [{"id": requests_ids[0][0], "label": rows[1][0]}]}
        refused = httpx.post(f"{url}/feedback", json=label, timeout=30)
        assert refused.status_code == 503 and refused.headers["retry-after"] == "5"
        assert refused.json()["kind"] == "label_store_down"
        blocker.execute("ROLLBACK")
        assert wait_until(lambda: metric(url, M.PREDICTION_LOG_ROWS) == 39)
        assert httpx.post(f"{url}/feedback", json=label, timeout=30).json()["accepted"] == 1
    finally:
        blocker.close()
        stop_process(proc)
    store = open_store(url_store)
    try:
        for k, ids in enumerate(requests_ids):
            assert len(store.predictions(ids)) == (3 if k < 13 else 0), k
        assert store.counts().predictions == 39
    finally:
        store.close()


def test_a_label_for_a_prediction_made_before_a_restart_joins(model_server, registered_model, rows, tmp_path, contract):
    url_store = f"sqlite:///{tmp_path / 'loop.db'}"
    features, truths = rows[0][:6], rows[1][:6]
    proc, url = gateway(model_server, registered_model, tmp_path, url_store)
    try:
        answer = httpx.post(f"{url}/invocations", json={"rows": features}, timeout=30).json()
        ids = answer["ids"]
        items = [{"id": i, "label": t} for i, t in zip(ids, truths, strict=True)]
        first = httpx.post(f"{url}/feedback", json={"feedback": items[:2]}, timeout=30).json()
        assert first["accepted"] == 2
    finally:
        stop_process(proc)  # SIGTERM: the buffered rows are flushed before it exits
    proc, url = gateway(model_server, registered_model, tmp_path, url_store)
    try:
        late = httpx.post(f"{url}/feedback", json={"feedback": items[2:] + items[:1]}, timeout=30).json()
        assert (late["accepted"], late["duplicate_count"], late["unknown_count"]) == (4, 1, 0)
        assert late["window"] == 6  # live accuracy resumed from the store's labels, then the 4 new ones
        predicted = [contract.positive if p >= 0.5 else contract.negative for p in answer["predictions"]]
        assert late["live_accuracy"] == pytest.approx(sum(map(str.__eq__, predicted, truths)) / 6)
        m = parse_metrics(httpx.get(f"{url}/metrics", timeout=10).text)
        assert m[(f"{M.LABEL_DELAY}_count", ())] == 4
        assert m[(M.FEEDBACK, (("outcome", "duplicate"),))] == 1
    finally:
        stop_process(proc)
    snap = collect(url_store, tmp_path / "feedback", contract, horizon=0.0)
    back = contract.validate(contract.read_csv(snap.path)).valid  # one request: same time, ordered by id
    assert snap.manifest["rows"] == 6
    pairs = sorted(zip(back["fnlwgt"], back[contract.target], strict=True))
    assert pairs == sorted((r["fnlwgt"], t) for r, t in zip(features, truths, strict=True))
