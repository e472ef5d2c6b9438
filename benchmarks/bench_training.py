"""Baseline training and tuning, timed, with the ROC-AUC reached against trials and seconds.

    .venv/bin/python benchmarks/bench_training.py [--trials 20] [--seed 42]

Runs in a temp tracking store on the committed processed dataset (run `msml preprocess` first):
the LogisticRegression baseline (autolog) beside the tuned HistGradientBoosting, then prints the
best CV ROC-AUC after each trial with elapsed seconds, and the tuned model's test metrics.
Targets (issue 3): baseline <= 30 s; tuning at the default budget <= 180 s; test ROC-AUC >= 0.930
and accuracy >= 0.872.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    from msml.config import load_settings
    from msml.training import train_baseline
    from msml.config import DEFAULT_TRIALS
    from msml.tuning import tune

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=DEFAULT_TRIALS)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(root=tmp).with_overrides(
            processed_dir=ROOT / "data" / "adult_preprocessing", tracking_uri=f"sqlite:///{tmp}/bench.db",
            artifact_root=Path(tmp) / "artifacts")
        started = time.perf_counter()
        baseline = train_baseline(settings, seed=args.seed)
        baseline_seconds = time.perf_counter() - started

        trace: list[tuple[int, float, float]] = []
        started = time.perf_counter()

        def progress(line: str) -> None:
            if line.strip().startswith("trial "):
                best = float(line.split("(best ")[1].split(")")[0])
                trace.append((len(trace) + 1, time.perf_counter() - started, best))

        tuned = tune(settings, n_trials=args.trials, seed=args.seed, progress=progress)
        tuning_seconds = time.perf_counter() - started

    print(f"\ntraining benchmark ({args.trials} trials, seed {args.seed}, 3-fold CV on the train split)")
    print(f"{'model':28} {'seconds':>8} {'test ROC-AUC':>13} {'test accuracy':>14} {'target s':>9} result")
    rows = [("baseline LogisticRegression", baseline_seconds, baseline.metrics, 30.0),
            ("tuned HistGradientBoosting", tuning_seconds, tuned.metrics, 180.0)]
    ok = True
    for name, seconds, metrics, target in rows:
        passed = seconds <= target
        ok &= passed
        print(f"{name:28} {seconds:8.1f} {metrics['test_roc_auc']:13.4f} {metrics['test_accuracy']:14.4f} "
              f"{target:9.0f} {'PASS' if passed else 'FAIL'}")
    quality = tuned.metrics["test_roc_auc"] >= 0.930 and tuned.metrics["test_accuracy"] >= 0.872
    print(f"quality target (ROC-AUC >= 0.930, accuracy >= 0.872): {'PASS' if quality else 'FAIL'}")
    print(f"\n{'trial':>5} {'seconds':>8} {'best CV ROC-AUC':>16}")
    for trial, seconds, best in trace:
        print(f"{trial:5d} {seconds:8.1f} {best:16.4f}")
    return 0 if ok and quality else 1


if __name__ == "__main__":
    sys.exit(main())
