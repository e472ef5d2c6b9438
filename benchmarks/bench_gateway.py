"""Direct `mlflow models serve` (1 worker) vs the gateway in front of the same server, side by side; then the
gateway under overload, a frozen model server and a soak; and the upstream client's CPU per call.

    .venv/bin/python benchmarks/bench_gateway.py [--duration 8] [--concurrency 1 8 32]
        [--overload-seconds 30] [--soak-seconds 60] [--frozen-seconds 8]

Builds a champion model in a temp tracking store (as the integration tests do), starts MLflow's scoring
server and `msml gateway` on free loopback ports, then drives both with 1-row requests of real test-split
rows at each concurrency, alternating the targets so both see the same machine (the 2 cores are shared
with other work): request by request at concurrency 1, in half-second slices above. The client runs in its own
process on a raw asyncio HTTP/1.1 client (uvloop), so it costs ~50 µs per request and is not what is
measured; the open loop's is an asyncio protocol with no task per request (25–40 µs per request: 0.25 of
a core at 9,300 req/s, where the stream-reader client took 0.44 at 4,100 on a slower VM). Prints
throughput, p50/p95/p99 and errors per target and concurrency, the `/metrics` scrape time with every
series populated, and checks the targets:
  c=32: gateway throughput ≥ 12× direct and gateway p99 ≤ direct p99;  c=1: gateway p50 ≤ direct p50 + 2 ms;
  /metrics scrape ≤ 20 ms.
Then open loop (arrivals at a fixed rate, whatever the answers): capacity = the highest offered rate answered
≥ 99 % 200 with their p99 ≤ 500 ms (`find_capacity`: --capacity-seconds steps of ×1.2 from the c=32
throughput, refined to ~5 %, then held for --overload-seconds, lower while that fails; a closed loop is bound
by its own latency and under-states it), then
  soak      80 % of capacity for --soak-seconds: 0 errors, gateway resident memory growth < 10 %;
  overload  2× capacity for --overload-seconds: goodput ≥ 90 % of capacity, p99 of the accepted ≤ 2× the p99
            at capacity, the rest refused quickly (503 + Retry-After);
  frozen    the model server SIGSTOPped under c=32: p99 of all answers ≤ the deadline (--model-timeout), the
            fail-fast answers once the probe has seen it (p50 of the 503 model_down), recovery after SIGCONT.
Last, CPU per call of httpx, aiohttp and the gateway's own client (`msml.serving.http`) against a tiny local
server, keep-alive and connection-closing (as gunicorn's sync workers, i.e. `mlflow models serve`, do).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import re
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


async def _worker(
    targets: list[tuple[str, int, str]],
    bodies: list[list[bytes]],
    offset: int,
    deadline: float,
    warmup_until: float,
    latencies: list[list[float]],
    errors: list[dict[str, int]],
    busy: list[float],
) -> None:
    """Requests one after another until `deadline`, taking the targets (host, port, path) in turn, each on its own
    kept-alive connection with its own bodies[k]; target k's latencies, errors (by kind) and seconds spent go to
    latencies[k], errors[k], busy[k]."""
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter] | None] = [None] * len(targets)
    i = offset
    while time.perf_counter() < deadline:
        k = (i - offset) % len(targets)
        host, port, path = targets[k]
        body = bodies[k][i % len(bodies[k])]
        i += 1
        request = (
            b"POST "
            + path.encode()
            + b" HTTP/1.1\r\nHost: "
            + host.encode()
            + b"\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body
        )
        start = time.perf_counter()
        try:
            if conns[k] is None:  # the connection set-up is part of what a client pays
                conns[k] = await asyncio.open_connection(host, port)
            reader, writer = conns[k]
            writer.write(request)
            status, close, content = await _answer(reader)
        except (OSError, ConnectionError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
            errors[k][type(exc).__name__] = errors[k].get(type(exc).__name__, 0) + 1
            if conns[k] is not None:
                conns[k][1].close()
            conns[k] = None
            await asyncio.sleep(0.01)
            continue
        end = time.perf_counter()
        if start >= warmup_until:
            latencies[k].append(end - start)
            busy[k] += end - start
            if status != 200:
                kind = _kind(status, content)
                errors[k][kind] = errors[k].get(kind, 0) + 1
        if close:
            writer.close()
            conns[k] = None
    for conn in conns:
        if conn is not None:
            conn[1].close()


async def _answer(reader: asyncio.StreamReader) -> tuple[int, bool, bytes]:
    """(status, connection closes, body) of one HTTP/1.1 answer with Content-Length."""
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
    return status, close, await reader.readexactly(length)


# which of admission's limits refused a request, from the words of its 503 (admission, batching)
_REFUSED_BY = {
    "waited": "queue delay",
    "to be read": "loop lag",
    "to be accepted": "accept queue",
    "queued": "rows",
    "in hand": "in hand",
}


def _kind(status: int, content: bytes) -> str:
    """'503 queue_full (loop lag)': an answer's status, kind and, for a refusal, the limit that refused it."""
    try:
        answer = json.loads(content)
        answer = answer if isinstance(answer, dict) else {}
    except ValueError:  # a peer's answer that is not the gateway's JSON
        answer = {}
    kind = f"{status} {answer.get('kind', '')}".strip()
    limit = next((name for words, name in _REFUSED_BY.items() if words in answer.get("error", "")), None)
    return f"{kind} ({limit})" if limit else kind


