"""The promotion gate: the candidate and the champion scored on the same rows, a floor, and no regression.

Both registry versions score each evaluation frame — the frozen test split, and the out-of-time window (the
newest labelled rows, held out by preprocessing) when there is one. On every frame:
- floor: the candidate's accuracy is at least `floor` — checked by MLflow's own threshold validation
  (`mlflow.evaluate` on the candidate's predictions, then `mlflow.validate_evaluation_results`);
- overall: the candidate's accuracy is at most `tolerance` below the champion's;
- slices: on every group of every column the contract declares sensitive (`sensitive:`, e.g. sex and race) that
  holds at least `min_slice_rows` rows of the frame, at most `slice_tolerance` below the champion's.
Accuracy at the decision threshold is the gate's metric: it is what the live-accuracy alert watches and what
the minimum of new labels was sized for (msml.loop.trigger). The two models are compared on the same rows, so
the difference is paired: 200 rows already tell a 2-point slice regression apart from most noise.

Everything is logged to one MLflow run (`gate-v<candidate>`): both models' evaluations per frame (metric
prefixes `<frame>_<candidate|champion>_`), the per-slice table and the decision.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from msml.config import DECISION_THRESHOLD, Settings
from msml.data.contract import Contract

log = logging.getLogger(__name__)
METRIC = "accuracy_score"  # the name mlflow.evaluate gives accuracy


@dataclass(frozen=True)
class GatePolicy:
    floor: float = 0.80  # the course's baseline LogisticRegression reaches ~0.85 on the test split
    tolerance: float = 0.005
    slice_tolerance: float = 0.02
    min_slice_rows: int = 200


@dataclass
class Check:
    frame: str
    scope: str  # "overall" or "<column>=<value>"
    rows: int
    champion: float | None
    candidate: float
    limit: float
    passed: bool


@dataclass
class GateResult:
    candidate: str
    champion: str | None
    passed: bool
    checks: list[Check] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    run_id: str = ""

    def summary(self) -> str:
        overall = [c for c in self.checks if c.scope == "overall"]
        figures = "; ".join(
            f"{c.frame}: candidate {c.candidate:.4f} vs champion "
            + ("none" if c.champion is None else f"{c.champion:.4f}")
            + f" ({c.rows} rows)"
            for c in overall
        )
        verdict = "passed" if self.passed else "rejected: " + "; ".join(self.failures)
        slices = sum(1 for c in self.checks if c.scope != "overall")
        return f"v{self.candidate} vs v{self.champion}: {figures}; {slices} slice checks; {verdict}"

    def to_dict(self) -> dict:
        return asdict(self)


def _proba(model, frame: pd.DataFrame, contract: Contract) -> np.ndarray:
    out = model.predict(frame[contract.features])
    out = np.asarray(out.values if hasattr(out, "values") else out, dtype=float)
    return out[:, 1] if out.ndim == 2 else out


def _evaluate(y: np.ndarray, predicted: np.ndarray, prefix: str):
    """MLflow's default classifier evaluation of fixed predictions (logged to the active run under `prefix`)."""
    import mlflow

    data = pd.DataFrame({"target": y, "prediction": predicted})
    return mlflow.evaluate(
        data=data,
        targets="target",
        predictions="prediction",
        model_type="classifier",
        evaluators="default",
        evaluator_config={"metric_prefix": prefix, "log_model_explainability": False, "pos_label": 1},
    )


