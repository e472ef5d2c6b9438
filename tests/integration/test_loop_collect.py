"""From the loop store to the next training set, for real: `msml collect` and `msml loop status` on a store the
gateway's validator filled, then `msml preprocess` taking the snapshot — the test split the same rows as without it,
repeats of raw rows dropped, the newest feedback held out as the out-of-time window."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from msml.data.preprocessing import (
    OUT_OF_TIME_FILE,
    REPORT_FILE,
    TEST_CLEAN_FILE,
    TRAIN_CLEAN_FILE,
    load_out_of_time,
    preprocess,
)
from msml.loop.collect import collect
from msml.loop.status import render_status
from msml.loop.store import Label, Prediction, open_store
from msml.serving.validation import RowValidator
from tests.conftest import RAW, run_msml

NEW_ROWS = 50  # served rows that are not in the raw file
REPEATS = 10  # served rows identical to raw rows (the demo's traffic replays test rows)


@pytest.fixture(scope="module")
def store_url(tmp_path_factory, contract):
    """60 labelled predictions: 10 repeat raw rows exactly, 50 are raw rows with hours-per-week changed."""
    raw = contract.read_csv(RAW)
    base = raw.iloc[: REPEATS + NEW_ROWS]
    records = base[contract.features].astype(object).where(base[contract.features].notna(), None).to_dict("records")
    rows = RowValidator(contract).validate(records)
    for row in rows[REPEATS:]:
        row["hours-per-week"] = 1 + (row["hours-per-week"] + 37) % 99  # new rows, still inside the contract
    url = f"sqlite:///{tmp_path_factory.mktemp('loop') / 'loop.db'}"
    store = open_store(url)
    store.log_predictions(
        [Prediction(f"id{i:03d}", 1000.0 + i, "m", "1", contract.fingerprint, r, 0.5, 0) for i, r in enumerate(rows)]
    )
    store.record_labels([Label(f"id{i:03d}", label, 2000.0) for i, label in enumerate(base[contract.target])])
    store.close()
    return url


@pytest.fixture(scope="module")
def with_feedback(store_url, contract, tmp_path_factory):
    """The store's snapshot, and the raw file preprocessed with it: (snapshot, processed folder, report)."""
    root = tmp_path_factory.mktemp("with-feedback")
    snap = collect(store_url, root / "feedback", contract, horizon=0.0, now=5000.0)
    report, _ = preprocess(RAW, root / "processed", contract, seed=42, feedback=[snap.path])
    return snap, root / "processed", report


def test_preprocess_with_a_snapshot_keeps_the_test_split_and_holds_out_the_newest(with_feedback, processed, contract):
    snap, out, report = with_feedback
    assert snap.manifest["rows"] == REPEATS + NEW_ROWS
    fb = report["feedback"]
    held = NEW_ROWS // 5  # the test share (0.2) of the feedback rows kept, newest
    assert (fb["duplicates_removed"], fb["train_rows"], fb["out_of_time_rows"]) == (REPEATS, NEW_ROWS - held, held)
    assert fb["snapshots"][0]["sha256"] == snap.sha256
    # the test split: byte for byte what preprocessing the raw file alone gives
    assert (out / TEST_CLEAN_FILE).read_bytes() == (processed / TEST_CLEAN_FILE).read_bytes()
    before = json.loads((processed / REPORT_FILE).read_text())
    assert report["test_rows"] == before["test_rows"]
    assert report["train_rows"] == before["train_rows"] + NEW_ROWS - held
    # the out-of-time window is the newest kept rows, in raw form, not in train
    oot = load_out_of_time(out, contract)
    served = contract.validate(contract.read_csv(snap.path)).valid.reset_index(drop=True)
    newest = served.tail(held).reset_index(drop=True)
    pd.testing.assert_frame_equal(oot.reset_index(drop=True), newest, check_dtype=False)
    train = pd.read_csv(out / TRAIN_CLEAN_FILE)
    assert not train["hours-per-week"].tail(held).equals(newest["hours-per-week"])
    assert load_out_of_time(processed, contract) is None  # built without feedback: no window
    assert not (processed / OUT_OF_TIME_FILE).exists()


def test_training_logs_the_snapshot_as_a_feedback_dataset_input(with_feedback, contract, tmp_path):
    import mlflow

    from msml.config import load_settings
    from msml.training.train import load_data, log_training_dataset

    snap, out, _ = with_feedback
    settings = load_settings().with_overrides(processed_dir=out)
    data = load_data(settings)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    # an experiment of this store: the fluent API remembers an earlier test's active experiment id across stores
    mlflow.set_experiment("feedback-input")
    try:
        with mlflow.start_run() as run:
            log_training_dataset(data, contract)
        logged = mlflow.get_run(run.info.run_id)
    finally:
        mlflow.set_tracking_uri(None)
    inputs = {i.tags[0].value: i.dataset for i in logged.inputs.dataset_inputs}
    assert set(inputs) == {"training", "feedback"}
    feedback = inputs["feedback"]
    assert feedback.name == f"{contract.name}_feedback/{snap.version}" and snap.sha256.startswith(feedback.digest)
    assert json.loads(feedback.source)["uri"] == str(snap.path)
    assert [c["name"] for c in json.loads(feedback.schema)["mlflow_colspec"]] == [*contract.features, contract.target]
    assert logged.data.tags["msml.feedback.sha256"] == snap.sha256
    assert json.loads((out / "manifest.json").read_text())["train.csv.gz"].startswith(inputs["training"].digest)


def test_collect_and_status_commands(store_url, tmp_path, contract):
    env = {"MSML_HOME": str(tmp_path), "MSML_LOOP_STORE": store_url, "MSML_RAW": str(RAW)}
    status = run_msml("loop", "status", "--json", env=env)
    assert status.returncode == 0, status.stderr
    counts = json.loads(status.stdout)["counts"]
    assert (counts["predictions"], counts["labels"], counts["labelled"]) == (60, 60, 60)
    table = render_status(json.loads(status.stdout))
    assert "predictions  labels  labelled" in table and "no retrain decisions yet" in table

    done = run_msml("collect", "--horizon", "0", env=env)
    assert done.returncode == 0, done.stderr
    manifest = json.loads(done.stdout)
    assert manifest["version"] == "v0001" and manifest["rows"] == REPEATS + NEW_ROWS
    assert (tmp_path / "data" / f"{contract.name}_feedback" / "v0001" / f"{contract.name}.csv").is_file()
    again = run_msml("collect", "--horizon", "0", env=env)
    assert again.returncode == 0 and "nothing to collect" in again.stdout

    # `msml preprocess` takes the snapshots by default (--no-feedback leaves them out)
    out = tmp_path / "processed"
    with_fb = run_msml("preprocess", "--out", str(out), env=env)
    assert with_fb.returncode == 0, with_fb.stderr
    assert json.loads((out / REPORT_FILE).read_text())["feedback"]["snapshots"][0]["version"] == "v0001"


def test_a_store_that_cannot_be_reached_is_named_with_exit_3(tmp_path):
    result = run_msml("collect", "--store", "postgresql://postgres@127.0.0.1:1/loop", env={"MSML_HOME": str(tmp_path)})
    assert result.returncode == 3
    assert "loop store" in result.stderr and "127.0.0.1:1" in result.stderr
    result = run_msml("loop", "status", "--store", "ftp://x/y", env={"MSML_HOME": str(tmp_path)})
    assert result.returncode == 3 and "SQLite or PostgreSQL" in result.stderr