_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length: *(\d+)")  # in a lowered head


class _Connection(asyncio.Protocol):
    """A kept-alive client connection carrying one request at a time, its answer parsed as the bytes arrive:
    no task per request, for the client shares the 2 cores with what it measures. Not the gateway's own
    pooled client (msml.serving.http), which needs a task per request: at 4,000 and 9,000 req/s offered it
    took 0.23-0.24 and 0.37-0.41 of a core, this one 0.15 and 0.27-0.28 (two rounds, alternating)."""

    def __init__(self, run: _OpenLoop) -> None:
        self.run = run
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.pending: tuple[bytes, float, bool] | None = None  # (request, its start, sent on a reused connection)

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport

    def send(self, request: bytes, start: float, reused: bool) -> None:
        self.pending = (request, start, reused)
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self.buffer[:end].lower()
        length = _CONTENT_LENGTH.search(head)
        body_end = end + 4 + (int(length[1]) if length else 0)
        if len(self.buffer) < body_end or self.pending is None:
            return
        status, content = int(self.buffer[9:12]), self.buffer[end + 4 : body_end]
        self.buffer = self.buffer[body_end:]
        pending, self.pending = self.pending, None
        self.run.answered(self, pending[1], status, b"\r\nconnection: close" in head, content)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.pending is not None:
            pending, self.pending = self.pending, None
            self.run.lost(pending, exc, answer_begun=bool(self.buffer))


class _OpenLoop:
    """The requests of one open-loop run: each goes out on an idle kept-alive connection or a new one."""

    def __init__(self, url: str) -> None:
        u = urlparse(url)
        self.host, self.port = u.hostname, u.port
        self.head = (
            b"POST "
            + (u.path or "/invocations").encode()
            + b" HTTP/1.1\r\nHost: "
            + self.host.encode()
            + b"\r\nContent-Type: application/json\r\n"
        )
        self.idle: list[_Connection] = []
        self.latencies: dict[str, list[float]] = {}
        self.kinds: dict[str, int] = {}
        self.stale = 0  # requests retried because their pooled connection had been closed by the server
        self.outstanding = 0
        self.connecting: set[asyncio.Task] = set()
        self.drained = asyncio.Event()

    def submit(self, body: bytes) -> None:
        self.outstanding += 1
        self.drained.clear()
        request = self.head + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        self._send(request, time.perf_counter(), fresh=False)

    def _send(self, request: bytes, start: float, fresh: bool) -> None:
        # a pooled connection idle longer than the server's keep-alive (uvicorn: 5 s) has been closed by it:
        # skip those already seen closed, and retry once on a new connection when one is found closed only as
        # the request goes out (no byte of an answer: `lost`), as HTTP clients do with their pools
        while self.idle and self.idle[-1].transport.is_closing():
            self.idle.pop()
        if self.idle and not fresh:
            self.idle.pop().send(request, start, reused=True)
            return
        task = asyncio.create_task(self._connect(request, start))
        self.connecting.add(task)
        task.add_done_callback(self.connecting.discard)

    async def _connect(self, request: bytes, start: float) -> None:
        try:
            _, conn = await asyncio.get_running_loop().create_connection(
                lambda: _Connection(self), self.host, self.port
            )
        except OSError as exc:
            self._done(type(exc).__name__)
            return
        conn.send(request, start, reused=False)

    def answered(self, conn: _Connection, start: float, status: int, close: bool, content: bytes) -> None:
        self.latencies.setdefault(str(status), []).append(time.perf_counter() - start)
        if close:
            conn.transport.close()
        else:
            self.idle.append(conn)
        self._done(_kind(status, content) if status != 200 else None)

    def lost(self, pending: tuple[bytes, float, bool], exc: Exception | None, answer_begun: bool) -> None:
        request, start, reused = pending
        if reused and not answer_begun:
            self.stale += 1
            self._send(request, start, fresh=True)
        else:
            self._done(type(exc).__name__ if exc else "ConnectionError")

    def _done(self, kind: str | None) -> None:
        if kind is not None:
            self.kinds[kind] = self.kinds.get(kind, 0) + 1
        self.outstanding -= 1
        if self.outstanding == 0:
            self.drained.set()


async def _open_loop(url: str, rate: float, seconds: float, bodies: list[bytes]) -> dict:
    """Arrivals at `rate` per second for `seconds`, whatever the answers (an open loop: a slow server is not
    spared new work). Latency per status; kinds of answers."""
    run = _OpenLoop(url)
    start, cpu_start = time.perf_counter(), time.process_time()
    sent = 0
    while (now := time.perf_counter()) < start + seconds:
        due = int((now - start) * rate)
        while sent < due:
            run.submit(bodies[sent % len(bodies)])
            sent += 1
        await asyncio.sleep(0.001)
    elapsed = time.perf_counter() - start
    if run.outstanding:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(run.drained.wait(), timeout=30)
    for conn in run.idle:
        conn.transport.close()
    cores = (time.process_time() - cpu_start) / (time.perf_counter() - start)
    summary = {"sent": sent, "seconds": elapsed, "kinds": run.kinds, "stale_retries": run.stale, "client_cores": cores}
    latencies = run.latencies
    latencies["all"] = [x for lat in latencies.values() for x in lat]
    for status, lat in latencies.items():
        if not lat:
            continue
        lat.sort()

        def q(p, lat=lat):
            return lat[min(len(lat) - 1, int(p * len(lat)))] * 1000

        summary[status] = {"n": len(lat), "p50": q(0.5), "p99": q(0.99), "max": lat[-1] * 1000}
    return summary


