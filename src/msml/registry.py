"""Model registry: register a run's model and promote it with the `champion` alias behind a gate.

Aliases, not the deprecated stages. The gate compares the test ROC-AUC of the new version's run
with the current champion's; the decision is recorded as tags on the new version.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

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
