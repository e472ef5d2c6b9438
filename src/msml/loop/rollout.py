"""After a promotion: the model servers behind the gateway restarted one at a time, then the gateway told.

Each replica `make demo` started (pid files `model-server*.pid` in the run folder) serves `models:/<name>@champion`,
resolved when it starts; restarting it on the same port is how it serves the new champion. One at a time: each
waits until the new process answers /ping and the gateway has it back in rotation (its /health) before the next
stops. While one restarts the others take its batches (a refused or broken connection is retried on another
replica, msml.serving.upstream). With a single replica the restart is a gap of a model load (20-45 s on this
shared machine) in which the gateway answers 503 + Retry-After: run two (`msml demo --replicas 2`) to change the
champion without a failed request. Last, SIGHUP to the gateway (msml.serving.gateway): it resolves the alias
again — the model info it reports and the drift reference, now the new champion's training data, on a fresh window.
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path

from msml.errors import ServerError
from msml.ops.processes import inspect, start_background, stop
from msml.serving.model_server import wait_for_ping


def replica_pidfiles(run_dir: Path) -> list[Path]:
    """The model servers' pid files, first replica first (model-server.pid, model-server-2.pid, …)."""
    found = [run_dir / "model-server.pid", *sorted(run_dir.glob("model-server-*.pid"), key=lambda p: int(p.stem[13:]))]
    return [p for p in found if p.exists()]


def _port(cmdline: list[str]) -> int:
    return int(cmdline[cmdline.index("-p") + 1])


def restart_replica(pidfile: Path, env: dict[str, str], timeout: float = 180.0) -> float:
    """Stop the model server `pidfile` names and start the same command again; seconds until /ping answers."""
    found = inspect(pidfile)
    if found.state != "ours":
        raise ServerError(f"{pidfile} names no model server of ours ({found.state}): cannot restart it")
    cmd = json.loads(pidfile.read_text())["cmdline"]
    url = f"http://127.0.0.1:{_port(cmd)}"
    start = time.perf_counter()
    stop(pidfile)
    log = pidfile.with_suffix(".log")
    start_background(cmd, pidfile, log, env=env)
    wait_for_ping(url, timeout, log=log)
    return time.perf_counter() - start


def gateway_url(run_dir: Path) -> str | None:
    """The URL of the gateway of `run_dir` (from its pid file's command line), None when none of ours runs."""
    pidfile = run_dir / "gateway.pid"
    if inspect(pidfile).state != "ours":
        return None
    cmd = json.loads(pidfile.read_text())["cmdline"]
    return f"http://127.0.0.1:{int(cmd[cmd.index('--port') + 1])}" if "--port" in cmd else None


def wait_in_rotation(gateway: str, replica: str, timeout: float = 30.0) -> float:
    """Block until the gateway's /health reports `replica` up again; seconds waited. Its probe runs every second:
    stopping the next replica before it has seen this one answer leaves it none for that moment (measured: 517 of
    3,309 requests refused with 503 in the 0.6 s between /ping answering here and the gateway's next probe)."""
    start = time.perf_counter()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{gateway}/health", timeout=2) as resp:
                body = json.loads(resp.read())
        except urllib.error.HTTPError as exc:  # 503 while no replica is up: the body still lists them
            body = json.loads(exc.read() or b"{}")
        except (OSError, ValueError):
            body = {}
        if (body.get("replicas") or {}).get(replica):
            return time.perf_counter() - start
        time.sleep(0.1)
    raise ServerError(f"the gateway at {gateway} did not see {replica} up within {timeout:.0f} s")


def signal_gateway(run_dir: Path) -> bool:
    """SIGHUP the gateway of `run_dir` (it re-resolves the champion); False when none of ours runs."""
    found = inspect(run_dir / "gateway.pid")
    if found.state != "ours":
        return False
    os.kill(found.pid, signal.SIGHUP)
    return True


def roll_out(run_dir: Path, tracking_uri: str, progress=print) -> dict:
    """Restart every replica one at a time, then tell the gateway; what was done, with the seconds each took."""
    from msml.serving.model_server import serve_env

    env = serve_env(tracking_uri)
    gateway = gateway_url(run_dir)
    restarted = {}
    for pidfile in replica_pidfiles(run_dir):
        seconds = restart_replica(pidfile, env)
        if gateway is not None:  # back in the gateway's rotation before the next one stops
            cmd = json.loads(pidfile.read_text())["cmdline"]
            seconds += wait_in_rotation(gateway, f"http://127.0.0.1:{_port(cmd)}")
        restarted[pidfile.stem] = round(seconds, 1)
        progress(f"      {pidfile.stem} serves the new champion ({restarted[pidfile.stem]:.1f} s)")
    return {"replicas": restarted, "gateway_told": signal_gateway(run_dir)}