async def _client(
    urls: list[str],
    concurrency: int,
    seconds: float,
    bodies: list[list[bytes]],
    warmup: float,
    slice_seconds: float = 0.5,
) -> list[dict]:
    """Drive the targets alike (`seconds` in all for each), so a busy neighbour on the machine hits both the
    same; returns one result per target. At concurrency 1 one client takes the targets in turn request by
    request (paired: the model server's latency drifts by milliseconds within a second, and with 0.5 s
    slices the p50 difference moved 0.4-3.7 ms between rounds of the same code, against 1.1-1.4 ms paired);
    above 1 the targets take turns in `slice_seconds` slices, each with all `concurrency` clients."""
    results = []
    targets = [(u.hostname, u.port, u.path or "/invocations") for u in map(urlparse, urls)]
    latencies: list[list[float]] = [[] for _ in urls]
    errors: list[dict[str, int]] = [{} for _ in urls]
    measured = [0.0 for _ in urls]
    for target, target_bodies in zip(targets, bodies, strict=True):  # warm-up, not measured
        end = time.perf_counter() + warmup
        await asyncio.gather(
            *(_worker([target], [target_bodies], j * 97, end, end, [[]], [{}], [0.0]) for j in range(concurrency))
        )
    if concurrency == 1:
        start = time.perf_counter()
        await _worker(targets, bodies, 0, start + seconds * len(urls), start, latencies, errors, measured)
    else:
        slices = max(1, round(seconds / slice_seconds))
        for n in range(slices * len(urls)):
            k = n % len(urls)
            start = time.perf_counter()
            deadline = start + slice_seconds
            await asyncio.gather(
                *(
                    _worker(
                        [targets[k]],
                        [bodies[k]],
                        (n * concurrency + j) * 97,
                        deadline,
                        start,
                        [latencies[k]],
                        [errors[k]],
                        [0.0],
                    )
                    for j in range(concurrency)
                )
            )
            measured[k] += time.perf_counter() - start
    for k in range(len(urls)):
        lat = sorted(latencies[k])

        def q(p, lat=lat):
            return lat[min(len(lat) - 1, int(p * len(lat)))] * 1000 if lat else float("nan")

        results.append(
            {
                "requests": len(lat),
                "seconds": measured[k],
                "throughput": len(lat) / measured[k],
                "p50": q(0.50),
                "p95": q(0.95),
                "p99": q(0.99),
                "errors": sum(errors[k].values()),
                "error_kinds": errors[k],
            }
        )
    return results


def client_main(argv: list[str]) -> None:
    urls, concurrency, seconds, bodies_file, warmup = (
        argv[0].split(","),
        argv[1],
        float(argv[2]),
        argv[3],
        float(argv[4]),
    )
    # one bodies file for every target, or one per target (a peer speaking another protocol)
    bodies = [[line.encode() for line in Path(f).read_text().splitlines() if line] for f in bodies_file.split(",")]
    bodies = bodies * len(urls) if len(bodies) == 1 else bodies
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    if concurrency.startswith("rate="):
        print(json.dumps(asyncio.run(_open_loop(urls[0], float(concurrency[5:]), seconds, bodies[0]))))
    else:
        print(json.dumps(asyncio.run(_client(urls, int(concurrency), seconds, bodies, warmup))))


def run_client(
    urls: list[str], concurrency: int | str, seconds: float, bodies_file: Path | list[Path], warmup: float = 1.0
) -> list[dict] | dict:
    """The client in its own process: each URL (its path the endpoint, /invocations when none) takes the bodies in
    `bodies_file`, or in its own file when a list (one per URL) is given."""
    files = bodies_file if isinstance(bodies_file, list) else [bodies_file]
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--client",
            ",".join(urls),
            str(concurrency),
            str(seconds),
            ",".join(map(str, files)),
            str(warmup),
        ],
        capture_output=True,
        text=True,
        timeout=len(urls) * (seconds + warmup) * 2 + 120,
    )
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


SETTLE_SECONDS = 3.0  # idle time between an over-capacity step and the next measurement
CAPACITY_P99_MS = 500.0  # the gateway's default --max-queue-ms: beyond it the queue is not draining


def serves_all(r: dict) -> bool:
    """Whether an open-loop run was served: ≥ 99 % of it answered 200, their p99 ≤ CAPACITY_P99_MS (a rate whose
    p99 nears the deadline is a queue still growing)."""
    good = r.get("200")
    return good is not None and good["n"] >= 0.99 * r["sent"] and good["p99"] <= CAPACITY_P99_MS


