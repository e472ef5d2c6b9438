"""CPU cost of the model itself: rows per CPU-second of `pyfunc.predict` at the gateway's batch sizes.

    flock /tmp/msml-bench.lock .venv/bin/python benchmarks/bench_model_cost.py MODEL_DIR_OR_URI

The model server's work per batch is this predict plus HTTP/JSON handling; docs/SCALING.md's
capacity model takes rows per core from here. CPU time (process_time), not wall time, so a busy
shared machine slows the run but does not change the figure much.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    import mlflow

    from msml.data.contract import Contract
    from msml.data.preprocessing import load_clean_splits

    contract = Contract.load()
    model = mlflow.pyfunc.load_model(sys.argv[1])
    _, test = load_clean_splits(ROOT / "data" / f"{contract.name}_preprocessing", contract)
    rows = test[contract.features]
    print(f"{'batch rows':>10} {'batches':>8} {'CPU s':>7} {'rows/CPU-s':>11} {'CPU ms/batch':>13}")
    for batch in (1, 8, 32, 256):
        n = max(20, 4000 // batch)
        frames = [rows.sample(batch, random_state=i) for i in range(n)]
        model.predict(frames[0])  # warm-up
        cpu = time.process_time()
        for frame in frames:
            model.predict(frame)
        cpu = time.process_time() - cpu
        print(f"{batch:>10} {n:>8} {cpu:>7.2f} {n * batch / cpu:>11.0f} {cpu / n * 1000:>13.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