def compare(
    frames: dict[str, pd.DataFrame],
    candidate: dict,
    champion: dict | None,
    contract: Contract,
    policy: GatePolicy,
) -> tuple[list[Check], list[str]]:
    """The checks on each frame, given each model's predicted class per frame ({frame: array}), and the failures
    (each evaluation is logged to the active MLflow run)."""
    import mlflow
    from mlflow.models import MetricThreshold
    from mlflow.models.evaluation.validation import ModelValidationFailedException

    checks: list[Check] = []
    failures: list[str] = []
    for name, frame in frames.items():
        y = (frame[contract.target] == contract.positive).to_numpy(dtype=int)
        cand = candidate[name]
        result = _evaluate(y, cand, f"{name}_candidate_")
        key = f"{name}_candidate_{METRIC}"
        try:
            mlflow.validate_evaluation_results(
                {key: MetricThreshold(threshold=policy.floor, greater_is_better=True)}, result
            )
        except ModelValidationFailedException as exc:
            failures.append(f"{name}: below the floor {policy.floor:g} ({exc})")
        cand_acc = float(result.metrics[key])
        champ_acc = None
        if champion is not None:
            champ_acc = float(_evaluate(y, champion[name], f"{name}_champion_").metrics[f"{name}_champion_{METRIC}"])
        limit = policy.floor if champ_acc is None else max(policy.floor, champ_acc - policy.tolerance)
        ok = cand_acc >= limit
        checks.append(Check(name, "overall", len(y), champ_acc, cand_acc, limit, ok))
        if champ_acc is not None and cand_acc < champ_acc - policy.tolerance:
            failures.append(
                f"{name}: accuracy {cand_acc:.4f} is more than {policy.tolerance:g} below "
                f"the champion's {champ_acc:.4f}"
            )
        if champion is None:
            continue
        for column in contract.sensitive:
            for value, idx in frame.groupby(column, dropna=True).indices.items():
                if len(idx) < policy.min_slice_rows:
                    continue
                c = float((cand[idx] == y[idx]).mean())
                b = float((champion[name][idx] == y[idx]).mean())
                ok = c >= b - policy.slice_tolerance
                checks.append(Check(name, f"{column}={value}", len(idx), b, c, b - policy.slice_tolerance, ok))
                if not ok:
                    failures.append(
                        f"{name}, {column}={value} ({len(idx)} rows): accuracy {c:.4f} is more than "
                        f"{policy.slice_tolerance:g} below the champion's {b:.4f}"
                    )
    return checks, failures


def evaluation_frames(settings: Settings) -> dict[str, pd.DataFrame]:
    """The rows both models are scored on: the frozen test split and, when preprocessing held one out of the
    feedback snapshots, the out-of-time window (`recent`)."""
    from msml.data.preprocessing import load_clean_splits, load_out_of_time

    _, test = load_clean_splits(settings.processed_dir, settings.contract)
    frames = {"test": test.reset_index(drop=True)}
    recent = load_out_of_time(settings.processed_dir, settings.contract)
    if recent is not None and len(recent):
        frames["recent"] = recent.reset_index(drop=True)
    return frames


def gate(
    settings: Settings,
    candidate_version: str,
    champion_version: str | None,
    policy: GatePolicy | None = None,
    tags: dict[str, str] | None = None,
) -> GateResult:
    """Score both registry versions of `settings.model_name` on the evaluation frames and decide (logged to MLflow)."""
    import mlflow

    policy = policy or GatePolicy()
    name, contract = settings.model_name, settings.contract
    frames = evaluation_frames(settings)

    def predicted(version: str) -> dict[str, np.ndarray]:
        model = mlflow.pyfunc.load_model(f"models:/{name}/{version}")
        return {k: (_proba(model, f, contract) >= DECISION_THRESHOLD).astype(int) for k, f in frames.items()}

    cand = predicted(candidate_version)
    champ = predicted(champion_version) if champion_version is not None else None
    with mlflow.start_run(run_name=f"gate-v{candidate_version}") as run:
        mlflow.set_tags(
            {
                "msml.stage": "gate",
                "msml.gate.candidate": candidate_version,
                "msml.gate.champion": champion_version or "",
                **(tags or {}),
            }
        )
        mlflow.log_params({f"gate_{k}": v for k, v in asdict(policy).items()})
        checks, failures = compare(frames, cand, champ, contract, policy)
        result = GateResult(candidate_version, champion_version, not failures, checks, failures, run.info.run_id)
        mlflow.log_dict(result.to_dict(), "gate/decision.json")
        mlflow.set_tag("msml.gate.decision", "passed" if result.passed else "rejected")
    log.info("gate %s", result.summary())
    return result