def find_capacity(run, rate: float, step_seconds: float, hold_seconds: float) -> tuple[float, list]:
    """The highest offered rate (open loop) that `serves_all` for `hold_seconds`, and the runs that found it:
    (rate, result, "step" or "held", served). A closed loop is bound by its own latency and under-states it, so
    from `rate` (the c=32 throughput) in steps of `step_seconds`, ×1.2 up or down until a rate that is served
    and one 1.2× higher that is not, then two halvings of that interval (~5 %); that rate is then held for
    `hold_seconds`, one halving-step lower while it is not served (a short step passed at a rate the gateway
    did not sustain: measured 52 refused in 5 s and 168 in the 30 s after, p99 194 ms). `run(rate, seconds)`
    is one open-loop run. The last run is the capacity held: the reference for the overload's p99 (a short
    step ends before the slow tail of a sustained load shows: gen-2 GC passes, long model calls)."""
    runs: list[tuple[float, dict, str, bool]] = []

    def served(rate: float, seconds: float, kind: str) -> bool:
        r = run(rate, seconds)
        ok = serves_all(r)
        runs.append((rate, r, kind, ok))
        good = r.get("200", {"n": 0})["n"] / r["seconds"]
        print(
            f"  capacity {kind}: {rate:.0f} req/s offered for {seconds:.0f} s → {good:.0f} good/s, "
            f"p99 {r['all']['p99']:.1f} ms, {'served' if ok else 'over'}",
            flush=True,
        )
        if not ok:
            # let the gateway drain its backlog (and stop shedding) before the next run, or that run measures
            # this one's tail (measured: 175 refusals in a soak's first second)
            time.sleep(SETTLE_SECONDS)
        return ok

    low = high = None  # served, and not served
    while low is None or high is None:
        if len(runs) == 10:
            raise RuntimeError(f"no capacity found in 10 steps: {[(round(r), ok) for r, _, _, ok in runs]}")
        if served(rate, step_seconds, "step"):
            low, rate = rate, rate * 1.2
        else:
            high, rate = rate, rate / 1.2
    for _ in range(2):
        middle = (low * high) ** 0.5
        if served(middle, step_seconds, "step"):
            low = middle
        else:
            high = middle
    rate, step = low, high / low
    for _ in range(3):
        if served(rate, hold_seconds, "held"):
            break
        rate /= step
    return rate, runs


def model_calls_over(url: str, parse_metrics, name: str, limits=("0.1", "0.25")) -> dict[str, float]:
    """From the gateway's own histogram: model calls so far in all, and over each limit (seconds)."""
    import httpx

    m = parse_metrics(httpx.get(f"{url}/metrics", timeout=10).text)
    total = m[(f"{name}_count", ())]
    return {"all": total, **{le: total - m[(f"{name}_bucket", (("le", le),))] for le in limits}}


