"""The claim loop's heartbeat and budget on a real Optuna RDB storage (SQLite here; PostgreSQL with real worker
processes in tests/integration/test_scale.py): an abandoned trial is failed once its beats stop, its parameters
come back as the next claim, and the retry takes its place in the budget."""

from __future__ import annotations

import contextlib
import time

import optuna
import pytest
from optuna.trial import TrialState

from msml.training import workers
from msml.training.heartbeat import Heartbeat, budget_trials


def _study(tmp_path, on_stale):
    storage = workers.open_storage(f"sqlite:///{tmp_path / 'optuna.db'}", 1, on_stale)
    study = optuna.create_study(storage=storage, study_name="s", direction="maximize")
    return study, storage


# waits out a real timeout (SQLite's busy timeout / Optuna's grace period): in `make test`, not the inner loop
@pytest.mark.slow
def test_an_abandoned_trial_is_failed_and_its_parameters_claimed_again(tmp_path):
    stale = []

    def on_stale(study, trial):
        stale.append(trial.number)
        optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)(study, trial)

    study, storage = _study(tmp_path, on_stale)
    lock = contextlib.nullcontext
    abandoned = workers.claim_trial(study, 2, lock, storage)  # its worker "dies": no beat after the first
    x = abandoned.suggest_float("x", 0, 1)
    running = workers.claim_trial(study, 2, lock, storage)
    with Heartbeat(storage, running):  # this one keeps beating through the grace period
        time.sleep(workers.GRACE_BEATS * 1 + 1.5)  # past the grace period (3 beats of 1 s; SQLite keeps whole seconds)
        retry = workers.claim_trial(study, 2, lock, storage)
    assert stale == [abandoned.number]
    assert retry is not None and retry.params == {"x": x} and retry.suggest_float("x", 0, 1) == x
    study.tell(running, 0.5)
    study.tell(retry, 0.7)
    trials = study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    assert [t.number for t in budget_trials(trials)] == [running.number, retry.number]
    assert workers.claim_trial(study, 2, lock, storage) is None  # the budget is spent: the retry counted
    workers.wait_for_trials(study, 2, progress=lambda _: None)  # a retried failure does not fail the study


def test_a_failure_that_was_not_retried_fails_the_study(tmp_path):
    study, storage = _study(tmp_path, on_stale=None)
    lock = contextlib.nullcontext
    trial = workers.claim_trial(study, 1, lock, storage)
    study.tell(trial, state=TrialState.FAIL)
    assert workers.claim_trial(study, 1, lock, storage) is None
    with pytest.raises(workers.TuningError, match=r"trial\(s\) \[0\] failed"):
        workers.wait_for_trials(study, 1, progress=lambda _: None)
