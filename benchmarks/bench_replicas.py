"""The gateway in front of 1 vs 2 model-server replicas, side by side in one run.

    flock /tmp/msml-bench.lock .venv/bin/python benchmarks/bench_replicas.py [--duration 10] [--concurrency 32]
        [--workdir DIR]   (a `bench_gateway.py --prepare --workdir DIR` model is reused)

Builds the champion as `bench_gateway.py` does, starts two `mlflow models serve` processes (1 gunicorn worker
each) and two gateways: one in front of the first server, one in front of both (`--model-url` twice). Drives
both gateways with `bench_gateway.py`'s client process (1-row requests of real test-split rows, closed loop),
alternating the targets in half-second slices so both see the same machine, and prints throughput, p50/p95/p99,
errors, each replica's share of the model calls (the gateway's own counter) and the load average. On 2 cores
the second replica competes with the gateway and the client for CPU: the table says what that buys here.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_gateway import prepare_model, request_bodies, run_client  # noqa: E402


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per target and concurrency")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[32])
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()

    import httpx

    from msml.data.contract import Contract
    from msml.monitoring import metrics as M
    from msml.ops.processes import stop_process
    from msml.serving.model_server import ModelServer
    from tests.integration.serving_fixtures import free_port, parse_metrics, start_gateway

    contract = Contract.load()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-replicas-"))
    model = prepare_model(work, contract)
    _, _, bodies_file = request_bodies(work, contract)
    servers = [
        ModelServer(model.uri, model.tracking_uri, free_port(), work / f"model-server-{i}.log", workers=1)
        for i in (1, 2)
    ]
    gateways: dict[str, str] = {}
    procs = []
    try:
        for server in servers:
            server.start(wait=None)
        for server in servers:
            server.wait_ready(180)
        for n in (1, 2):
            urls = [a for s in servers[:n] for a in ("--model-url", s.url)]
            proc, url = start_gateway(
                urls[1], model.tracking_uri, work / f"gateway-{n}.log", *urls[2:], "--model-uri", ""
            )
            procs.append(proc)
            gateways[f"{n} replica{'s' if n > 1 else ''}"] = url
        run_client(list(gateways.values()), 4, 1.0, bodies_file, warmup=2.0)  # the servers' first calls are slow
        print(f"load average before: {load_average()} (1, 5, 15 min; {os.cpu_count()} cores)", flush=True)
        rows = []
        for c in args.concurrency:
            before = {url: parse_metrics(httpx.get(f"{url}/metrics").text) for url in gateways.values()}
            measured = run_client(list(gateways.values()), c, args.duration, bodies_file)
            for (name, url), r in zip(gateways.items(), measured, strict=True):
                after = parse_metrics(httpx.get(f"{url}/metrics").text)
                sent = [
                    after.get((M.MODEL_REPLICA_CALLS, ((M.REPLICA, s.url),)), 0)
                    - before[url].get((M.MODEL_REPLICA_CALLS, ((M.REPLICA, s.url),)), 0)
                    for s in servers
                ]
                share = " / ".join(f"{100 * x / max(1, sum(sent)):.0f}" for x in sent[: int(name[0])])
                rows.append((name, c, r, share))
        print(f"load average after:  {load_average()}\n")
        print("| gateway → | c | req/s | p50 ms | p95 ms | p99 ms | errors | model calls per replica % |")
        print("|---|---:|---:|---:|---:|---:|---:|---|")
        for name, c, r, share in rows:
            print(
                f"| {name} | {c} | {r['throughput']:.0f} | {r['p50']:.1f} | {r['p95']:.1f} | {r['p99']:.1f} "
                f"| {r['errors']} | {share} |"
            )
    finally:
        for proc in procs:
            stop_process(proc)
        for server in servers:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