def _group_cpu_seconds(pgid: int) -> float:
    """CPU time (user + system) of the live processes in process group `pgid` (a server and its workers)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()  # after "(comm)", which may hold spaces
        except OSError:  # gone meanwhile
            continue
        if int(fields[2]) == pgid:  # pgrp; utime and stime follow at 11, 12
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def open_loop(url: str, rate: float, seconds: float, bodies_file: Path, groups: dict[str, int]) -> dict:
    """run_client at `rate`, with the cores each process group in `groups` (name → pgid) used meanwhile: the
    2 cores are shared by the gateway, the model server and the client, which all grow with the load."""
    before, start = {name: _group_cpu_seconds(pgid) for name, pgid in groups.items()}, time.perf_counter()
    r = run_client([url], f"rate={rate}", seconds, bodies_file)
    wall = time.perf_counter() - start
    r["cores"] = {name: (_group_cpu_seconds(pgid) - before[name]) / wall for name, pgid in groups.items()}
    r["cores"]["client"] = r["client_cores"]
    return r


def print_open_loop(search: list, cases: list[tuple[str, dict]]) -> None:
    """The open-loop table (this benchmark's and bench_champion's): the capacity search's steps (`find_capacity`),
    then `cases` ([(name, open_loop result)]); per row offered and good (200) rates, latencies, cores used."""
    header = (
        f"{'case':9s} {'offered/s':>9s} {'good/s':>8s} {'ok p50':>7s} {'ok p99':>7s} {'all p99':>8s} "
        f"{'all max':>8s}  {'cores gw/model/client':>21s}  answers other than 200"
    )
    print(header)
    print("-" * len(header))
    steps = [(f"{kind} {'ok' if ok else 'over'}", r) for _, r, kind, ok in search]
    for name, r in (*steps, *cases):
        ok = r.get("200", {"n": 0, "p50": float("nan"), "p99": float("nan")})
        cores = "/".join(f"{r['cores'][k]:.2f}" for k in ("gateway", "model", "client")) if "cores" in r else "-"
        print(
            f"{name:9s} {r['sent'] / r['seconds']:9.0f} {ok['n'] / r['seconds']:8.0f} {ok['p50']:7.1f} "
            f"{ok['p99']:7.1f} {r['all']['p99']:8.1f} {r['all']['max']:8.1f}  {cores:>21s}  {r['kinds'] or 'none'}"
        )


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def frozen_model(server, gateway_url: str, rate: float, seconds: float, bodies_file: Path) -> dict:
    """Open-loop load while the model server is SIGSTOPped (1 s in) and SIGCONTed (2 s before the end)."""
    import signal

    import httpx

    client = subprocess.Popen(
        [sys.executable, __file__, "--client", gateway_url, f"rate={rate}", str(seconds), str(bodies_file), "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    time.sleep(1.0)
    os.killpg(server.proc.pid, signal.SIGSTOP)
    stopped = time.perf_counter()
    try:
        with httpx.Client(base_url=gateway_url, timeout=10) as c:
            while c.get("/health").status_code != 503 and time.perf_counter() - stopped < 10:
                time.sleep(0.02)
            detected = time.perf_counter() - stopped
            time.sleep(max(0.0, seconds - 3.0 - detected))
        os.killpg(server.proc.pid, signal.SIGCONT)
        resumed = time.perf_counter()
        with httpx.Client(base_url=gateway_url, timeout=10) as c:
            while (
                c.post(
                    "/invocations",
                    content=Path(bodies_file).read_text().split("\n", 1)[0],
                    headers={"Content-Type": "application/json"},
                ).status_code
                != 200
            ):
                time.sleep(0.02)
        recovered = time.perf_counter() - resumed
    finally:
        os.killpg(server.proc.pid, signal.SIGCONT)
    out, _ = client.communicate(timeout=seconds + 60)
    return {**json.loads(out), "detected_s": detected, "recovered_s": recovered}


# ---- the upstream client's CPU per call: httpx, aiohttp, msml.serving.http ------------------------------------

ANSWER = b'{"predictions": [[0.75, 0.25]]}'


async def _tiny_server(port: int, close: bool) -> None:
    """Answers every request with ANSWER; closes after each answer when `close` (gunicorn sync workers do)."""

    async def handle(reader, writer):
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    (
                        int(v)
                        for k, _, v in (ln.partition(b":") for ln in head.split(b"\r\n"))
                        if k.lower() == b"content-length"
                    ),
                    0,
                )
                await reader.readexactly(length)
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                    + str(len(ANSWER)).encode()
                    + (b"\r\nConnection: close" if close else b"")
                    + b"\r\n\r\n"
                    + ANSWER
                )
                await writer.drain()
                if close:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


async def _cpu_per_call(name: str, url: str, calls: int) -> tuple[float, bool]:
    """CPU µs per sequential POST with `name`'s client (this process only: the server runs in another)."""
    body = b'{"dataframe_split": {"columns": ["a"], "data": [[1]]}}'
    if name == "httpx":
        import httpx

        client = httpx.AsyncClient(base_url=url)

        async def post():
            r = await client.post("/invocations", content=body, headers={"Content-Type": "application/json"})
            return r.status_code, r.content

        close = client.aclose
    elif name == "aiohttp":
        import aiohttp

        session = aiohttp.ClientSession(url)

        async def post():
            async with session.post("/invocations", data=body, headers={"Content-Type": "application/json"}) as r:
                return r.status, await r.read()

        close = session.close
    else:
        from msml.serving.http import PooledHTTPClient

        client = PooledHTTPClient(url)

        async def post():
            return await client.request("POST", "/invocations", body)

        close = client.aclose
    correct = True
    for _ in range(100):  # warm-up: imports, first connections
        correct &= await post() == (200, ANSWER)
    start = time.process_time()
    for _ in range(calls):
        correct &= await post() == (200, ANSWER)
    cpu = (time.process_time() - start) / calls * 1e6
    await close()
    return cpu, correct


def cpu_main(argv: list[str]) -> None:
    name, url, calls = argv[0], argv[1], int(argv[2])
    try:
        import uvloop

        uvloop.install()  # as the gateway runs
    except ImportError:
        pass
    print(json.dumps(asyncio.run(_cpu_per_call(name, url, calls))))


def upstream_cpu_table(calls: int) -> dict[str, dict]:
    from tests.integration.serving_fixtures import free_port

    table: dict[str, dict] = {}
    for mode in ("keep", "close"):
        port = free_port()
        server = subprocess.Popen([sys.executable, __file__, "--tiny-server", str(port), mode])
        try:
            time.sleep(1.0)
            for name in ("httpx", "aiohttp", "msml.http"):  # each in a fresh process: no shared imports or pools
                out = subprocess.run(
                    [sys.executable, __file__, "--cpu", name, f"http://127.0.0.1:{port}", str(calls)],
                    capture_output=True,
                    text=True,
                    timeout=300,
                )
                if out.returncode != 0:
                    raise RuntimeError(f"{name}: {out.stderr[-1000:]}")
                cpu, correct = json.loads(out.stdout)
                row = table.setdefault(name, {"correct": True})
                row[mode] = cpu
                row["correct"] = row["correct"] and correct
        finally:
            server.terminate()
            server.wait()
    return table


