"""The gate and the promotion for real: registry versions in a temp MLflow store, scored on the frozen test split.

- a candidate that is the champion but for a few flipped answers on one race (overall within tolerance) is rejected
  by the slice check, and @champion stays;
- the real `msml.loop.retrain` (1 Optuna trial) against the baseline champion is promoted: @champion moves, the
  old one is @previous, the runs carry the trigger, the alert's fingerprint and the data's sha256;
- `msml rollback` gives @champion back to @previous.
"""

from __future__ import annotations

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

from msml.config import load_settings
from msml.loop.gate import GatePolicy, gate
from msml.loop.retrain import DATA_SHA_TAG, FINGERPRINT_TAG, TRIGGER_TAG, data_sha256, retrain
from msml.tracking.registry import CHAMPION, PREVIOUS
from tests.conftest import RAW, run_msml
from tests.integration.serving_fixtures import train_and_register

pytestmark = pytest.mark.slow
FLIPPED_RACE = "Black"


class SliceSaboteur(mlflow.pyfunc.PythonModel):
    """The champion's answers, with every 20th row of one race answered the other way (~4 points on that slice)."""

    def load_context(self, context):
        self.model = mlflow.sklearn.load_model(context.artifacts["champion"])

    def predict(self, context, model_input, params=None):
        proba = self.model.predict_proba(model_input)
        rows = np.flatnonzero((model_input["race"] == FLIPPED_RACE).to_numpy())[::20]
        proba[rows] = proba[rows][:, ::-1]
        return proba


@pytest.fixture(scope="module")
def settings(processed, contract, tmp_path_factory):
    work = tmp_path_factory.mktemp("loop-gate")
    champion = train_and_register(processed, contract, work, "loop-gate-model")
    s = load_settings(root=work, contract_path=contract.path).with_overrides(
        raw_path=RAW,
        processed_dir=processed,
        tracking_uri=champion.tracking_uri,
        artifact_root=champion.artifact_root,
        experiment="serving-tests",
        model_name=champion.name,
    )
    mlflow.set_tracking_uri(s.tracking_uri)
    yield s
    mlflow.set_tracking_uri(None)


def _champion(client, name) -> str:
    return str(client.get_model_version_by_alias(name, CHAMPION).version)


def test_a_candidate_that_regresses_on_one_slice_is_rejected(settings):
    client = MlflowClient()
    champion = _champion(client, settings.model_name)
    source = client.get_model_version(settings.model_name, champion).source
    mlflow.set_experiment(settings.experiment)
    with mlflow.start_run(run_name="saboteur"):
        info = mlflow.pyfunc.log_model(
            "model",
            python_model=SliceSaboteur(),
            artifacts={"champion": source},
            registered_model_name=settings.model_name,
        )
    candidate = str(info.registered_model_version)
    result = gate(settings, candidate, champion, GatePolicy())
    assert not result.passed
    assert len(result.failures) == 1 and f"race={FLIPPED_RACE}" in result.failures[0], result.failures
    overall = next(c for c in result.checks if c.scope == "overall")
    assert overall.passed and overall.candidate < overall.champion  # worse overall, but within tolerance
    sliced = next(c for c in result.checks if c.scope == f"race={FLIPPED_RACE}")
    assert sliced.champion - sliced.candidate > GatePolicy().slice_tolerance
    assert _champion(client, settings.model_name) == champion
    logged = client.get_run(result.run_id)
    assert logged.data.tags["msml.gate.decision"] == "rejected"
    assert "test_candidate_accuracy_score" in logged.data.metrics  # MLflow's own evaluation, logged


def test_the_real_retraining_is_promoted_and_rollback_restores(settings):
    client = MlflowClient()
    before = _champion(client, settings.model_name)
    out = retrain(settings, "DataDriftPSI", "fp-123", trials=1, time_budget=None, progress=print)
    assert out.outcome == "promoted", out.gate_summary
    assert _champion(client, settings.model_name) == out.candidate != before
    assert str(client.get_model_version_by_alias(settings.model_name, PREVIOUS).version) == before
    tags = client.get_run(out.run_id).data.tags
    assert tags[TRIGGER_TAG] == "DataDriftPSI" and tags[FINGERPRINT_TAG] == "fp-123"
    assert tags[DATA_SHA_TAG] == data_sha256(settings.processed_dir)
    gate_run = client.get_run(out.gate["run_id"]).data.tags
    assert gate_run["msml.gate.decision"] == "passed" and gate_run[TRIGGER_TAG] == "DataDriftPSI"
    assert out.rollout == {"replicas": {}, "gateway_told": False}  # nothing serving in this folder

    env = {
        "MSML_HOME": str(settings.root),
        "MLFLOW_TRACKING_URI": settings.tracking_uri,
        "MSML_MODEL_NAME": settings.model_name,
        "MSML_PROCESSED": str(settings.processed_dir),
    }
    done = run_msml("rollback", env=env)
    assert done.returncode == 0, done.stderr
    assert _champion(client, settings.model_name) == before
    assert client.get_model_version(settings.model_name, out.candidate).tags["promotion"] == "rejected"
    again = run_msml("rollback", env=env)  # one step back, not a toggle
    assert again.returncode == 3 and "no @previous" in again.stderr


def test_the_data_a_retraining_trains_on_is_built_in_the_run_folder(settings):
    """With a snapshot to add, the retraining preprocesses into the run folder: the processed folder other stages
    (and the course's deliverable) read is left byte for byte as it was."""
    import time

    from msml.data.preprocessing import MANIFEST_FILE
    from msml.loop.retrain import loop_processed_dir, refresh_data
    from msml.loop.store import Label, Prediction, open_store
    from msml.ops.loadgen import load_test_rows

    before = (settings.processed_dir / MANIFEST_FILE).read_bytes()
    rows, truths = load_test_rows(settings.processed_dir, settings.contract)
    store = open_store(settings.loop_store)
    now = time.time()
    store.log_predictions([Prediction(f"p{i}", now - 10, "m", "1", "h", rows[i], 0.5, 1) for i in range(40)])
    store.record_labels([Label(f"p{i}", truths[i], now - 5) for i in range(40)])
    store.close()
    trained_on, snapshot = refresh_data(settings, horizon=0)
    assert trained_on.processed_dir == loop_processed_dir(settings) != settings.processed_dir
    assert snapshot is not None and snapshot.manifest["rows"] == 40
    assert (trained_on.processed_dir / MANIFEST_FILE).exists()
    assert (settings.processed_dir / MANIFEST_FILE).read_bytes() == before
