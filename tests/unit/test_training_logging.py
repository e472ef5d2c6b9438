"""What training gives MLflow instead of letting it infer: the train split's schema from the contract (equal to what
MLflow infers from the committed train file) and the model's requirements pinned to the runtime lock."""

from __future__ import annotations

import pandas as pd
from mlflow.types.utils import _infer_schema

from msml.ops.project import RUNTIME_LOCK, read_lock
from msml.training.train import MODEL_REQUIREMENTS, model_requirements, train_ready_schema
from tests.conftest import ROOT


def test_the_given_schema_is_the_one_mlflow_infers(contract):
    processed = ROOT / "data" / f"{contract.name}_preprocessing" / "train.csv.gz"
    head = pd.read_csv(processed, nrows=500, float_precision="round_trip")
    frame = contract.processed_schema([c for c in head.columns if c != contract.target]).validate(head)
    features = [c for c in frame.columns if c != contract.target]
    assert train_ready_schema(features, contract) == _infer_schema(frame)


def test_model_requirements_are_the_runtime_locks_pins():
    locked = read_lock(ROOT / RUNTIME_LOCK)
    pins = dict(r.split("==") for r in model_requirements())
    assert list(pins) == list(MODEL_REQUIREMENTS)
    assert pins == {name: locked[name][1] for name in MODEL_REQUIREMENTS}
