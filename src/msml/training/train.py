"""Baseline training with MLflow autolog (the course's `modelling.py`), and the model logging
shared with tuning: the logged model is a Pipeline (fitted transformer + estimator), so the
served model takes raw feature rows exactly as the contract defines them.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import joblib
import mlflow
import numpy as np
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types.schema import ColSpec, Schema, TensorSpec
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from msml.config import DEFAULT_SEED, Settings
from msml.data.contract import Contract
from msml.data.preprocessing import (
    MANIFEST_FILE,
    REPORT_FILE,
    TRAIN_FILE,
    TRANSFORMER_FILE,
    Splits,
    load_clean_splits,
    load_training_data,
)
from msml.tracking.client import setup_tracking
from msml.training.evaluation import positive_class_metrics

MODEL_ARTIFACT = "model"
DRIFT_REFERENCE_ARTIFACT = "monitoring/drift_reference.json"
INPUT_EXAMPLE_ROWS = 5
DIGEST_CHARS = 36  # the tracking store's dataset digest column holds 36 characters
_MLFLOW_TYPES = {"int": "long", "float": "double", "category": "string"}
# The distributions a logged model needs to load, pinned to the versions installed here (the runtime lock's: `make
# venv` installs exactly the lock). These are the names MLflow 2.19 infers for our sklearn Pipeline (a subprocess
# that loads the model and records its imports: ~6 s per logged model on this machine); a test compares the two.
MODEL_REQUIREMENTS = ("mlflow", "cloudpickle", "numpy", "pandas", "psutil", "scikit-learn", "scipy")


@dataclass
class RunSummary:
    """What the next step (registry, CI) needs to know about a training run."""

    run_id: str
    model_uri: str
    experiment_id: str
    metrics: dict[str, float]

    def write(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(asdict(self), indent=2, sort_keys=True) + "\n")


@dataclass
class TrainingData:
    """Everything a training stage reads from the processed directory."""

    splits: Splits
    train_clean: pd.DataFrame
    test_clean: pd.DataFrame
    transformer: Pipeline
    train_path: Path
    train_sha256: str = ""  # from the processed dataset's manifest (checked when loaded)
    feedback: tuple[dict, ...] = ()  # the `msml collect` snapshots in the train split (report.json's list)


def load_data(settings: Settings) -> TrainingData:
    """Read (and contract-check) the processed dataset: train-ready splits, clean rows, transformer."""
    contract = settings.contract
    splits = load_training_data(settings.processed_dir, contract)
    train_clean, test_clean = load_clean_splits(settings.processed_dir, contract)
    transformer = joblib.load(settings.processed_dir / TRANSFORMER_FILE)
    manifest = json.loads((settings.processed_dir / MANIFEST_FILE).read_text())
    report = json.loads((settings.processed_dir / REPORT_FILE).read_text())
    return TrainingData(
        splits,
        train_clean,
        test_clean,
        transformer,
        settings.processed_dir / TRAIN_FILE,
        manifest[TRAIN_FILE],
        tuple(report.get("feedback", {}).get("snapshots", ())),
    )


def model_signature(contract: Contract) -> ModelSignature:
    """Signature from the contract: raw features in, [P(negative), P(positive)] out."""
    inputs = Schema([ColSpec(_MLFLOW_TYPES[c.type], c.name, required=not c.nullable) for c in contract.columns])
    outputs = Schema([TensorSpec(np.dtype("float64"), (-1, 2))])
    return ModelSignature(inputs=inputs, outputs=outputs)


def train_ready_schema(feature_names: list[str], contract: Contract) -> Schema:
    """The MLflow schema of a train-ready frame, from the contract's processed schema (float features, 0/1 target):
    what MLflow would infer value by value (~7-11 s for the Adult train split on this machine)."""
    types = {"float64": "double", "int64": "long"}
    columns = contract.processed_schema(feature_names).columns
    return Schema([ColSpec(types[str(col.dtype)], name) for name, col in columns.items()])


def raw_schema(contract: Contract) -> Schema:
    """The MLflow schema of rows in the raw file's form: the contract's features (as the signature) and the target."""
    return Schema([*model_signature(contract).inputs.inputs, ColSpec("string", contract.target)])


def log_training_dataset(data: TrainingData, contract: Contract) -> None:
    """Log the train split as an MLflow dataset input (name, source, digest, schema), and each feedback snapshot in
    it as a dataset input of context `feedback` (digest: the snapshot's sha256).

    The schema is the contract's and the digest the train file's sha256 from the manifest, so MLflow neither infers
    one value by value nor hashes the frame (measured: 11.0 s → 0.1 s per train or tune, benchmarks)."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    frame = pd.concat([data.splits.X_train, data.splits.y_train], axis=1)
    with warnings.catch_warnings():  # MLflow guesses aloud about local sources and integer columns
        warnings.simplefilter("ignore", UserWarning)
        dataset = mlflow.data.from_pandas(
            frame,
            source=str(data.train_path),
            targets=contract.target,
            name=f"{contract.name}_preprocessing/{data.train_path.name}",
            digest=data.train_sha256[:DIGEST_CHARS] or None,
        )
        # PandasDataset.schema is a cached_property: the value put in its place is the one it returns
        dataset.__dict__["schema"] = train_ready_schema(list(data.splits.X_train.columns), contract)
        mlflow.log_input(dataset, context="training")
        for snapshot in data.feedback:
            source = resolve_dataset_source(snapshot["file"])
            name = f"{contract.name}_feedback/{snapshot['version']}"
            digest = snapshot["sha256"][:DIGEST_CHARS]
            mlflow.log_input(MetaDataset(source, name=name, digest=digest, schema=raw_schema(contract)), "feedback")
    if data.feedback:
        mlflow.set_tag("msml.feedback.sha256", ",".join(s["sha256"] for s in data.feedback))


def model_requirements() -> list[str]:
    """MODEL_REQUIREMENTS pinned to the installed versions (`name==version`)."""
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in MODEL_REQUIREMENTS]


