"""From an alert to a retraining, behind guards: which alerts retrain, and whether this one may now.

Alertmanager POSTs its webhook to the receiver (msml.monitoring.receiver), which hands the firing alerts to
`Trigger.handle`. Each alert gets one decision, recorded in the loop's store (msml.loop.store, `record_decision`)
with the figures its guard compared; the store is also the guards' memory (was this alert seen, when did the
last retraining start, how many today), so it survives a receiver restart. In this order:

  paged             the alert is not one that retraining can fix (data quality, the loop's own alerts): a person
  duplicate         this alert (fingerprint + start time) already started a retraining — Alertmanager re-sends a
                    firing alert every group/repeat interval, and a retry after a lost answer looks the same
  skipped-busy      a retraining is running (the lock below is held): at most one at a time
  skipped-cooldown  the last retraining started less than `cooldown_seconds` ago
  skipped-daily-cap `daily_cap` retrainings started in the last 24 h
  skipped-few-rows  fewer than `min_new_labels` labelled rows arrived since the last retraining started
  started           `command` is spawned; when it ends, a second decision records promoted, rejected-by-gate or failed

The fingerprint alone is not the key: an alert that resolves and fires again keeps its fingerprint (it is a hash
of the labels) but is a new incident with a new `startsAt`.

The lock is an flock on `<run_dir>/loop/retrain.lock` that `msml retrain` holds while it runs, so a retraining
started by hand counts too, and a receiver restart cannot start a second one beside a live one.

Why `min_new_labels` defaults to 1,822: a retraining is worth its cost only when the new labels can show that
accuracy moved. With the champion's accuracy p0 = 0.87 (Adult, test split) and a drop of d = 2 points to
p1 = 0.85, a one-sided test of one proportion at significance alpha = 0.05 with power 0.8 needs
    n = ((z_(1-alpha) * sqrt(p0 (1 - p0)) + z_power * sqrt(p1 (1 - p1))) / d)^2
      = ((1.6449 * 0.3363 + 0.8416 * 0.3571) / 0.02)^2 = 1,821.96  ->  1,822 labelled rows
(`min_labels_for_drop` computes it; fewer rows and a 2-point drop is more likely than not to be lost in noise).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist

from msml.loop.store import LoopStore

# The outcomes a decision can have (the `outcome` label of msml_retrain_decisions_total). A started retraining
# gets a second record when it ends: promoted, rejected-by-gate or failed.
STARTED = "started"
DUPLICATE = "duplicate"
SKIPPED_COOLDOWN = "skipped-cooldown"
SKIPPED_FEW_ROWS = "skipped-few-rows"
SKIPPED_BUSY = "skipped-busy"
SKIPPED_DAILY_CAP = "skipped-daily-cap"
PAGED = "paged"  # an alert that retraining cannot fix (data quality, the loop's own): a person looks
PROMOTED = "promoted"
REJECTED = "rejected-by-gate"
FAILED = "failed"
ENDINGS = (PROMOTED, REJECTED, FAILED)

# The alerts retraining answers (msml.monitoring.definitions): the inputs moved, or the answers got worse.
RETRAIN_ALERTS = ("DataDriftPSI", "LiveAccuracyDrop")
DAY = 86_400.0


def min_labels_for_drop(accuracy: float = 0.87, drop: float = 0.02, alpha: float = 0.05, power: float = 0.8) -> int:
    """Labelled rows needed to detect an accuracy drop of `drop` from `accuracy` (one-sided test of one
    proportion at significance `alpha` with `power`); the derivation is in the module docstring."""
    z = NormalDist().inv_cdf
    p0, p1 = accuracy, accuracy - drop
    spread = z(1 - alpha) * math.sqrt(p0 * (1 - p0)) + z(power) * math.sqrt(p1 * (1 - p1))
    return math.ceil((spread / drop) ** 2)


MIN_NEW_LABELS = min_labels_for_drop()


def retrain_command() -> tuple[str, ...]:
    """`msml retrain` in this interpreter (the receiver appends --reason, --fingerprint and --result)."""
    return (sys.executable, "-m", "msml.cli", "retrain")


@dataclass(frozen=True)
class TriggerSettings:
    """Every guard's setting and the retraining's options; `from_env` reads the `MSML_LOOP_*` overrides
    (COOLDOWN_SECONDS, MIN_NEW_LABELS, DAILY_CAP, TRIALS, HORIZON, RETRAIN_ALERTS: the demo shrinks them)."""

    run_dir: Path
    retrain_alerts: tuple[str, ...] = RETRAIN_ALERTS
    cooldown_seconds: float = 3600.0
    min_new_labels: int = MIN_NEW_LABELS
    daily_cap: int = 6
    command: tuple[str, ...] = field(default_factory=retrain_command)
    trials: int | None = None  # `msml retrain --trials` (None: its default)
    horizon: float | None = None  # `msml retrain --horizon`: label delay allowed before a row is collected

    @property
    def loop_dir(self) -> Path:
        return self.run_dir / "loop"

    @property
    def lock_path(self) -> Path:
        return self.loop_dir / "retrain.lock"

    @classmethod
    def from_env(cls, run_dir: Path, env: Mapping[str, str] | None = None) -> TriggerSettings:
        env = os.environ if env is None else env
        s = cls(run_dir=Path(run_dir))
        changes: dict = {}
        if env.get("MSML_LOOP_COOLDOWN_SECONDS"):
            changes["cooldown_seconds"] = float(env["MSML_LOOP_COOLDOWN_SECONDS"])
        if env.get("MSML_LOOP_MIN_NEW_LABELS"):
            changes["min_new_labels"] = int(env["MSML_LOOP_MIN_NEW_LABELS"])
        if env.get("MSML_LOOP_DAILY_CAP"):
            changes["daily_cap"] = int(env["MSML_LOOP_DAILY_CAP"])
        if env.get("MSML_LOOP_TRIALS"):
            changes["trials"] = int(env["MSML_LOOP_TRIALS"])
        if env.get("MSML_LOOP_HORIZON"):
            changes["horizon"] = float(env["MSML_LOOP_HORIZON"])
        if env.get("MSML_LOOP_RETRAIN_ALERTS"):
            changes["retrain_alerts"] = tuple(a.strip() for a in env["MSML_LOOP_RETRAIN_ALERTS"].split(",") if a)
        return cls(**{**s.__dict__, **changes})


# --- the lock -------------------------------------------------------------------------------------------------


class Busy(Exception):
    """Another retraining holds the lock."""


@contextlib.contextmanager
def retrain_lock(path: str | Path) -> Iterator[None]:
    """Hold the one-retraining-at-a-time lock for the block; Busy at once when another process holds it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Busy(f"a retraining holds {path}") from None
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def lock_held(path: str | Path) -> bool:
    try:
        with retrain_lock(path):
            return False
    except Busy:
        return True


