"""Model registry: register a run's model and promote it with the `champion` alias behind a gate.

Aliases, not the deprecated stages. The gate compares the test ROC-AUC of the new version's run
with the other versions' (the champion is the best scored); the decision is recorded as tags on the
new version. Promotion is a compare-and-set loop, safe for concurrent tuning runs.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from msml.errors import TrackingError

log = logging.getLogger(__name__)

CHAMPION = "champion"
PREVIOUS = "previous"  # the champion a gated promotion replaced: what `msml rollback` restores
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


def _score(client: MlflowClient, version) -> float | None:
    """A version's gate score: its tag (set at registration, before it competes), else its run's metric."""
    tagged = version.tags.get(GATE_METRIC)
    if tagged is not None:
        return float(tagged)
    try:
        return _run_metric(client, version.run_id)
    except MlflowException:
        return None


def _champion(client: MlflowClient, name: str):
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def _best(client: MlflowClient, name: str):
    """The best scored version that was not rejected (the champion always counts); the earliest on a tie,
    so a tie never moves the alias. A rejected version lost to one at least as good, so leaving it out
    loses nothing; to roll a champion back by hand, tag the bad version `promotion=rejected` too."""
    champion = _champion(client, name)
    contenders = [
        v
        for v in client.search_model_versions(f"name='{name}'")
        if (champion is not None and str(v.version) == str(champion.version))
        or (GATE_METRIC in v.tags and v.tags.get("promotion") != "rejected")
    ]
    scored = [(score, -int(v.version), v) for v in contenders if (score := _score(client, v)) is not None]
    return max(scored, key=lambda t: t[:2])[2]


def register_and_promote(model_uri: str, name: str, run_id: str, max_rounds: int = 20) -> Promotion:
    """Register `model_uri` as a new version of `name`; alias it champion if it beats every other version.

    The registry has no atomic compare-and-set, so promotion is optimistic: set the alias to the best
    scored version, read it back, and repeat until the champion is the best this process can see.
    Every contender does the same after registering (its score tagged first), so whichever writes last
    has seen all the others: with two concurrent `msml tune` runs the better model holds @champion.
    """
    client = MlflowClient()
    new_score = _run_metric(client, run_id)
    version = str(mlflow.register_model(model_uri, name).version)
    client.set_model_version_tag(name, version, GATE_METRIC, f"{new_score:.6f}")  # enters the contest
    previous = _champion(client, name)
    for _ in range(max_rounds):
        best, current = _best(client, name), _champion(client, name)
        if current is not None and str(current.version) == str(best.version):
            break
        client.set_registered_model_alias(name, CHAMPION, best.version)
    else:
        raise MlflowException(f"@{CHAMPION} of {name} kept changing under {max_rounds} promotion rounds")
    promoted = str(current.version) == version
    if promoted and previous is None:
        reason = f"no champion yet; {GATE_METRIC}={new_score:.4f}"
    else:
        rival = previous if promoted else current  # whom it beat, or who holds the alias instead
        verb = "beats" if promoted else "does not beat"
        reason = f"{GATE_METRIC} {new_score:.4f} {verb} champion v{rival.version} ({_score(client, rival):.4f})"
    client.set_model_version_tag(name, version, "promotion", "promoted" if promoted else "rejected")
    client.set_model_version_tag(name, version, "promotion_reason", reason)
    return Promotion(name, version, promoted, reason)


def promote_gated(name: str, version: str, expected: str | None, reason: str, max_rounds: int = 5) -> bool:
    """Move @champion to `version` if it still is `expected` (the version the gate compared against), keeping
    `expected` as @previous; False, and nothing moved, when @champion changed under the gate.

    Compare-and-set as `register_and_promote` does it (the registry has none): check, write, read back. The
    candidate carries no gate-metric tag, so a later `register_and_promote` contest counts it only while it holds
    @champion; the decision is tagged on the version either way.
    """
    client = MlflowClient()
    for _ in range(max_rounds):
        current = _champion(client, name)
        if (None if current is None else str(current.version)) != expected:
            client.set_model_version_tag(name, version, "promotion", "rejected")
            client.set_model_version_tag(name, version, "promotion_reason", f"@{CHAMPION} moved during the gate")
            return False
        if expected is not None:
            client.set_registered_model_alias(name, PREVIOUS, expected)
        client.set_registered_model_alias(name, CHAMPION, version)
        if str(client.get_model_version_by_alias(name, CHAMPION).version) == version:
            client.set_model_version_tag(name, version, "promotion", "promoted")
            client.set_model_version_tag(name, version, "promotion_reason", reason)
            return True
    raise MlflowException(f"@{CHAMPION} of {name} kept changing under {max_rounds} promotion rounds")


def reject(name: str, version: str, reason: str) -> None:
    client = MlflowClient()
    client.set_model_version_tag(name, version, "promotion", "rejected")
    client.set_model_version_tag(name, version, "promotion_reason", reason)


def rollback(name: str) -> tuple[str, str]:
    """Give @champion back to @previous; returns (the version rolled back, the version restored).

    The rolled-back version is tagged `promotion=rejected` (so a later registry contest does not re-elect it) and
    @previous is removed: one step back, not a toggle."""
    client = MlflowClient()
    try:
        previous = client.get_model_version_by_alias(name, PREVIOUS)
    except MlflowException:
        raise TrackingError(f"{name} has no @{PREVIOUS} version: nothing to roll back to") from None
    current = _champion(client, name)
    client.set_registered_model_alias(name, CHAMPION, previous.version)
    client.delete_registered_model_alias(name, PREVIOUS)
    if current is not None:
        client.set_model_version_tag(name, current.version, "promotion", "rejected")
        client.set_model_version_tag(name, current.version, "promotion_reason", f"rolled back to v{previous.version}")
    return ("" if current is None else str(current.version)), str(previous.version)


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
    spec = model_uri[len("models:/") :]
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
