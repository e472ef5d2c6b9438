"""Distributed tuning: 1 vs 2 worker processes on one Optuna study in PostgreSQL, side by side.

    flock /tmp/msml-bench.lock .venv/bin/python benchmarks/bench_tuning_workers.py [--trials 8] [--cv-folds 3]

Starts its own PostgreSQL cluster and `mlflow server` (msml.tracking.server, free ports, temp dir),
then runs the real `msml tune --storage postgresql://… --study … --workers N --no-register` for
N = 1 and N = 2 on the committed processed dataset. From the study's own trial timestamps it
prints trials per minute of search, the best CV ROC-AUC, and the seconds each set-up took to first
reach the same target (the lower of the two best scores, so both reach it), plus the command's
wall time (start-up, search, refit, logging).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_tune(workers: int, storage: str, url: str, home: Path, trials: int, folds: int) -> dict:
    import optuna

    study_name = f"bench-{workers}w-{int(time.time())}"
    env = {
        **os.environ,
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "MSML_HOME": str(home),
        "MLFLOW_TRACKING_URI": url,
        "MSML_PROCESSED": str(ROOT / "data" / "adult_preprocessing"),
    }
    started = time.time()
    result = subprocess.run(
        [
            str(BIN / "msml"),
            "tune",
            "--n-trials",
            str(trials),
            "--cv-folds",
            str(folds),
            "--storage",
            storage,
            "--study",
            study_name,
            "--workers",
            str(workers),
            "--no-register",
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.time() - started
    if result.returncode != 0:
        raise SystemExit(f"msml tune --workers {workers} failed:\n{result.stdout}\n{result.stderr}")
    trials_done = optuna.load_study(study_name=study_name, storage=storage).get_trials(deepcopy=False)
    first_start = min(t.datetime_start for t in trials_done).timestamp()
    last_end = max(t.datetime_complete for t in trials_done).timestamp()
    completions = sorted((t.datetime_complete.timestamp() - started, t.value) for t in trials_done)
    return {
        "workers": workers,
        "wall": wall,
        "search": last_end - first_start,
        "n": len(trials_done),
        "best": max(v for _, v in completions),
        "completions": completions,
        "pids": len({t.user_attrs["worker_pid"] for t in trials_done}),
    }


def seconds_to(completions: list[tuple[float, float]], target: float) -> float:
    return next(at for at, value in completions if value >= target)


def main() -> int:
    from msml.tracking import server as tracking_server

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--cv-folds", type=int, default=3)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="msml-bench-tuning-"))
    tmp.chmod(0o755)  # the cluster runs as the `postgres` user, which must reach its folder
    run_dir = tmp / ".run"
    started = tracking_server.up(run_dir, port=free_port(), postgres_port=free_port())
    try:
        rows = [
            run_tune(n, started.optuna_storage, started.url, tmp / f"home{n}", args.trials, args.cv_folds)
            for n in (1, 2)
        ]
    finally:
        tracking_server.down(run_dir)
        shutil.rmtree(tmp, ignore_errors=True)
    target = min(r["best"] for r in rows)
    load = os.getloadavg()
    print(
        f"\ntuning workers benchmark: {args.trials} trials, {args.cv_folds}-fold CV, full Adult train split, "
        f"{os.cpu_count()} cores (load average after: {load[0]:.1f})"
    )
    print(
        f"{'workers':>7} {'pids':>4} {'trials':>6} {'search s':>9} {'trials/min':>10} {'best CV AUC':>11} "
        f"{'s to ' + format(target, '.4f'):>11} {'command s':>9}"
    )
    for r in rows:
        print(
            f"{r['workers']:>7} {r['pids']:>4} {r['n']:>6} {r['search']:>9.1f} {r['n'] / r['search'] * 60:>10.2f} "
            f"{r['best']:>11.4f} {seconds_to(r['completions'], target):>11.1f} {r['wall']:>9.1f}"
        )
    speedup = (rows[1]["n"] / rows[1]["search"]) / (rows[0]["n"] / rows[0]["search"])
    print(f"throughput ratio 2 vs 1 workers: {speedup:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