# --- Alertmanager's webhook payload ----------------------------------------------------------------------------


class BadNotification(ValueError):
    """The body is not an Alertmanager webhook notification (version 4)."""


@dataclass(frozen=True)
class FiredAlert:
    name: str
    fingerprint: str
    starts_at: str
    status: str
    labels: dict[str, str]

    @property
    def key(self) -> str:
        return f"{self.fingerprint}@{self.starts_at}"


def parse_notification(payload: object) -> list[FiredAlert]:
    """The alerts of one notification; BadNotification naming the first field that is wrong."""
    if not isinstance(payload, dict):
        raise BadNotification("the body must be a JSON object (Alertmanager's webhook notification)")
    if payload.get("version") != "4":
        raise BadNotification(f'version must be "4" (Alertmanager\'s webhook format), got {payload.get("version")!r}')
    alerts = payload.get("alerts")
    if not isinstance(alerts, list) or not alerts:
        raise BadNotification("'alerts' must be a non-empty list")
    out = []
    for i, a in enumerate(alerts):
        if not isinstance(a, dict):
            raise BadNotification(f"alerts[{i}] must be an object")
        labels = a.get("labels")
        if not isinstance(labels, dict) or not isinstance(labels.get("alertname"), str) or not labels["alertname"]:
            raise BadNotification(f"alerts[{i}].labels.alertname must be a non-empty string")
        for name in ("fingerprint", "startsAt", "status"):
            if not isinstance(a.get(name), str) or not a[name]:
                raise BadNotification(f"alerts[{i}].{name} must be a non-empty string")
        if a["status"] not in ("firing", "resolved"):
            raise BadNotification(f"alerts[{i}].status must be firing or resolved, got {a['status']!r}")
        out.append(FiredAlert(labels["alertname"], a["fingerprint"], a["startsAt"], a["status"], {**labels}))
    return out


@dataclass(frozen=True)
class Decision:
    """What was decided about one alert (as recorded in the store)."""

    reason: str
    fingerprint: str
    outcome: str
    detail: dict
    time: float
    run_id: str | None = None
    model_version: str | None = None


# --- the trigger -----------------------------------------------------------------------------------------------


