"""Direct `mlflow models serve` (1 worker) vs the gateway in front of the same server, side by side.

    .venv/bin/python benchmarks/bench_gateway.py [--duration 8] [--concurrency 1 8 32]

Builds a champion model in a temp tracking store (as the integration tests do), starts MLflow's scoring
server and `msml gateway` on free loopback ports, then drives both with 1-row requests of real test-split
rows at each concurrency, alternating the targets in half-second slices so both see the same machine (the
2 cores are shared with other work). The client runs in its own
process on a raw asyncio HTTP/1.1 client (uvloop), so it costs ~50 µs per request and is not what is
measured. Prints throughput, p50/p95/p99 and errors per target and concurrency, the `/metrics` scrape
time with every series populated, and checks the targets:
  c=32: gateway throughput ≥ 5× direct and gateway p99 ≤ direct p99;  c=1: gateway p50 ≤ direct p50 + 2 ms;
  /metrics scrape ≤ 20 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


# ---- the client (runs in its own process: `bench_gateway.py --client URL C SECONDS BODIES`) ------------------

async def _worker(host: str, port: int, bodies: list[bytes], offset: int, deadline: float, warmup_until: float,
                  latencies: list[float], errors: dict[str, int]) -> None:
    reader = writer = None
    i = offset
    while time.perf_counter() < deadline:
        body = bodies[i % len(bodies)]
        i += 1
        request = (b"POST /invocations HTTP/1.1\r\nHost: " + host.encode() + b"\r\nContent-Type: application/json\r\n"
                   b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        start = time.perf_counter()
        try:
            if writer is None:  # the connection set-up is part of what a client pays
                reader, writer = await asyncio.open_connection(host, port)
            writer.write(request)
            status_line = await reader.readline()
            if not status_line:
                raise ConnectionError("connection closed")
            status = int(status_line.split()[1])
            length, close = 0, False
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, val = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(val)
                elif name == b"connection" and val.strip().lower() == b"close":
                    close = True
            await reader.readexactly(length)
        except (OSError, ConnectionError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
            errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
            if writer is not None:
                writer.close()
            reader = writer = None
            await asyncio.sleep(0.01)
            continue
        end = time.perf_counter()
        if start >= warmup_until:
            latencies.append(end - start)
            if status != 200:
                errors[str(status)] = errors.get(str(status), 0) + 1
        if close:
            writer.close()
            reader = writer = None
    if writer is not None:
        writer.close()


async def _client(urls: list[str], concurrency: int, seconds: float, bodies: list[bytes], warmup: float,
                  slice_seconds: float = 0.5) -> list[dict]:
    """Drive the targets in alternating slices (`seconds` in all for each), so a busy neighbour on the
    machine hits both alike; returns one result per target."""
    results = []
    latencies: list[list[float]] = [[] for _ in urls]
    errors: list[dict[str, int]] = [{} for _ in urls]
    measured = [0.0 for _ in urls]
    for k, url in enumerate(urls):  # warm-up, not measured
        u = urlparse(url)
        end = time.perf_counter() + warmup
        await asyncio.gather(*(_worker(u.hostname, u.port, bodies, j * 97, end, end, [], {})
                               for j in range(concurrency)))
    slices = max(1, round(seconds / slice_seconds))
    for n in range(slices * len(urls)):
        k = n % len(urls)
        u = urlparse(urls[k])
        start = time.perf_counter()
        deadline = start + slice_seconds
        await asyncio.gather(*(_worker(u.hostname, u.port, bodies, (n * concurrency + j) * 97, deadline, start,
                                       latencies[k], errors[k]) for j in range(concurrency)))
        measured[k] += time.perf_counter() - start
    for k in range(len(urls)):
        lat = sorted(latencies[k])
        q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] * 1000 if lat else float("nan")
        results.append({"requests": len(lat), "seconds": measured[k], "throughput": len(lat) / measured[k],
                        "p50": q(0.50), "p95": q(0.95), "p99": q(0.99), "errors": sum(errors[k].values()),
                        "error_kinds": errors[k]})
    return results


def client_main(argv: list[str]) -> None:
    urls, concurrency, seconds, bodies_file, warmup = argv[0].split(","), int(argv[1]), float(argv[2]), argv[3], \
        float(argv[4])
    bodies = [line.encode() for line in Path(bodies_file).read_text().splitlines() if line]
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    print(json.dumps(asyncio.run(_client(urls, concurrency, seconds, bodies, warmup))))


def run_client(urls: list[str], concurrency: int, seconds: float, bodies_file: Path, warmup: float = 1.0) -> list[dict]:
    out = subprocess.run([sys.executable, __file__, "--client", ",".join(urls), str(concurrency), str(seconds),
                          str(bodies_file), str(warmup)], capture_output=True, text=True,
                         timeout=len(urls) * (seconds + warmup) * 2 + 120)
    if out.returncode != 0:
        raise RuntimeError(f"client failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout)


# ---- the benchmark ---------------------------------------------------------------------------------------------

def scrape_times(url: str, n: int = 50) -> list[float]:
    import httpx

    times = []
    with httpx.Client(timeout=10) as client:
        for _ in range(n):
            start = time.perf_counter()
            resp = client.get(f"{url}/metrics")
            times.append((time.perf_counter() - start) * 1000)
            resp.raise_for_status()
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=8.0, help="measured seconds per target and concurrency")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()

    import httpx

    from msml.contract import Contract
    from msml.loadgen import frame_to_rows
    from msml.monitoring import metrics as M
    from msml.preprocessing import load_clean_splits, preprocess
    from msml.serving.model_server import ModelServer
    from msml.serving.processes import stop_process
    from tests.integration.serving_fixtures import free_port, parse_metrics, start_gateway, train_and_register

    contract = Contract.load()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    processed = work / f"{contract.name}_preprocessing"
    if not (processed / "test_clean.csv").exists():
        print(f"preprocessing into {processed}", flush=True)
        preprocess(ROOT / "data" / f"{contract.name}_raw" / f"{contract.name}.csv", processed, contract)
    print("training and registering the benchmark model", flush=True)
    model = train_and_register(processed, contract, work / f"registry-{int(time.time())}", contract.model_name)
    _, test = load_clean_splits(processed, contract)
    rows = frame_to_rows(test[contract.features])
    truths = test[contract.target].astype(str).tolist()
    bodies_file = work / "bodies.jsonl"
    bodies_file.write_text("\n".join(json.dumps({"dataframe_records": [r]}) for r in rows[:2000]) + "\n")

    server = ModelServer(model.uri, model.tracking_uri, free_port(), work / "model-server.log", workers=1)
    gateway_proc = None
    try:
        print(f"starting the model server ({' '.join(server.command)})", flush=True)
        server.start(wait=180)
        gateway_proc, gateway_url = start_gateway(server.url, model.tracking_uri, work / "gateway.log",
                                                  "--model-uri", model.uri)
        targets = {"direct": server.url, "gateway": gateway_url}
        # warm both up (the scoring server's first calls are slow)
        run_client(list(targets.values()), 4, 1.0, bodies_file, warmup=2.0)
        results: dict[tuple[str, int], dict] = {}
        for c in args.concurrency:
            measured = run_client(list(targets.values()), c, args.duration, bodies_file)
            for name, r in zip(targets, measured):
                results[(name, c)] = r
                print(f"  {name:8s} c={c:<3d} {r['throughput']:8.1f} req/s  p50 {r['p50']:7.2f} ms  "
                      f"p99 {r['p99']:8.2f} ms  errors {r['errors']}", flush=True)

        # populate every series (validation failures, feedback) before timing the scrape
        with httpx.Client(base_url=gateway_url, timeout=10) as client:
            client.post("/invocations", json={"rows": [{**rows[0], "age": 1000}]})
            answer = client.post("/invocations", json={"rows": rows[:100]}).json()
            client.post("/feedback", json={"feedback": [{"id": i, "label": t}
                                                        for i, t in zip(answer["ids"], truths[:100])]})
            families = {name for name, _ in parse_metrics(client.get("/metrics").text)}
        scrape = scrape_times(gateway_url)
    finally:
        if gateway_proc is not None:
            stop_process(gateway_proc)
        server.stop()

    print()
    print(f"1-row requests, {args.duration:.0f} s per cell in alternating 0.5 s slices, model server: mlflow models serve, 1 worker; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    header = f"{'target':8s} {'c':>3s} {'req/s':>9s} {'p50 ms':>8s} {'p95 ms':>8s} {'p99 ms':>9s} {'errors':>7s}"
    print(header)
    print("-" * len(header))
    for c in args.concurrency:
        for name in ("direct", "gateway"):
            r = results[(name, c)]
            print(f"{name:8s} {c:3d} {r['throughput']:9.1f} {r['p50']:8.2f} {r['p95']:8.2f} {r['p99']:9.2f} "
                  f"{r['errors']:7d}")
    scrape_p50, scrape_max = statistics.median(scrape), max(scrape)
    wanted = [M.REQUESTS, M.DRIFT_PSI, M.LIVE_ACCURACY, M.VALIDATION_FAILURES, M.MODEL_INFO + "_info",
              M.FEATURE_MISSING, M.FEEDBACK]
    missing = [n for n in wanted if n not in families]
    print(f"/metrics scrape: p50 {scrape_p50:.2f} ms, max {scrape_max:.2f} ms over {len(scrape)} scrapes "
          f"({len([f for f in families if f.startswith('msml_')])} msml_ series names; missing: {missing or 'none'})")

    checks = []
    if 32 in args.concurrency:
        d, g = results[("direct", 32)], results[("gateway", 32)]
        checks.append((f"c=32 throughput gateway/direct = {g['throughput'] / d['throughput']:.1f}× (≥ 5×)",
                       g["throughput"] >= 5 * d["throughput"]))
        checks.append((f"c=32 p99 gateway {g['p99']:.1f} ms ≤ direct {d['p99']:.1f} ms", g["p99"] <= d["p99"]))
    if 1 in args.concurrency:
        d, g = results[("direct", 1)], results[("gateway", 1)]
        checks.append((f"c=1 p50 added by the gateway = {g['p50'] - d['p50']:+.2f} ms (≤ 2 ms)",
                       g["p50"] - d["p50"] <= 2.0))
    checks.append((f"/metrics scrape p50 {scrape_p50:.2f} ms (≤ 20 ms), all series populated",
                   scrape_p50 <= 20.0 and not missing))
    errors = sum(r["errors"] for r in results.values())
    checks.append((f"errors: {errors}", errors == 0))
    for text, ok in checks:
        print(f"  [{'ok' if ok else 'MISS'}] {text}")
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        client_main(sys.argv[2:])
    else:
        sys.exit(main())
