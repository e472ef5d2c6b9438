"""The trigger's pure parts: the minimum of new labels, the settings from the environment, the webhook's parsing,
and the guards' order on a real (SQLite) loop store with a command that must never run."""

from __future__ import annotations

import time

import pytest

from msml.loop import trigger as T
from msml.loop.store import open_store


def test_min_new_labels_is_the_sample_size_for_a_two_point_drop():
    assert T.MIN_NEW_LABELS == T.min_labels_for_drop(0.87, 0.02) == 1822
    assert T.min_labels_for_drop(0.87, 0.04) < T.MIN_NEW_LABELS < T.min_labels_for_drop(0.87, 0.01)


def test_settings_from_the_environment(tmp_path):
    s = T.TriggerSettings.from_env(
        tmp_path,
        {
            "MSML_LOOP_COOLDOWN_SECONDS": "5",
            "MSML_LOOP_MIN_NEW_LABELS": "7",
            "MSML_LOOP_DAILY_CAP": "2",
            "MSML_LOOP_TRIALS": "1",
            "MSML_LOOP_HORIZON": "0",
            "MSML_LOOP_RETRAIN_ALERTS": "DataDriftPSI",
        },
    )
    assert (s.cooldown_seconds, s.min_new_labels, s.daily_cap, s.trials, s.horizon) == (5.0, 7, 2, 1, 0.0)
    assert s.retrain_alerts == ("DataDriftPSI",)
    assert T.TriggerSettings.from_env(tmp_path, {}) == T.TriggerSettings(tmp_path)


@pytest.mark.parametrize(
    ("payload", "says"),
    [
        ([], "JSON object"),
        ({"version": "3", "alerts": []}, "version"),
        ({"version": "4", "alerts": []}, "non-empty list"),
        ({"version": "4", "alerts": [{"labels": {"alertname": ""}}]}, "alertname"),
        ({"version": "4", "alerts": [{"labels": {"alertname": "A"}, "startsAt": "t", "status": "x"}]}, "fingerprint"),
        (
            {
                "version": "4",
                "alerts": [{"labels": {"alertname": "A"}, "fingerprint": "f", "startsAt": "t", "status": "x"}],
            },
            "firing or resolved",
        ),
    ],
)
def test_a_malformed_notification_names_its_field(payload, says):
    with pytest.raises(T.BadNotification, match=says):
        T.parse_notification(payload)


def _alert(name: str, fingerprint: str = "f1", starts_at: str = "2026-01-01T00:00:00Z") -> T.FiredAlert:
    return T.FiredAlert(name, fingerprint, starts_at, "firing", {"alertname": name})


def test_guards_in_order_on_a_real_store(tmp_path):
    store = open_store(f"sqlite:///{tmp_path / 'loop.db'}")
    never = ("/bin/false-never-run",)  # a start would fail loudly: these cases must not start anything
    settings = T.TriggerSettings(tmp_path, cooldown_seconds=60, min_new_labels=1, daily_cap=1, command=never)
    trigger = T.Trigger(settings, store)
    store.record_decision("DataDriftPSI", T.STARTED, {"starts_at": "s0"}, fingerprint="f1", time=time.time() - 10)
    assert trigger.handle([_alert("ModelServerDown")])[0].outcome == T.PAGED
    assert trigger.handle([_alert("DataDriftPSI", "f1", "s0")])[0].outcome == T.DUPLICATE
    cooled = trigger.handle([_alert("DataDriftPSI", "f2")])[0]
    assert cooled.outcome == T.SKIPPED_COOLDOWN and 49 < cooled.detail["seconds_left"] <= 50
    with T.retrain_lock(settings.lock_path):  # a retraining by hand holds the lock
        assert trigger.handle([_alert("LiveAccuracyDrop", "f3")])[0].outcome == T.SKIPPED_BUSY
    capped = T.Trigger(T.TriggerSettings(tmp_path, cooldown_seconds=0, daily_cap=1, command=never), store)
    assert capped.handle([_alert("DataDriftPSI", "f4")])[0].outcome == T.SKIPPED_DAILY_CAP
    few = T.Trigger(T.TriggerSettings(tmp_path, cooldown_seconds=0, daily_cap=5, command=never), store)
    skipped = few.handle([_alert("DataDriftPSI", "f5")])[0]
    assert skipped.outcome == T.SKIPPED_FEW_ROWS and skipped.detail["needed"] == T.MIN_NEW_LABELS
    assert [d.decision for d in store.decisions(limit=10)][:6] == [
        T.SKIPPED_FEW_ROWS,
        T.SKIPPED_DAILY_CAP,
        T.SKIPPED_BUSY,
        T.SKIPPED_COOLDOWN,
        T.DUPLICATE,
        T.PAGED,
    ]
    store.close()
