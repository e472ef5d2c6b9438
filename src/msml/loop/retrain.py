"""`msml retrain`: one retraining, start to end — under the lock, train, register, gate, promote, roll out.

1. the one-retraining-at-a-time lock (msml.loop.trigger.retrain_lock), held to the end;
2. collect (msml.loop.collect): the labelled predictions older than `horizon` become the next snapshot; with any
   snapshot, preprocess again into the run folder (`loop_processed_dir`; the committed processed folder is left
   as it is): the raw file's split unchanged (the test split stays frozen), the snapshots' rows added to train,
   their newest share held out as the out-of-time window;
3. tune on the processed data (`msml.training.tuning.tune`, few trials: the search plateaus early on Adult), and
   tag the run with what started it: the trigger (the alert's name), the alert's fingerprint, the newest
   snapshot's sha256 and the processed data's;
4. register the model as a new version, not yet champion;
5. the gate (msml.loop.gate) against the version holding @champion, on the frozen test split and the
   out-of-time window (when preprocessing held one out);
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
from msml.loop.collect import DEFAULT_HORIZON
from msml.loop.gate import GatePolicy
from msml.loop.trigger import retrain_lock

# Tags on the retraining's tuning run and its gate run.
TRIGGER_TAG = "msml.loop.trigger"
FINGERPRINT_TAG = "msml.loop.alert_fingerprint"
SNAPSHOT_SHA_TAG = "msml.loop.snapshot_sha256"
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
    snapshot: dict = field(default_factory=dict)
    rollout: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)

    def write(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.__dict__, indent=2, default=str))


def data_sha256(processed_dir: Path) -> str:
    """One hash of the processed data the run trains on: the sha256 of its manifest (which lists each file's)."""
    from msml.data.preprocessing import MANIFEST_FILE, file_sha256

    return file_sha256(Path(processed_dir) / MANIFEST_FILE)


def loop_processed_dir(settings: Settings) -> Path:
    """Where a retraining writes the data it trains on: under the run folder, not over the committed processed
    folder (a course deliverable that `make demo` must leave as it is)."""
    return settings.run_dir / "loop" / settings.processed_dir.name


def refresh_data(settings: Settings, horizon: float):
    """Collect the next snapshot, and with any snapshot preprocess the raw file plus all of them into
    `loop_processed_dir`. Returns the settings to train with (that folder, or the processed folder as it is when
    there is no snapshot at all) and the newest snapshot (None then)."""
    from msml.data.preprocessing import preprocess
    from msml.loop.collect import collect, snapshots

    collect(settings.loop_store, settings.feedback_dir, settings.contract, horizon=horizon)
    every = snapshots(settings.feedback_dir)
    if not every:
        return settings, None
    out = loop_processed_dir(settings)
    preprocess(settings.raw_path, out, settings.contract, feedback=[s.path for s in every])
    return settings.with_overrides(processed_dir=out), every[-1]


def retrain(
    settings: Settings,
    reason: str,
    fingerprint: str = "",
    trials: int = DEFAULT_LOOP_TRIALS,
    time_budget: float | None = DEFAULT_TIME_BUDGET,
    policy: GatePolicy | None = None,
    horizon: float | None = None,
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
        t = time.perf_counter()
        settings, newest = refresh_data(settings, DEFAULT_HORIZON if horizon is None else horizon)
        seconds["data"] = round(time.perf_counter() - t, 1)
        tags = {
            TRIGGER_TAG: reason,
            FINGERPRINT_TAG: fingerprint,
            SNAPSHOT_SHA_TAG: "" if newest is None else newest.sha256,
            DATA_SHA_TAG: data_sha256(settings.processed_dir),
        }
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
        result = gate(settings, candidate, champion, policy, tags=tags)
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
            snapshot={} if newest is None else {"path": str(newest.path), **newest.manifest},
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