def hostile_hold_table(contract, rows: list[dict]) -> list[tuple[str, int, int, float]]:
    """Event-loop time one hostile request costs (parse, shape, validate, build the answer), in this process.

    Returns (case, body bytes, answer bytes, worst CPU ms of 5). The gateway does exactly these steps inline."""
    import gc

    from msml.monitoring.metrics import GatewayMetrics
    from msml.serving.errors import GatewayError, error_response, loads
    from msml.serving.feedback import FeedbackBook
    from msml.serving.formats import extract_rows
    from msml.serving.validation import RowValidator

    gc.freeze()  # as the gateway does after start-up
    validator = RowValidator(contract)
    book = FeedbackBook(contract, GatewayMetrics())
    nested = "[" * 1000 + "]" * 1000
    cases = {
        "1000 empty rows": json.dumps({"rows": [{}] * 1000}),
        "1000 rows, every value wrong": json.dumps({"rows": [{f: [1] for f in contract.features}] * 1000}),
        "1000 rows, 500-char strings": json.dumps({"rows": [{**rows[0], "education": "x" * 500}] * 1000}),
        "1000 valid rows": json.dumps({"rows": rows[:1000]}),
        "value nested 1000 deep": f'{{"rows": [{{"age": {nested}}}]}}',
        "feedback: 100,000 empty items": json.dumps({"feedback": [{}] * 100_000}),
        "feedback: 1000 empty items": json.dumps({"feedback": [{}] * 1000}),
    }
    table = []
    for name, text in cases.items():
        body = text.encode()
        worst, size = 0.0, 0
        for _ in range(5):
            start = time.process_time()  # CPU time: what the event loop is held for, without the machine's queue
            try:
                payload = loads(body)
                if "feedback" in payload:
                    book.parse(payload)  # what /feedback does inline before anything is looked up
                else:
                    validator.validate(extract_rows(payload, contract.features, 1000))
                answer = b"(scored)"
            except GatewayError as exc:
                answer = error_response(exc).body
            worst = max(worst, time.process_time() - start)
            size = len(answer)
        table.append((name, len(body), size, worst * 1000))
    return table


def prepare_model(work: Path, contract, keep: bool = False):
    """The benchmark's champion in `work`: preprocessed and trained there, or the one a `--prepare` run kept."""
    from msml.data.preprocessing import preprocess
    from tests.integration.serving_fixtures import RegisteredModel, train_and_register

    processed = work / f"{contract.name}_preprocessing"
    if not (processed / "test_clean.csv").exists():
        print(f"preprocessing into {processed}", flush=True)
        preprocess(ROOT / "data" / f"{contract.name}_raw" / f"{contract.name}.csv", processed, contract)
    prepared = work / "model.json"
    if prepared.exists():
        print(f"reusing the model prepared in {work}", flush=True)
        kept = json.loads(prepared.read_text())
        root = kept.pop("artifact_root")
        return RegisteredModel(**kept, artifact_root=root and Path(root))
    print("training and registering the benchmark model", flush=True)
    model = train_and_register(processed, contract, work / f"registry-{int(time.time())}", contract.model_name)
    if keep:
        prepared.write_text(json.dumps(dataclasses.asdict(model), default=str))  # artifact_root: a Path
    return model


