"""CPU cost of the model itself: rows per CPU-second of `pyfunc.predict` at the gateway's batch sizes.

    flock /tmp/msml-bench.lock .venv/bin/python benchmarks/bench_model_cost.py MODEL_DIR_OR_URI

The model server's work per batch is this predict plus HTTP/JSON handling: the second table is the whole
/invocations call in MLflow's own scoring app (Flask, MLflow's parsing, then pyfunc.predict; in process, so
without gunicorn's socket work) for the body the gateway sends (columnar `inputs`, rows without a missing
value). docs/SCALING.md's capacity model takes rows per core from here. CPU time (process_time), not wall
time, so a busy shared machine slows the run but does not change the figure much.
"""

from __future__ import annotations

import json
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
    scoring_calls(model, rows.dropna(), contract.features)
    return 0


def scoring_calls(model, rows, features: list[str]) -> None:
    """CPU per /invocations call of MLflow's scoring app, as the gateway calls it (Upstream.body)."""
    from mlflow.pyfunc import scoring_server

    client = scoring_server.init(model).test_client()
    print(f"\n{'call rows':>10} {'calls':>8} {'CPU s':>7} {'rows/CPU-s':>11} {'CPU ms/call':>13}  (whole /invocations)")
    for batch in (1, 8, 32, 128, 256):
        n = max(20, 4000 // batch)
        sample = rows.sample(batch, random_state=0).astype(object)
        body = json.dumps({"inputs": {f: sample[f].tolist() for f in features}}, default=int)
        if client.post("/invocations", data=body, content_type="application/json").status_code != 200:
            raise SystemExit(f"the scoring app refused the {batch}-row body")  # (that call was the warm-up)
        cpu = time.process_time()
        for _ in range(n):
            client.post("/invocations", data=body, content_type="application/json")
        cpu = time.process_time() - cpu
        print(f"{batch:>10} {n:>8} {cpu:>7.2f} {n * batch / cpu:>11.0f} {cpu / n * 1000:>13.2f}")


if __name__ == "__main__":
    sys.exit(main())
