"""Nothing half-written: an interrupted preprocess leaves the previous dataset intact and readable, readers
check the manifest, and concurrent promotions leave the better model as @champion."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from msml.data.contract import DataError
from msml.data.preprocessing import MANIFEST_FILE, TRAIN_FILE, file_sha256, load_training_data, verify_manifest
from tests.conftest import BIN, RAW, ROOT


def _hashes(folder: Path) -> dict[str, str]:
    return {p.name: file_sha256(p) for p in sorted(folder.iterdir())}


def test_preprocess_killed_mid_write_leaves_the_previous_dataset(tmp_path, processed, contract):
    out = tmp_path / "adult_preprocessing"
    shutil.copytree(processed, out)
    before = _hashes(out)
    # a different seed: the new files differ from the old ones, so a mix would show
    proc = subprocess.Popen(
        [str(BIN / "msml"), "preprocess", "--raw", str(RAW), "--out", str(out), "--seed", "7"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        tmp = list(tmp_path.glob(f".{out.name}.tmp-*"))
        if tmp and any(tmp[0].iterdir()):  # the write step has begun: kill it mid-write
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    assert proc.wait() == -signal.SIGKILL, "preprocess finished before it could be interrupted"
    assert _hashes(out) == before  # every old file, byte for byte
    verify_manifest(out, tuple(name for name in before if name != MANIFEST_FILE))
    assert len(load_training_data(out, contract).X_train) > 0
    # the next run clears the killed run's temp folder and replaces the dataset as a whole
    subprocess.run(
        [str(BIN / "msml"), "preprocess", "--raw", str(RAW), "--out", str(out), "--seed", "7"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    assert [p.name for p in tmp_path.iterdir()] == [out.name]
    assert json.loads((out / "report.json").read_text())["seed"] == 7


def test_readers_refuse_a_file_that_does_not_match_the_manifest(tmp_path, processed, contract):
    out = tmp_path / "processed"
    shutil.copytree(processed, out)
    with open(out / TRAIN_FILE, "ab") as f:
        f.write(b"\n")  # one byte appended, as a crash or an editor might
    with pytest.raises(DataError, match=f"{TRAIN_FILE} does not match {MANIFEST_FILE}"):
        load_training_data(out, contract)
    (out / MANIFEST_FILE).unlink()
    with pytest.raises(DataError, match=f"has no {MANIFEST_FILE}"):
        load_training_data(out, contract)


# Each contender registers its own run's model and runs the gate at the same moment (a shared start time).
CONTENDER = """
import sys, time
import mlflow
from msml.tracking.registry import register_and_promote
mlflow.set_tracking_uri(sys.argv[1])
start, run_id = float(sys.argv[2]), sys.argv[3]
time.sleep(max(0.0, start - time.time()))
p = register_and_promote(f"runs:/{run_id}/model", "contest", run_id)
print(p.version, p.promoted, p.reason)
"""


@pytest.mark.slow
def test_concurrent_promotions_leave_the_better_model_champion(tmp_path):
    import mlflow
    from mlflow import MlflowClient

    from msml.tracking.registry import register_and_promote

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    try:
        mlflow.set_experiment("contest")
        runs = {}
        for score in (0.70, 0.81, 0.93, 0.86, 0.89):
            with mlflow.start_run() as run:
                mlflow.log_metric("test_roc_auc", score)
                mlflow.log_text("stand-in", "model/MLmodel")  # the registry records the source; no model is loaded
            runs[score] = run.info.run_id
        assert register_and_promote(f"runs:/{runs[0.70]}/model", "contest", runs[0.70]).promoted
        start = time.time() + 8  # after every contender has imported MLflow
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", CONTENDER, uri, str(start), runs[s]],
                text=True,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            for s in (0.81, 0.93, 0.86, 0.89)
        ]
        outputs = [p.communicate(timeout=120) for p in procs]
        assert all(p.returncode == 0 for p in procs), outputs
        client = MlflowClient()
        champion = client.get_model_version_by_alias("contest", "champion")
        assert champion.run_id == runs[0.93], outputs
        tags = {v.run_id: v.tags["promotion"] for v in client.search_model_versions("name='contest'")}
        assert tags[runs[0.93]] == "promoted", (tags, outputs)
    finally:
        mlflow.set_tracking_uri(None)
