"""The loop store on a real SQLite file (WAL) and the prediction log's writer thread writing into it: first label
wins, the horizon and windows of the join, decisions newest first, and the writer's bounds when the store is locked
by another process's transaction (nothing half-written, every row either logged or counted as dropped)."""

from __future__ import annotations

import sqlite3
import time

import pytest
from prometheus_client import CollectorRegistry, Counter

from msml.loop.prediction_log import PredictionLog
from msml.loop.store import Label, LoopStore, Prediction, StoreError, open_store

ROW = {"age": 39, "workclass": None}


def prediction(pid: str, t: float, predicted: int = 0) -> Prediction:
    return Prediction(pid, t, "m", "1", "hash", ROW, 0.25, predicted)


@pytest.fixture
def store(tmp_path):
    s = open_store(f"sqlite:///{tmp_path / 'run' / 'loop.db'}")
    yield s
    s.close()


def test_sqlite_store_is_in_wal_mode_under_a_created_folder(store, tmp_path):
    assert (tmp_path / "run" / "loop.db").is_file()
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_first_label_wins_and_only_new_ids_are_reported(store):
    assert store.record_labels([Label("a", ">50K", 1.0), Label("b", "<=50K", 1.0)]) == {"a", "b"}
    assert store.record_labels([Label("a", "<=50K", 2.0), Label("c", ">50K", 2.0)]) == {"c"}
    store.log_predictions([prediction("a", 0.5)])
    [(p, label)] = store.labelled_predictions(before=10)
    assert (p.request_id, label.label, label.time) == ("a", ">50K", 1.0)


def test_a_repeated_batch_writes_each_prediction_once(store):
    batch = [prediction("a", 1.0), prediction("b", 1.0)]
    assert store.log_predictions(batch) == 2
    assert store.log_predictions(batch) == 0  # a retried batch after an ambiguous commit
    assert store.counts().predictions == 2
    assert store.predictions(["a", "zz"])["a"].row == ROW


def test_join_takes_labelled_predictions_in_the_window_oldest_first(store):
    store.log_predictions([prediction(pid, t) for pid, t in (("late", 30.0), ("b", 10.0), ("a", 10.0), ("x", 5.0))])
    store.record_labels([Label(pid, "<=50K", 40.0) for pid in ("late", "a", "b")])  # "x" has no label
    assert [p.request_id for p, _ in store.labelled_predictions(before=30.0)] == ["a", "b"]  # ties by id
    assert [p.request_id for p, _ in store.labelled_predictions(before=31.0, since=10.0)] == ["a", "b", "late"]
    assert store.labelled_since(39.0) == 3 and store.labelled_since(40.0) == 0


def test_recent_outcomes_score_the_latest_labels(store):
    store.log_predictions([prediction("a", 1.0, predicted=1), prediction("b", 1.0, predicted=0)])
    store.record_labels([Label("a", ">50K", 2.0), Label("b", ">50K", 3.0)])
    assert store.recent_outcomes(">50K", 10) == [1, 0]
    assert store.recent_outcomes(">50K", 1) == [0]


def test_decisions_newest_first_with_filters(store):
    first = store.record_decision("drift", "started", {"rows": 500}, fingerprint="f1", time=1.0)
    store.record_decision("drift", "duplicate", fingerprint="f1", time=2.0)
    store.record_decision("accuracy", "skipped-few-rows", {"rows": 3}, fingerprint="f2", time=3.0)
    assert [d.decision for d in store.decisions()] == ["skipped-few-rows", "duplicate", "started"]
    assert [d.id for d in store.decisions(fingerprint="f1", decision="started")] == [first]
    assert store.decisions(since=2.5)[0].detail == {"rows": 3}
    assert len(store.decisions(limit=1)) == 1


def test_store_urls_it_cannot_use_are_named(tmp_path):
    with pytest.raises(StoreError, match="not a database URL"):
        LoopStore("not a url")
    with pytest.raises(StoreError, match="SQLite or PostgreSQL"):
        LoopStore("mysql://u@h/db")
    with pytest.raises(StoreError, match="cannot be used"):
        open_store("postgresql://postgres@127.0.0.1:1/loop")  # nothing listens on port 1


# ---- the writer thread ------------------------------------------------------------------------------------------


def counters():
    registry = CollectorRegistry()
    return Counter("logged", "rows", registry=registry), Counter("dropped", "rows", registry=registry)


def request(n: int, start: int):
    ids = [f"r{start + i}" for i in range(n)]
    return ids, [dict(ROW) for _ in ids], [0.75] * n, [1] * n


class Model:
    name, version = "adult", "3"


def test_writer_logs_every_appended_row_and_flushes_on_stop(store):
    logged, dropped = counters()
    log = PredictionLog(store, "hash", logged, dropped, batch_rows=7, flush_interval=0.01)
    log.start()
    for k in range(30):
        assert log.append(*request(3, 3 * k), Model(), time.time())
    log.stop()
    assert logged._value.get() == 90 and dropped._value.get() == 0 and log.pending == 0
    rows = store.predictions([f"r{i}" for i in range(90)])
    assert len(rows) == 90
    facts = {(p.model_name, p.model_version, p.predicted, p.probability) for p in rows.values()}
    assert facts == {("adult", "3", 1, 0.75)}


# waits out a real timeout (SQLite's busy timeout / Optuna's grace period): in `make test`, not the inner loop
@pytest.mark.slow
def test_a_locked_store_costs_dropped_rows_never_half_a_batch(store, tmp_path):
    """Another connection holds the database's write lock: the writer's batch fails whole and is kept, the buffer
    fills to its bound, later requests are dropped (counted, whole), and once the lock goes every kept row lands."""
    logged, dropped = counters()
    log = PredictionLog(store, "hash", logged, dropped, max_buffered_rows=20, batch_rows=8, flush_interval=0.01)
    blocker = sqlite3.connect(tmp_path / "run" / "loop.db", isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    log.start()
    accepted = [log.append(*request(4, 4 * k), None, time.time()) for k in range(10)]
    assert accepted == [True] * 5 + [False] * 5  # 20 rows held, then whole requests refused
    deadline = time.monotonic() + 10  # the writer tries, waits out SQLite's busy timeout (2 s) and fails
    while log.failing_since is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert log.failing_since is not None
    assert logged._value.get() == 0 and dropped._value.get() == 20 and log.pending == 20
    blocker.execute("ROLLBACK")
    blocker.close()
    log.stop()
    assert logged._value.get() == 20 and log.pending == 0
    assert set(store.predictions([f"r{i}" for i in range(40)])) == {f"r{i}" for i in range(20)}


# waits out a real timeout (SQLite's busy timeout / Optuna's grace period): in `make test`, not the inner loop
@pytest.mark.slow
def test_stop_counts_what_a_store_that_stays_locked_never_took(store, tmp_path):
    logged, dropped = counters()
    log = PredictionLog(store, "hash", logged, dropped, batch_rows=8, flush_interval=0.01)
    blocker = sqlite3.connect(tmp_path / "run" / "loop.db", isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        log.start()
        log.append(*request(5, 0), None, time.time())
        log.stop(timeout=1.0)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert logged._value.get() + dropped._value.get() == 5 and dropped._value.get() == 5
    assert store.counts().predictions == 0
