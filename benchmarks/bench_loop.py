"""The closed loop's latency: from the drift alert firing to the new champion serving, on `make demo`'s stack.

    make demo            # leaves the stack running (its last step already runs the loop once)
    flock /tmp/msml-bench.lock .venv/bin/python benchmarks/bench_loop.py [--replicas-note]

Runs the demo's loop phase again against the running stack (msml.loop.showcase: 2,400 rows of one subpopulation,
each with its ground truth) and reads each instant from where it happened: the alert's firing time (`startsAt`, which
Prometheus sets when the alert fires, carried by Alertmanager's notification), the receiver's `started` decision
and the retraining's ending (both from the loop store), the retraining's own step times (collect + preprocess,
tune, register + gate, rollout), and the first /health of the gateway that reports the new version. Prints one
table. The receiver's cooldown (the demo's: 900 s) applies: run it 15 minutes after the demo's loop, or start the
stack with MSML_LOOP_COOLDOWN_SECONDS=0 in the receiver's environment; a skipped alert is printed as such.
"""

from __future__ import annotations

import argparse
import sys
import time


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gateway", default=None, help="Gateway URL (default: the demo's).")
    parser.add_argument("--timeout", type=float, default=900.0, help="Seconds to wait for the retraining.")
    args = parser.parse_args()

    from msml.config import DEFAULT_PORTS, load_settings, local_url
    from msml.loop import showcase

    settings = load_settings()
    gateway = args.gateway or local_url(DEFAULT_PORTS.gateway)
    phase = time.time()
    showcase.drifted_phase(settings, gateway)
    result = showcase.follow(settings, gateway, since=phase, timeout=args.timeout)
    t = result["timeline"]
    if result["outcome"] is None or "started" not in t:
        print("no retraining started and ended in time: see the decisions above", file=sys.stderr)
        return 1
    steps = result["detail"].get("seconds", {})
    fired_in_phase = t["fired"] is not None and t["fired"] >= t["phase"]
    rows = [
        ("labelled phase started → alert fired", t["fired"] - t["phase"] if fired_in_phase else None),
        ("alert fired → receiver started msml retrain", t["started"] - t["fired"] if fired_in_phase else None),
        ("labelled phase started → receiver started msml retrain", t["started"] - t["phase"]),
        ("  collect + preprocess (retrain's own)", steps.get("data")),
        ("  tune (retrain's own)", steps.get("train")),
        ("  register + gate (retrain's own)", steps.get("gate")),
        ("  rollout: replicas restarted (retrain's own)", steps.get("rollout")),
        ("started → retraining ended", t["ended"] - t["started"]),
        ("ended → gateway serves the new version", t["serving"] - t["ended"] if "serving" in t else None),
        (
            "alert fired → new champion serving",
            t["serving"] - t["fired"] if fired_in_phase and "serving" in t else None,
        ),
        ("receiver started → new champion serving", t["serving"] - t["started"] if "serving" in t else None),
    ]
    if not fired_in_phase:
        # an alert a guard had skipped (too few labels) is reconsidered when its group is notified again: it fired
        # before this phase, so "alert fired" times would count the wait for labels, not the loop
        print("the retraining alert fired before the phase (skipped then, reconsidered now): its times are left out")
    print(f"\noutcome: {result['outcome']}")
    print(f"{'step':56s} {'seconds':>9s}")
    for name, seconds in rows:
        print(f"{name:56s} {'-' if seconds is None else f'{seconds:9.1f}':>9s}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