def log_model(estimator, data: TrainingData, contract: Contract, transformer: Pipeline | None = None) -> str:
    """Log transformer (the processed dir's unless another fitted one is given) + estimator as one sklearn
    Pipeline, plus the drift reference. Returns the model URI.

    A pipeline the fast runtime can evaluate (msml.training.fastmodel: the tuned tree models) is logged with
    its sklearn flavor and a python_function flavor that runs the compiled model, once its probabilities on
    the whole test split are checked against the pipeline's; any other is logged as the sklearn model. The
    run's `msml.model_runtime` tag says which."""
    from msml.monitoring.drift import build_reference
    from msml.training import fastmodel

    pipeline = Pipeline([("transform", data.transformer if transformer is None else transformer), ("model", estimator)])
    example = data.test_clean[contract.features].head(INPUT_EXAMPLE_ROWS)
    # The signature comes from the contract, so MLflow's hint about inferring integer columns
    # from the example does not apply.
    warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer column")
    # the scoring server answers probabilities, which the gateway and monitoring need
    options = {
        "signature": model_signature(contract),
        "input_example": example,
        "pyfunc_predict_fn": "predict_proba",
        "pip_requirements": model_requirements(),  # not inferred: that loads the model in a subprocess (~6 s)
    }
    compiled = fastmodel.compile_checked(pipeline, data.test_clean[contract.features])
    if compiled is None:
        info = mlflow.sklearn.log_model(pipeline, MODEL_ARTIFACT, **options)
    else:
        info = mlflow.models.Model.log(MODEL_ARTIFACT, fastmodel.Flavor(compiled), sk_model=pipeline, **options)
    mlflow.set_tag(fastmodel.RUNTIME_TAG, "compiled" if compiled else "sklearn")
    mlflow.log_dict(build_reference(data.train_clean, contract), DRIFT_REFERENCE_ARTIFACT)
    return info.model_uri


def test_metrics(estimator, data: TrainingData) -> dict[str, float]:
    proba = estimator.predict_proba(data.splits.X_test)[:, 1]
    return positive_class_metrics(data.splits.y_test, proba, "test_")


def train_baseline(settings: Settings, seed: int = DEFAULT_SEED, run_info: str | Path | None = None) -> RunSummary:
    """Fit a LogisticRegression baseline on the preprocessed train split with sklearn autolog.

    Autolog records params and the training metrics; the model itself is logged by `log_model`
    (autolog would log the bare estimator, which cannot take raw rows). Inside `mlflow run` the
    run the project opened (MLFLOW_RUN_ID) is reused.
    """
    data = load_data(settings)
    experiment_id = setup_tracking(settings)
    mlflow.sklearn.autolog(log_models=False, log_datasets=False, log_post_training_metrics=False, silent=True)
    try:
        with mlflow.start_run(run_name="baseline-logreg") as run:
            mlflow.set_tags({"msml.stage": "baseline", "msml.data.contract": settings.contract.name})
            log_training_dataset(data, settings.contract)
            estimator = LogisticRegression(max_iter=2000, random_state=seed)
            estimator.fit(data.splits.X_train, data.splits.y_train)
            metrics = test_metrics(estimator, data)
            mlflow.log_metrics(metrics)
            model_uri = log_model(estimator, data, settings.contract)
    finally:
        mlflow.sklearn.autolog(disable=True)
    logged = mlflow.get_run(run.info.run_id).data.metrics
    summary = RunSummary(run.info.run_id, model_uri, experiment_id, logged)
    if run_info:
        summary.write(run_info)
    return summary
