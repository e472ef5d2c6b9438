"""Issue 27's false "model down": a model server kept busy by other clients, then the gateway's own load.

    .venv/bin/python benchmarks/bench_busy_model.py [--rounds 3] [--concurrency 64] [--workdir DIR]

Starts `mlflow models serve` (1 worker) and `msml gateway` (defaults: probe every 1 s) on free loopback ports,
then each round sends `--concurrency` closed-loop clients of 1-row requests straight at the model server for 5 s
and, at once after, as many at the gateway for 10 s (each phase a client process of its own, started at an
agreed wall-clock time: bench_gateway's raw HTTP/1.1 client). A third party pings the model server every 0.1 s
(5 s timeout) and records how long each /ping took. Prints per round: each phase's throughput, p99 and non-200
answers, the gateway's `model_down` refusals (from its /metrics), the /ping times, and the gateway's
up/DOWN log lines. Reuses bench_gateway's model (`--prepare` there, or trained here in --workdir).

Measured (LogisticRegression baseline, 3 rounds at c=64, 2 cores shared with other jobs, load average ~12): /ping
took 1.7-2.7 s (p50) during the direct phase. Before (probe gave up at 1 s, down after two): 8,870 / 11,194 /
10,753 `model_down` answers in the gateway phase, the gateway's log DOWN for 3.3-5.2 s. After (down only after
2 s with no answer of any kind; late pings count; one trial call at a time while down): 0 / 0 / 0, every gateway
answer 200 (its first requests wait behind the direct clients' backlog: p99 2.5 s in two rounds).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DIRECT_SECONDS, GATEWAY_SECONDS = 5.0, 10.0


def client_main(argv: list[str]) -> None:
    """`--client URL C START SECONDS BODIES`: C closed-loop clients from wall-clock START for SECONDS; JSON out."""
    from benchmarks.bench_gateway import _worker

    url, c, start, seconds, bodies_file = argv[0], int(argv[1]), float(argv[2]), float(argv[3]), argv[4]
    bodies = [line.encode() for line in Path(bodies_file).read_text().splitlines() if line]
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass

    async def main() -> dict:
        await asyncio.sleep(max(0.0, start - time.time()))
        u = urlparse(url)
        latencies: list[float] = []
        errors: dict[str, int] = {}
        t0 = time.perf_counter()
        await asyncio.gather(
            *(
                _worker(
                    [(u.hostname, u.port, "/invocations")],
                    [bodies],
                    j * 97,
                    t0 + seconds,
                    t0,
                    [latencies],
                    [errors],
                    [0.0],
                )
                for j in range(c)
            )
        )
        latencies.sort()
        p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] * 1000 if latencies else float("nan")
        return {"answers": len(latencies), "rps": len(latencies) / seconds, "p99": p99, "errors": errors}

    print(json.dumps(asyncio.run(main())))


def model_down(gateway: str) -> float:
    from msml.monitoring import metrics as M
    from tests.integration.serving_fixtures import parse_metrics

    text = urllib.request.urlopen(f"{gateway}/metrics", timeout=10).read().decode()
    return parse_metrics(text).get((M.REJECTED, (("reason", "model_down"),)), 0.0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()

    from benchmarks.bench_gateway import prepare_model, request_bodies
    from msml.data.contract import Contract
    from msml.ops.processes import stop_process
    from msml.serving.model_server import ModelServer
    from tests.integration.serving_fixtures import free_port, start_gateway

    contract = Contract.load()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-busy-"))
    model = prepare_model(work, contract)
    _, _, bodies = request_bodies(work, contract)
    server = ModelServer(model.uri, model.tracking_uri, free_port(), work / "model-server.log")
    log = work / "gateway.log"
    log.write_text("")
    pings: list[tuple[float, float]] = []  # (sent, seconds)
    stop = threading.Event()

    def prober() -> None:
        while not stop.is_set():
            sent = time.time()
            try:
                urllib.request.urlopen(f"{server.url}/ping", timeout=5).read()
                pings.append((sent, time.time() - sent))
            except OSError:
                pings.append((sent, float("inf")))
            time.sleep(0.1)

    gateway_proc = None
    try:
        server.start(wait=180)
        gateway_proc, gateway = start_gateway(server.url, model.tracking_uri, log, "--model-uri", "")
        threading.Thread(target=prober, daemon=True).start()
        print("| round | direct req/s, p99 | gateway req/s, p99 | gateway non-200 | model_down | /ping p50 / max |")
        print("|---|---|---|---|---|---|")
        for r in range(1, args.rounds + 1):
            before = model_down(gateway)
            t0 = time.time() + 3  # the client processes start up meanwhile
            t1 = t0 + DIRECT_SECONDS

            def client(url: str, start: float, seconds: float) -> subprocess.Popen:
                argv = [sys.executable, __file__, "--client", url, str(args.concurrency), str(start), str(seconds)]
                return subprocess.Popen([*argv, str(bodies)], stdout=subprocess.PIPE, text=True)

            direct, via = client(server.url, t0, DIRECT_SECONDS), client(gateway, t1, GATEWAY_SECONDS)
            d, g = (json.loads(p.communicate(timeout=120)[0]) for p in (direct, via))
            refused = model_down(gateway) - before
            waits = sorted(s for sent, s in pings if t0 <= sent < t1)
            ping = f"{waits[len(waits) // 2] * 1000:.0f} / {waits[-1] * 1000:.0f} ms" if waits else "-"
            print(
                f"| {r} | {d['rps']:.0f}, {d['p99']:.0f} ms | {g['rps']:.0f}, {g['p99']:.0f} ms | {g['errors'] or 0} "
                f"| {refused:.0f} | {ping} |",
                flush=True,
            )
            time.sleep(2)
    finally:
        stop.set()
        if gateway_proc is not None:
            stop_process(gateway_proc)
        server.stop()
    print("gateway log (up / DOWN):")
    for line in log.read_text().splitlines():
        if " is up" in line or " is DOWN" in line:
            print("  ", line[:200])
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        client_main(sys.argv[2:])
    else:
        sys.exit(main())
