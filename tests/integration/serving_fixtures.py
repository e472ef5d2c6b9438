"""A champion model in a temp tracking store, and MLflow's scoring server for it.

Stands in for the real training until `msml.training` can train and register quickly: the same
shape of model (raw rows → fitted transformer → classifier, logged with `pyfunc_predict_fn=
"predict_proba"` and a signature on the contract's raw features), the drift reference logged as
the run artifact the gateway reads, registered under the settings' model name with alias champion.
"""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from pathlib import Path

import joblib

from msml.contract import Contract
from msml.monitoring.drift import REFERENCE_ARTIFACT, build_reference
from msml.preprocessing import TRANSFORMER_FILE, encode_target, load_clean_splits


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class RegisteredModel:
    tracking_uri: str
    name: str
    version: str
    run_id: str
    uri: str  # models:/<name>@champion


def train_and_register(processed: Path, contract: Contract, workdir: Path, model_name: str,
                       max_iter: int = 50) -> RegisteredModel:
    """Fit transformer+classifier on the train split, log it and the drift reference, register as champion."""
    import mlflow
    from mlflow.models import infer_signature
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.pipeline import Pipeline

    workdir.mkdir(parents=True, exist_ok=True)
    tracking_uri = f"sqlite:///{workdir / 'mlflow.db'}"
    train, _ = load_clean_splits(processed, contract)
    X, y = train[contract.features], encode_target(train[contract.target], contract)
    pipeline = Pipeline([
        ("transform", joblib.load(processed / TRANSFORMER_FILE)),
        ("model", HistGradientBoostingClassifier(max_iter=max_iter, random_state=0)),
    ]).fit(X, y)
    mlflow.set_tracking_uri(tracking_uri)
    client = mlflow.MlflowClient(tracking_uri)
    experiment_id = client.create_experiment("serving-tests", artifact_location=(workdir / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment_id) as run:
        signature = infer_signature(X.head(200), pipeline.predict_proba(X.head(200)))
        mlflow.sklearn.log_model(pipeline, "model", signature=signature, pyfunc_predict_fn="predict_proba")
        reference = workdir / "drift_reference.json"
        reference.write_text(json.dumps(build_reference(train, contract)))
        mlflow.log_artifact(str(reference), Path(REFERENCE_ARTIFACT).parent.as_posix())
    version = mlflow.register_model(f"runs:/{run.info.run_id}/model", model_name)
    client.set_registered_model_alias(model_name, "champion", version.version)
    mlflow.set_tracking_uri(None)
    return RegisteredModel(tracking_uri, model_name, str(version.version), run.info.run_id,
                           f"models:/{model_name}@champion")


def start_gateway(model_url: str, tracking_uri: str, log: Path, *extra: str, port: int | None = None,
                  timeout: float = 60.0):
    """The real `msml gateway` in its own process group; returns (Popen, base URL) once /ping answers."""
    import os
    import sys
    import time
    import urllib.request

    from msml.serving.processes import spawn, stop_process

    port = port or free_port()
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}"}
    cmd = [str(bin_dir / "msml"), "gateway", "--port", str(port), "--model-url", model_url, *extra]
    proc = spawn(cmd, log, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gateway exited with {proc.returncode}:\n{Path(log).read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/ping", timeout=1) as resp:
                if resp.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.1)
    stop_process(proc)
    raise RuntimeError(f"gateway did not answer /ping within {timeout} s:\n{Path(log).read_text()[-3000:]}")


def parse_metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Prometheus text → {(sample name, sorted labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}
