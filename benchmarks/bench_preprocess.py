"""Benchmark: validate + preprocess the raw file end to end, in-process, N times; print a table.

Measures what `msml preprocess` does after its imports (interpreter start and imports excluded):
load → validate → clean → split → fit_transform → write, using the per-step timings that
`msml.data.preprocessing.preprocess` returns, plus the wall time of the whole call. The target is a
total of 3.0 s for the 48,842-row Adult file.

    .venv/bin/python benchmarks/bench_preprocess.py [--runs 5] [--raw CSV] [--contract YAML] [--target 3.0]

Exit code 1 when the median total misses the target.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from msml.config import load_settings
from msml.data.preprocessing import preprocess

STEPS = ("load", "validate", "clean", "split", "fit_transform", "write")
DEFAULT_TARGET_SECONDS = 3.0


def run(raw: Path, contract, runs: int) -> tuple[list[dict[str, float]], list[float], dict]:
    """Preprocess `runs` times into fresh temp dirs; returns per-run step timings, wall times, last report."""
    step_times, wall_times, report = [], [], {}
    for _ in range(runs):
        with tempfile.TemporaryDirectory(prefix="msml_bench_") as tmp:
            start = time.perf_counter()
            report, timings = preprocess(raw, Path(tmp) / "out", contract)
            wall_times.append(time.perf_counter() - start)
            step_times.append(timings)
    return step_times, wall_times, report


def table(step_times: list[dict[str, float]], wall_times: list[float], target: float) -> tuple[str, bool]:
    rows = [(step, [t[step] for t in step_times]) for step in STEPS]
    rows.append(("total", wall_times))
    lines = [f"{'step':<14} {'median s':>9} {'min s':>8} {'target s':>9}  result", "-" * 50]
    passed = statistics.median(wall_times) <= target
    for step, values in rows:
        if step == "total":
            lines.append("-" * 50)
            verdict = f"{target:>9.2f}  {'PASS' if passed else 'FAIL'}"
        else:
            verdict = f"{'':>9}"
        lines.append(f"{step:<14} {statistics.median(values):>9.3f} {min(values):>8.3f} {verdict}")
    return "\n".join(lines), passed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--raw", type=Path, default=None, help="raw CSV (default: the contract's raw file)")
    parser.add_argument("--contract", type=Path, default=None)
    parser.add_argument("--target", type=float, default=DEFAULT_TARGET_SECONDS, help="seconds, median total")
    args = parser.parse_args(argv)

    settings = load_settings(contract_path=args.contract)
    raw = args.raw or settings.raw_path
    step_times, wall_times, report = run(raw, settings.contract, args.runs)
    text, passed = table(step_times, wall_times, args.target)
    print(
        f"preprocess benchmark: {raw} ({report['rows_in']} rows → {report['train_rows']} train / "
        f"{report['test_rows']} test, {len(report['features_out'])} features), {args.runs} runs, in-process"
    )
    print(text)
    print("total = wall time of preprocess() (validate included); imports and interpreter start excluded")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