class Trigger:
    """Decides about each firing alert and starts at most one retraining (see the module docstring).

    `store` records the decisions and counts the new labels; `on_decision` sees every decision once it is
    recorded (the receiver counts them as metrics); `env` is the retraining's environment."""

    def __init__(
        self,
        settings: TriggerSettings,
        store: LoopStore,
        on_decision: Callable[[Decision], None] = lambda _: None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.on_decision = on_decision
        self.env = dict(os.environ if env is None else env)
        self._lock = threading.Lock()
        self._child: subprocess.Popen | None = None
        self._watcher: threading.Thread | None = None

    def _record(self, decision: Decision) -> Decision:
        self.store.record_decision(
            decision.reason,
            decision.outcome,
            decision.detail,
            fingerprint=decision.fingerprint,
            run_id=decision.run_id,
            model_version=decision.model_version,
            time=decision.time,
        )
        self.on_decision(decision)
        return decision

    def running(self) -> bool:
        return (self._child is not None and self._child.poll() is None) or lock_held(self.settings.lock_path)

    def handle(self, alerts: Sequence[FiredAlert]) -> list[Decision]:
        """One decision per firing alert (resolved ones need none), made one at a time."""
        with self._lock:
            return [self._decide(a) for a in alerts if a.status == "firing"]

    def _decide(self, alert: FiredAlert) -> Decision:
        s, now = self.settings, time.time()

        def decision(outcome: str, **detail) -> Decision:
            detail = {"starts_at": alert.starts_at, **detail}
            return self._record(Decision(alert.name, alert.fingerprint, outcome, detail, now))

        if alert.name not in s.retrain_alerts:
            return decision(PAGED, why=f"{alert.name} is not one of {', '.join(s.retrain_alerts)}")
        seen = self.store.decisions(limit=1000, fingerprint=alert.fingerprint, decision=STARTED)
        if any(p.detail.get("starts_at") == alert.starts_at for p in seen):
            return decision(DUPLICATE, why="this alert already started a retraining")
        if self.running():
            return decision(SKIPPED_BUSY, why="a retraining is running")
        starts = [p.time for p in self.store.decisions(limit=s.daily_cap + 1, since=now - DAY, decision=STARTED)]
        last_ever = self.store.decisions(limit=1, decision=STARTED)
        last = last_ever[0].time if last_ever else None
        if last is not None and now - last < s.cooldown_seconds:
            return decision(SKIPPED_COOLDOWN, seconds_left=round(s.cooldown_seconds - (now - last), 1))
        if len(starts) >= s.daily_cap:
            return decision(SKIPPED_DAILY_CAP, started_today=len(starts), daily_cap=s.daily_cap)
        rows = self.store.labelled_since(last or 0.0)
        if rows < s.min_new_labels:
            return decision(SKIPPED_FEW_ROWS, new_labels=rows, needed=s.min_new_labels)
        started = decision(STARTED, new_labels=rows)
        self._start(alert, started)
        return started

    def _start(self, alert: FiredAlert, started: Decision) -> None:
        s = self.settings
        stamp = f"{int(started.time * 1000)}"
        result, log = s.loop_dir / f"retrain-{stamp}.json", s.loop_dir / f"retrain-{stamp}.log"
        cmd = [*s.command, "--reason", alert.name, "--fingerprint", alert.fingerprint, "--result", str(result)]
        cmd += [] if s.trials is None else ["--trials", str(s.trials)]
        cmd += [] if s.horizon is None else ["--horizon", f"{s.horizon:g}"]
        s.loop_dir.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            child = self._child = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env
            )
        self._watcher = threading.Thread(
            target=self._await_end, args=(child, alert, result, log), name="retrain-watch", daemon=True
        )
        self._watcher.start()

    def _await_end(self, child: subprocess.Popen, alert: FiredAlert, result: Path, log: Path) -> None:
        code = child.wait()
        try:
            body = json.loads(result.read_text())
        except (OSError, ValueError):
            body = {}
        outcome = body.get("outcome") if code == 0 else None
        if outcome not in ENDINGS:
            outcome, body = FAILED, {"exit_code": code, "log": str(log), **body}
        detail = {"starts_at": alert.starts_at, **body}
        self._record(
            Decision(
                alert.name,
                alert.fingerprint,
                outcome,
                detail,
                time.time(),
                run_id=body.get("run_id") or None,
                model_version=body.get("candidate") or None,
            )
        )

    def wait(self, timeout: float | None = None) -> None:
        """Block until the retraining this trigger started (if any) has ended and its ending is recorded."""
        if self._watcher is not None:
            self._watcher.join(timeout)
