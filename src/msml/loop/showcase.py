"""The closed loop as `make demo` shows it (its last step), and as benchmarks/bench_loop.py times it.

After the demo's traffic: a drifted, labelled phase (real rows of one subpopulation, `SHIFT`, every answer followed by
its ground truth: `PHASE_REQUESTS` x `PHASE_BATCH_ROWS` = 2,400 rows, above the trigger's minimum of 1,822 labels);
the drift alert fires (the demo's stack holds every alert `DEMO_TIMING.for_override`, not 10 minutes); Alertmanager
calls the receiver, whose trigger starts `msml retrain` (`DEMO_LOOP_ENV`: 2 trials, labels collected at once); the
gate decides; if it promotes, the model server restarts and the gateway reports the new version. Every step is read
from where it happened: the decisions from the loop store, the figures from the retraining's result, the version
from the gateway's /health.
"""

from __future__ import annotations

import datetime as dt
import json
import time
import urllib.request
from dataclasses import replace

from msml.config import Settings
from msml.loop.trigger import ENDINGS, STARTED
from msml.monitoring.render import PRODUCTION

# The demo's monitoring timing: production scrapes and routing, alerts held 30 s instead of minutes, so the loop
# shows within the demo (a held alert is still one that persisted over two evaluations); a firing group is notified
# again every minute (not 4 h), so an alert a guard skipped (too few labels yet) is reconsidered once they arrived.
DEMO_TIMING = replace(PRODUCTION, for_override="30s", repeat_interval="1m")
# The receiver's loop settings in the demo (msml.loop.trigger.TriggerSettings.from_env): 2 Optuna trials (the search
# plateaus by ~5; 2 keep the retraining near a minute here), labels collected as soon as they arrive (loadgen sends
# them at once), and a cooldown that lets the demo's second alert (accuracy) show a guard at work.
DEMO_LOOP_ENV = {"MSML_LOOP_TRIALS": "2", "MSML_LOOP_HORIZON": "0", "MSML_LOOP_COOLDOWN_SECONDS": "900"}
PHASE_REQUESTS = 300
PHASE_BATCH_ROWS = 8
# The shift: only people aged 50 or more (a quarter of the test split), with their real labels. These rows repeat
# raw rows, so preprocessing drops them from the next training set (the frozen test split cannot leak into it):
# the demo shows the loop's mechanics on this dataset, which has no unseen rows to learn from.
SHIFT = ("age", 50)


def _health(gateway_url: str) -> dict:
    with urllib.request.urlopen(f"{gateway_url}/health", timeout=5) as resp:
        return json.loads(resp.read())


def _epoch(rfc3339: str) -> float | None:
    try:
        return dt.datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def drifted_phase(settings: Settings, gateway_url: str, echo=print) -> None:
    """Send the drifted, labelled rows: real test-split rows of one subpopulation (`SHIFT`), each answer followed by
    its true label. A covariate shift by selection is the only drift whose ground truth is known: a row whose
    values were moved (loadgen's --drift-share) has none, so it can never be labelled."""
    import asyncio

    from msml.ops.loadgen import load_test_rows, run_load

    rows, truths = load_test_rows(settings.processed_dir, settings.contract)
    column, low = SHIFT
    chosen = [i for i, r in enumerate(rows) if r[column] is not None and r[column] >= low]
    report = asyncio.run(
        run_load(
            gateway_url,
            [rows[i] for i in chosen],
            [truths[i] for i in chosen],
            concurrency=4,
            count=PHASE_REQUESTS,
            batch_rows=PHASE_BATCH_ROWS,
            feedback=True,
        )
    )
    echo(
        f"      {report.ok * PHASE_BATCH_ROWS} rows of {column} >= {low} scored ({len(chosen)} distinct test rows), "
        f"{report.feedback_sent} labels sent, {report.errors} errors"
    )


def follow(settings: Settings, gateway_url: str, since: float, echo=print, timeout: float = 600.0) -> dict:
    """Print the loop's decisions (from the store) as they are taken after `since`, until a retraining ends (and,
    if promoted, the gateway serves it) or `timeout`; the timeline in epoch seconds and what was decided."""
    from msml.loop.store import open_store

    store = open_store(settings.loop_store)
    shown: set[int] = set()
    timeline: dict = {"phase": since}
    ended = None
    deadline = time.monotonic() + timeout
    try:
        while ended is None and time.monotonic() < deadline:
            for d in reversed(store.decisions(limit=50, since=since)):
                if d.id in shown:
                    continue
                shown.add(d.id)
                figures = {k: v for k, v in d.detail.items() if k in ("new_labels", "needed", "seconds_left", "why")}
                echo(f"      {d.reason}: {d.decision} {figures if figures else ''}".rstrip())
                if d.decision == STARTED and "started" not in timeline:
                    timeline["fired"] = _epoch(d.detail.get("starts_at", ""))
                    timeline["started"] = d.time
                if d.decision in ENDINGS:
                    ended, timeline["ended"] = d, d.time
            time.sleep(1.0)
    finally:
        store.close()
    if ended is None:
        echo(f"      no retraining ended within {timeout:.0f} s (`msml loop status` shows the decisions)")
        return {"timeline": timeline, "outcome": None}
    detail = ended.detail
    echo(f"      gate: {detail.get('gate_summary', '')}")
    echo(f"      seconds per step: {detail.get('seconds', {})}")
    if ended.decision == "promoted":
        version = str(detail.get("champion_after"))
        while time.monotonic() < deadline:
            if str((_health(gateway_url).get("model") or {}).get("version")) == version:
                timeline["serving"] = time.time()
                echo(f"      the gateway serves v{version} (its drift reference: the new champion's training data)")
                echo(
                    f"      labelled phase started → retraining started {timeline['started'] - since:.1f} s → new "
                    f"champion serving {timeline['serving'] - timeline['started']:.1f} s later"
                )
                break
            time.sleep(0.5)
    return {"timeline": timeline, "outcome": ended.decision, "detail": detail}