def request_bodies(work: Path, contract) -> tuple[list[dict], list[str], Path]:
    """The test split's rows and labels, and a file of 1-row request bodies (the first 2,000) for the client."""
    from msml.data.preprocessing import load_clean_splits
    from msml.ops.loadgen import frame_to_rows

    _, test = load_clean_splits(work / f"{contract.name}_preprocessing", contract)
    rows = frame_to_rows(test[contract.features])
    truths = test[contract.target].astype(str).tolist()
    bodies_file = work / "bodies.jsonl"
    bodies_file.write_text("\n".join(json.dumps({"dataframe_records": [r]}) for r in rows[:2000]) + "\n")
    return rows, truths, bodies_file


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=8.0, help="measured seconds per target and concurrency")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--overload-seconds", type=float, default=30.0)
    parser.add_argument("--soak-seconds", type=float, default=60.0)
    parser.add_argument("--frozen-seconds", type=float, default=8.0)
    parser.add_argument("--capacity-seconds", type=float, default=5.0, help="seconds per step of the capacity search")
    parser.add_argument("--deadline", type=float, default=2.0, help="the gateway's --model-timeout (request deadline)")
    parser.add_argument("--cpu-calls", type=int, default=2000, help="calls per upstream client in the CPU table")
    parser.add_argument(
        "--prepare",
        action="store_true",
        help="only preprocess and train into --workdir (untimed; a later run there reuses the model, "
        "so the shared benchmark lock is held for the measurements only)",
    )
    args = parser.parse_args()

    import httpx

    from msml.data.contract import Contract
    from msml.monitoring import metrics as M
    from msml.ops.processes import stop_process
    from msml.serving.model_server import ModelServer
    from tests.integration.serving_fixtures import free_port, parse_metrics, start_gateway

    contract = Contract.load()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    model = prepare_model(work, contract, keep=args.prepare)
    if args.prepare:
        return 0
    rows, truths, bodies_file = request_bodies(work, contract)

    server = ModelServer(model.uri, model.tracking_uri, free_port(), work / "model-server.log", workers=1)
    gateway_proc = None
    try:
        print(f"starting the model server ({' '.join(server.command)})", flush=True)
        server.start(wait=180)
        gateway_proc, gateway_url = start_gateway(
            server.url,
            model.tracking_uri,
            work / "gateway.log",
            "--model-uri",
            model.uri,
            "--model-timeout",
            str(args.deadline),
            "--probe-interval",
            "0.5",
        )
        targets = {"direct": server.url, "gateway": gateway_url}
        # warm both up (the scoring server's first calls are slow)
        run_client(list(targets.values()), 4, 1.0, bodies_file, warmup=2.0)
        results: dict[tuple[str, int], dict] = {}
        for c in args.concurrency:
            measured = run_client(list(targets.values()), c, args.duration, bodies_file)
            for name, r in zip(targets, measured, strict=True):
                results[(name, c)] = r
                print(
                    f"  {name:8s} c={c:<3d} {r['throughput']:8.1f} req/s  p50 {r['p50']:7.2f} ms  "
                    f"p99 {r['p99']:8.2f} ms  errors {r['errors']}",
                    flush=True,
                )

        # populate every series (validation failures, feedback) before timing the scrape
        with httpx.Client(base_url=gateway_url, timeout=10) as client:
            client.post("/invocations", json={"rows": [{**rows[0], "age": 1000}]})
            answer = client.post("/invocations", json={"rows": rows[:100]}).json()
            client.post(
                "/feedback",
                json={"feedback": [{"id": i, "label": t} for i, t in zip(answer["ids"], truths[:100], strict=True)]},
            )
            families = {name for name, _ in parse_metrics(client.get("/metrics").text)}
        scrape = scrape_times(gateway_url)

        groups = {"gateway": gateway_proc.pid, "model": server.proc.pid}  # each leads its process group
        capacity, search = find_capacity(
            lambda rate, seconds: open_loop(gateway_url, rate, seconds, bodies_file, groups),
            results[("gateway", max(args.concurrency))]["throughput"],
            args.capacity_seconds,
            args.overload_seconds,
        )
        sustained = search[-1][1]
        rss_before = _rss(gateway_proc.pid)
        slow_before = model_calls_over(gateway_url, parse_metrics, M.MODEL_REQUEST_SECONDS)
        print(f"soak: {0.8 * capacity:.0f} req/s for {args.soak_seconds:.0f} s", flush=True)
        soak = open_loop(gateway_url, 0.8 * capacity, args.soak_seconds, bodies_file, groups)
        rss_after = _rss(gateway_proc.pid)
        slow = {
            k: v - slow_before[k]
            for k, v in model_calls_over(gateway_url, parse_metrics, M.MODEL_REQUEST_SECONDS).items()
        }
        print(f"overload: {2 * capacity:.0f} req/s for {args.overload_seconds:.0f} s", flush=True)
        overload = open_loop(gateway_url, 2 * capacity, args.overload_seconds, bodies_file, groups)
        print(f"frozen: model server SIGSTOPped under {0.5 * capacity:.0f} req/s", flush=True)
        frozen = frozen_model(server, gateway_url, 0.5 * capacity, args.frozen_seconds, bodies_file)
    finally:
        if gateway_proc is not None:
            stop_process(gateway_proc)
        server.stop()

    print()
    print(
        f"1-row requests, {args.duration:.0f} s per cell, targets alternating (c=1: every request; else 0.5 s slices), "
        "model server: mlflow models serve, 1 worker; "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"
    )
    header = f"{'target':8s} {'c':>3s} {'req/s':>9s} {'p50 ms':>8s} {'p95 ms':>8s} {'p99 ms':>9s} {'errors':>7s}"
    print(header)
    print("-" * len(header))
    for c in args.concurrency:
        for name in ("direct", "gateway"):
            r = results[(name, c)]
            print(
                f"{name:8s} {c:3d} {r['throughput']:9.1f} {r['p50']:8.2f} {r['p95']:8.2f} {r['p99']:9.2f} "
                f"{r['errors']:7d}"
            )
    scrape_p50, scrape_max = statistics.median(scrape), max(scrape)
    wanted = [
        M.REQUESTS,
        M.DRIFT_PSI,
        M.LIVE_ACCURACY,
        M.VALIDATION_FAILURES,
        M.MODEL_INFO + "_info",
        M.FEATURE_MISSING,
        M.FEEDBACK,
    ]
    missing = [n for n in wanted if n not in families]
    print(
        f"/metrics scrape: p50 {scrape_p50:.2f} ms, max {scrape_max:.2f} ms over {len(scrape)} scrapes "
        f"({len([f for f in families if f.startswith('msml_')])} msml_ series names; missing: {missing or 'none'})"
    )

    print()
    print(
        f"open loop (arrivals at a fixed rate), capacity = the highest offered rate answered ≥ 99 % 200 with "
        f"p99 ≤ {CAPACITY_P99_MS:.0f} ms ({args.capacity_seconds:.0f} s steps, then held "
        f"{args.overload_seconds:.0f} s): {capacity:.0f} req/s"
    )
    print_open_loop(search, [("soak", soak), ("overload", overload), ("frozen", frozen)])
    growth = (rss_after - rss_before) / rss_before
    print(
        f"stale pooled connections retried by the client (closed by the server's keep-alive): soak "
        f"{soak['stale_retries']}, overload {overload['stale_retries']}"
    )
    print(f"soak: {slow['all']:.0f} model calls, {slow['0.1']:.0f} took over 100 ms, {slow['0.25']:.0f} over 250 ms")
    print(f"soak: gateway resident memory {rss_before / 1e6:.1f} → {rss_after / 1e6:.1f} MB ({growth:+.1%})")
    print(
        f"frozen: /health said down {frozen['detected_s']:.2f} s after SIGSTOP; fail-fast 503 model_down "
        f"p50 {frozen.get('503', {}).get('p50', float('nan')):.1f} ms; first 200 {frozen['recovered_s']:.2f} s "
        f"after SIGCONT"
    )

    hostile = hostile_hold_table(contract, rows)
    print()
    print("hostile bodies: event-loop CPU time per request (parse + shape + validate + answer), worst of 5")
    header = f"{'case':32s} {'body KB':>8s} {'answer KB':>10s} {'CPU ms':>7s}"
    print(header)
    print("-" * len(header))
    for name, body, answer, ms in hostile:
        print(f"{name:32s} {body / 1000:8.0f} {answer / 1000:10.1f} {ms:7.1f}")

    cpu = upstream_cpu_table(args.cpu_calls)
    print()
    print(
        f"upstream client CPU per call (µs), {args.cpu_calls} sequential calls each, tiny local server, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    header = f"{'client':10s} {'keep-alive':>11s} {'server closes':>14s}  correct"
    print(header)
    print("-" * len(header))
    for name, r in cpu.items():
        print(f"{name:10s} {r['keep']:11.0f} {r['close']:14.0f}  {r['correct']}")

    checks = []
    if 32 in args.concurrency:
        d, g = results[("direct", 32)], results[("gateway", 32)]
        checks.append(
            (
                f"c=32 throughput gateway/direct = {g['throughput'] / d['throughput']:.1f}× (≥ 12×)",
                g["throughput"] >= 12 * d["throughput"],
            )
        )
        checks.append((f"c=32 p99 gateway {g['p99']:.1f} ms ≤ direct {d['p99']:.1f} ms", g["p99"] <= d["p99"]))
    if 1 in args.concurrency:
        d, g = results[("direct", 1)], results[("gateway", 1)]
        checks.append(
            (f"c=1 p50 added by the gateway = {g['p50'] - d['p50']:+.2f} ms (≤ 2 ms)", g["p50"] - d["p50"] <= 2.0)
        )
    checks.append(
        (f"/metrics scrape p50 {scrape_p50:.2f} ms (≤ 20 ms), all series populated", scrape_p50 <= 20.0 and not missing)
    )
    errors = sum(r["errors"] for r in results.values())
    checks.append((f"errors: {errors}", errors == 0))
    checks.append((f"capacity {capacity:.0f} req/s held for {args.overload_seconds:.0f} s", serves_all(sustained)))
    at_capacity = sustained.get("200", {"p99": float("nan")})["p99"]
    good = overload.get("200", {"n": 0, "p99": float("inf")})
    checks.append(
        (
            f"overload goodput {good['n'] / overload['seconds']:.0f}/s ≥ 90 % of capacity {capacity:.0f}/s",
            good["n"] / overload["seconds"] >= 0.9 * capacity,
        )
    )
    checks.append(
        (
            f"overload p99 of accepted {good['p99']:.1f} ms ≤ 2× p99 at capacity sustained as long "
            f"({2 * at_capacity:.1f} ms)",
            good["p99"] <= 2 * at_capacity,
        )
    )
    checks.append(
        (
            f"frozen: p99 of all answers {frozen['all']['p99']:.0f} ms ≤ deadline {args.deadline * 1000:.0f} ms",
            frozen["all"]["p99"] <= args.deadline * 1000,
        )
    )
    fast = frozen.get("503", {}).get("p50", float("inf"))
    checks.append((f"frozen: fail-fast 503 p50 {fast:.1f} ms ≤ 50 ms", fast <= 50))
    soak_errors = soak["sent"] - soak.get("200", {"n": 0})["n"]
    checks.append(
        (f"soak: {soak_errors} errors, memory growth {growth:+.1%} (< 10 %)", soak_errors == 0 and growth < 0.10)
    )
    worst = max(hostile, key=lambda r: r[3])
    checks.append(
        (
            f"hostile bodies: worst event-loop hold {worst[3]:.1f} ms ({worst[0]}) ≤ 50 ms; largest answer "
            f"{max(r[2] for r in hostile) / 1000:.1f} KB ≤ 64 KB",
            worst[3] <= 50 and max(r[2] for r in hostile) <= 64_000,
        )
    )
    fastest = min((r for r in cpu.values() if r["correct"]), key=lambda r: r["close"] + r["keep"])
    checks.append(("upstream client: the gateway's own is the fastest correct one", fastest is cpu["msml.http"]))
    for text, ok in checks:
        print(f"  [{'ok' if ok else 'MISS'}] {text}")
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        client_main(sys.argv[2:])
    elif len(sys.argv) > 1 and sys.argv[1] == "--cpu":
        cpu_main(sys.argv[2:])
    elif len(sys.argv) > 1 and sys.argv[1] == "--tiny-server":
        asyncio.run(_tiny_server(int(sys.argv[2]), sys.argv[3] == "close"))
    else:
        sys.exit(main())
