"""Optuna's heartbeat for tuning workers on a shared study: a running trial records a heartbeat in the database;
one silent for the grace period is failed by the next claim, and its retry counts against the budget in its place.

`Study.optimize` beats for its own trials; msml claims trials with ask/tell under a PostgreSQL lock
(msml.training.workers), so it records the heartbeat itself (`Heartbeat`) and fails stale trials at each claim
(`fail_stale`).
"""

from __future__ import annotations

import threading
import warnings

import optuna


def beats(storage) -> bool:
    """Does `storage` (the RDBStorage this process opened, or None) record heartbeats?"""
    return storage is not None and storage.get_heartbeat_interval() is not None


def retried_numbers(trials: list[optuna.trial.FrozenTrial]) -> set[int]:
    """Numbers of the failed trials that a later trial retries (Optuna's retry history on the retry)."""
    return {n for t in trials for n in t.system_attrs.get("retry_history", ())}


def fail_stale(study: optuna.Study, storage) -> None:
    """Fail the study's trials whose heartbeat stopped; the storage's callback runs for each (a retry, its run)."""
    if beats(storage):
        with warnings.catch_warnings():  # "experimental" since Optuna 2.9; what it does here is tested
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)


def budget_trials(trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    """The trials that count against `n_trials`: a retried trial counts once, as its retry."""
    retried = retried_numbers(trials)
    return [t for t in trials if t.number not in retried]


class Heartbeat:
    """Record a running trial's heartbeat every interval in a thread (what `Study.optimize` does for its own
    trials; ask/tell, which the budget lock needs, leaves it to the caller)."""

    def __init__(self, storage, trial: optuna.Trial) -> None:
        self.interval = storage.get_heartbeat_interval() if beats(storage) else None
        self.storage, self.trial_id = storage, trial._trial_id
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, name="optuna-heartbeat", daemon=True)

    def _beat(self) -> None:
        while not self.stop.wait(self.interval):
            try:
                self.storage.record_heartbeat(self.trial_id)
            except Exception:  # a database blip is a missed beat, not the end of beating: the grace covers 3
                continue

    def __enter__(self) -> Heartbeat:
        if self.interval:
            self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join()
