"""`collect` on a real SQLite store holding rows the gateway's own validator produced: the join with labels, the
horizon and the windows of successive snapshots, contract validation with quarantine of bad joined rows, and
byte-identical snapshots from the same store and window."""

from __future__ import annotations

import json

import pytest

from msml.data.contract import DataError
from msml.loop.collect import REQUEST_ID, SNAPSHOT_MANIFEST, SNAPSHOT_QUARANTINE, collect, snapshots
from msml.loop.store import Label, Prediction, open_store
from msml.serving.validation import RowValidator
from tests.conftest import RAW


@pytest.fixture(scope="module")
def served(contract):
    """The first 40 raw rows as the gateway logs them (validated, typed), with their true labels."""
    raw = contract.read_csv(RAW).head(40)
    records = raw[contract.features].astype(object).where(raw[contract.features].notna(), None).to_dict("records")
    return RowValidator(contract).validate(records), raw[contract.target].tolist()


@pytest.fixture
def store_url(tmp_path, served, contract):
    """40 predictions at t = 100..139 s; labels for all but the last 5, arriving 1 s after each prediction."""
    url = f"sqlite:///{tmp_path / 'loop.db'}"
    rows, labels = served
    store = open_store(url)
    store.log_predictions(
        [Prediction(f"id{i:02d}", 100.0 + i, "m", "1", contract.fingerprint, row, 0.5, 0) for i, row in enumerate(rows)]
    )
    store.record_labels([Label(f"id{i:02d}", labels[i], 101.0 + i) for i in range(35)])
    store.close()
    return url


def test_snapshot_joins_labelled_predictions_older_than_the_horizon(store_url, tmp_path, contract, served):
    snap = collect(store_url, tmp_path / "fb", contract, horizon=10.0, now=130.0)  # predictions before t = 120
    assert snap.version == "v0001" and snap.path == tmp_path / "fb" / "v0001" / f"{contract.name}.csv"
    m = snap.manifest
    assert (m["rows_joined"], m["rows"], m["rows_quarantined"]) == (20, 20, 0)
    assert m["window"] == {"start": None, "end": 120.0, "horizon": 10.0}
    assert (m["first_prediction"], m["last_prediction"]) == (100.0, 119.0)
    assert m["label_delay_seconds"] == {"median": 1.0, "max": 1.0}
    # the raw file's own format: the contract reads it back to the same rows and labels, in time order
    back = contract.validate(contract.read_csv(snap.path)).valid
    assert back[contract.target].tolist() == served[1][:20]
    assert back["age"].tolist() == [r["age"] for r in served[0][:20]]
    assert json.loads((snap.directory / SNAPSHOT_MANIFEST).read_text()) == m


def test_next_snapshot_starts_where_the_last_ended_and_unlabelled_rows_wait(store_url, tmp_path, contract):
    first = collect(store_url, tmp_path / "fb", contract, horizon=10.0, now=130.0)
    second = collect(store_url, tmp_path / "fb", contract, horizon=0.0, now=200.0)
    assert second.version == "v0002"
    assert second.manifest["window"]["start"] == first.manifest["window"]["end"] == 120.0
    assert (second.manifest["first_prediction"], second.manifest["rows"]) == (120.0, 15)  # ids 20..34 (35+: no label)
    assert collect(store_url, tmp_path / "fb", contract, horizon=0.0, now=300.0) is None  # nothing new
    assert [s.version for s in snapshots(tmp_path / "fb")] == ["v0001", "v0002"]


def test_same_store_and_window_give_the_same_bytes(store_url, tmp_path, contract):
    a = collect(store_url, tmp_path / "a", contract, horizon=0.0, now=500.0)
    b = collect(store_url, tmp_path / "b", contract, horizon=0.0, now=500.0)
    assert a.sha256 == b.sha256 and a.path.read_bytes() == b.path.read_bytes()
    assert a.manifest == b.manifest


def test_joined_rows_failing_the_contract_are_quarantined_with_their_reason(store_url, tmp_path, contract, served):
    """Rows logged by a gateway under an older contract (an age the contract now refuses, a category it dropped),
    and a label outside the contract's: each quarantined with its reason and prediction id, the rest kept."""
    rows, _ = served
    store = open_store(store_url)
    bad = [
        ("old-age", {**rows[0], "age": 150}, "<=50K"),
        ("old-cat", {**rows[1], "workclass": "Retired"}, "<=50K"),
        ("bad-label", dict(rows[2]), "maybe"),
    ]
    store.log_predictions([Prediction(pid, 50.0, "m", "1", "older-contract", row, 0.5, 0) for pid, row, _ in bad])
    store.record_labels([Label(pid, label, 51.0) for pid, _, label in bad])
    store.close()
    snap = collect(store_url, tmp_path / "fb", contract, horizon=0.0, now=300.0, max_invalid_share=0.1)
    m = snap.manifest
    assert (m["rows_joined"], m["rows"], m["rows_quarantined"], m["rows_other_contract"]) == (38, 35, 3, 3)
    quarantine = (snap.directory / SNAPSHOT_QUARANTINE).read_text()
    for pid, reason in (("old-age", "age: out of range"), ("old-cat", "workclass: unknown category"),
                        ("bad-label", "class: unknown label")):  # fmt: skip
        line = next(line for line in quarantine.splitlines() if line.startswith(pid))
        assert reason in line
    assert quarantine.splitlines()[0].startswith(REQUEST_ID)
    # above the allowed share of bad rows nothing is written: a data-quality problem is a person's to look at
    with pytest.raises(DataError, match="invalid, above the allowed"):
        collect(store_url, tmp_path / "strict", contract, horizon=0.0, now=300.0, max_invalid_share=0.05)
    assert not (tmp_path / "strict").exists() or not any((tmp_path / "strict").iterdir())
