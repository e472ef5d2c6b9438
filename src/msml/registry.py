"""Model registry: register a run's model and promote it with the `champion` alias behind a gate.

Aliases, not the deprecated stages. The gate compares the test ROC-AUC of the new version's run
with the current champion's; the decision is recorded as tags on the new version.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

log = logging.getLogger(__name__)

CHAMPION = "champion"
GATE_METRIC = "test_roc_auc"


@dataclass
class Promotion:
    name: str
    version: str
    promoted: bool
    reason: str

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def champion_uri(name: str) -> str:
    return f"models:/{name}@{CHAMPION}"


def _run_metric(client: MlflowClient, run_id: str) -> float:
    value = client.get_run(run_id).data.metrics.get(GATE_METRIC)
    if value is None:
        raise MlflowException(f"run {run_id} has no {GATE_METRIC} metric; cannot gate its promotion")
    return value


def register_and_promote(model_uri: str, name: str, run_id: str) -> Promotion:
    """Register `model_uri` as a new version of `name`; alias it champion if it beats the current one."""
    client = MlflowClient()
    version = mlflow.register_model(model_uri, name).version
    new_score = _run_metric(client, run_id)
    try:
        current = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        current = None
    if current is None:
        promoted, reason = True, f"no champion yet; {GATE_METRIC}={new_score:.4f}"
    else:
        old_score = _run_metric(client, current.run_id)
        promoted = new_score > old_score
        verb = "beats" if promoted else "does not beat"
        reason = f"{GATE_METRIC} {new_score:.4f} {verb} champion v{current.version} ({old_score:.4f})"
    if promoted:
        client.set_registered_model_alias(name, CHAMPION, version)
    client.set_model_version_tag(name, version, "promotion", "promoted" if promoted else "rejected")
    client.set_model_version_tag(name, version, "promotion_reason", reason)
    client.set_model_version_tag(name, version, GATE_METRIC, f"{new_score:.6f}")
    return Promotion(name, str(version), promoted, reason)


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    alias: str
    run_id: str
    uri: str


def resolve_model(model_uri: str, tracking_uri: str | None) -> tuple[ModelInfo, dict | None]:
    """Resolve `models:/<name>@<alias>` (or `/<version>`) to its version and run; fetch the drift reference.

    Returns the model info and the reference (None when the run has no `monitoring/drift_reference.json`).
    """
    from mlflow.artifacts import download_artifacts

    from msml.monitoring.drift import REFERENCE_ARTIFACT

    if not model_uri.startswith("models:/"):
        raise ValueError(f"not a registry URI: {model_uri}")
    spec = model_uri[len("models:/"):]
    client = MlflowClient(tracking_uri)
    if "@" in spec:
        name, alias = spec.split("@", 1)
        mv = client.get_model_version_by_alias(name, alias)
    else:
        name, version = spec.rsplit("/", 1)
        mv, alias = client.get_model_version(name, version), ""
    info = ModelInfo(name=name, version=str(mv.version), alias=alias, run_id=mv.run_id or "", uri=model_uri)
    reference = None
    if mv.run_id:
        try:
            path = download_artifacts(run_id=mv.run_id, artifact_path=REFERENCE_ARTIFACT, tracking_uri=tracking_uri)
            reference = json.loads(Path(path).read_text())
        except Exception as exc:  # the model is still served; drift is reported absent
            log.warning("run %s has no drift reference (%s): drift metrics are off", mv.run_id, exc)
    return info, reference
