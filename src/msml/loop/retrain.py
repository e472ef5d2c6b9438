"""`msml retrain`: one retraining, start to end — under the lock, train, register, gate, promote, roll out.

1. the one-retraining-at-a-time lock (msml.loop.trigger.retrain_lock), held to the end;
2. tune on the processed data (`msml.training.tuning.tune`, few trials: the search plateaus early on Adult);
3. tag the run with what started it: the trigger (the alert's name), the alert's fingerprint, and the sha256 of
   the data it trained on;
4. register the model as a new version, not yet champion;
5. the gate (msml.loop.gate) against the version holding @champion, on the frozen test split and the
   out-of-time window;
6. passed: compare-and-set @champion (the replaced one kept as @previous), then the model servers restarted one
   at a time and the gateway told (msml.loop.rollout); rejected: the version tagged with the gate's reasons.
The outcome and its figures go to `--result` (JSON), which the receiver reads to record the decision's end.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from msml.config import DEFAULT_TIME_BUDGET, Settings
from msml.loop import trigger as decisions
from msml.loop.gate import GatePolicy
from msml.loop.trigger import retrain_lock

# Tags on the retraining's tuning run and its gate run.
TRIGGER_TAG = "msml.loop.trigger"
FINGERPRINT_TAG = "msml.loop.alert_fingerprint"
DATA_SHA_TAG = "msml.loop.data_sha256"
DEFAULT_LOOP_TRIALS = 3  # the search plateaus by trial ~5 (benchmarks/bench_training.py); a loop pays it per alert


@dataclass
class RetrainResult:
    outcome: str
    reason: str
    fingerprint: str
    run_id: str = ""
    candidate: str = ""
    champion_before: str | None = None
    champion_after: str | None = None
    gate: dict = field(default_factory=dict)
    gate_summary: str = ""
    rollout: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)

    def write(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.__dict__, indent=2, default=str))


def data_sha256(processed_dir: Path) -> str:
    """One hash of the processed data the run trains on: the sha256 of its manifest (which lists each file's)."""
    from msml.data.preprocessing import MANIFEST_FILE, file_sha256

    return file_sha256(Path(processed_dir) / MANIFEST_FILE)


def retrain(
    settings: Settings,
    reason: str,
    fingerprint: str = "",
    trials: int = DEFAULT_LOOP_TRIALS,
    time_budget: float | None = DEFAULT_TIME_BUDGET,
    policy: GatePolicy | None = None,
    window: Path | None = None,
    lock_path: Path | None = None,
    roll_out: bool = True,
    progress=print,
) -> RetrainResult:
    """Retrain, gate and (if it passes) promote and roll out; see the module docstring. Busy when another runs."""
    import mlflow
    from mlflow import MlflowClient

    from msml.loop.gate import gate
    from msml.loop.rollout import roll_out as do_roll_out
    from msml.tracking.client import setup_tracking
    from msml.tracking.registry import CHAMPION, promote_gated, reject
    from msml.training.tuning import tune

    policy = policy or GatePolicy()
    lock_path = lock_path or settings.run_dir / "loop" / "retrain.lock"
    seconds: dict[str, float] = {}
    with retrain_lock(lock_path):
        tags = {TRIGGER_TAG: reason, FINGERPRINT_TAG: fingerprint, DATA_SHA_TAG: data_sha256(settings.processed_dir)}
        t = time.perf_counter()
        summary = tune(settings, n_trials=trials, time_budget=time_budget, progress=lambda _: None)
        seconds["train"] = round(time.perf_counter() - t, 1)
        setup_tracking(settings)
        client = MlflowClient()
        for key, value in tags.items():
            client.set_tag(summary.run_id, key, value)
        t = time.perf_counter()
        candidate = str(mlflow.register_model(summary.model_uri, settings.model_name).version)
        try:
            champion = str(client.get_model_version_by_alias(settings.model_name, CHAMPION).version)
        except mlflow.exceptions.MlflowException:
            champion = None
        result = gate(settings, candidate, champion, policy, window, tags=tags)
        seconds["gate"] = round(time.perf_counter() - t, 1)
        progress(f"      gate {result.summary()}")
        out = RetrainResult(
            decisions.REJECTED,
            reason,
            fingerprint,
            run_id=summary.run_id,
            candidate=candidate,
            champion_before=champion,
            champion_after=champion,
            gate=result.to_dict(),
            gate_summary=result.summary(),
            seconds=seconds,
        )
        if not result.passed:
            reject(settings.model_name, candidate, "; ".join(result.failures))
            return out
        if not promote_gated(settings.model_name, candidate, champion, f"gate passed ({result.run_id})"):
            out.gate_summary += f"; not promoted: @{CHAMPION} moved during the gate"
            return out
        out.outcome, out.champion_after = decisions.PROMOTED, candidate
        if roll_out:
            t = time.perf_counter()
            out.rollout = do_roll_out(settings.run_dir, settings.tracking_uri, progress)
            seconds["rollout"] = round(time.perf_counter() - t, 1)
        return out
