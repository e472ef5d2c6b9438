"""After a promotion: the model servers behind the gateway restarted one at a time, then the gateway told.

Each replica `make demo` started (pid files `model-server*.pid` in the run folder) serves `models:/<name>@champion`,
resolved when it starts; restarting it on the same port is how it serves the new champion. One at a time, each
waiting until the new one answers /ping before the next stops: while one restarts, the gateway's others take its
batches (a refused connection is retried on another replica, msml.serving.upstream). With a single replica the
restart is a gap of a model load (~5-10 s here) in which the gateway answers 503 + Retry-After: run two
(`msml demo --replicas 2`) to change the champion without a refused request. Last, SIGHUP to the gateway
(msml.serving.gateway): it resolves the alias again — the model info it reports and the drift reference, now the
new champion's training data, on a fresh window.
"""

from __future__ import annotations

import json
import os
import signal
import time
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
    restarted = {}
    for pidfile in replica_pidfiles(run_dir):
        restarted[pidfile.stem] = round(restart_replica(pidfile, env), 1)
        progress(f"      {pidfile.stem} serves the new champion ({restarted[pidfile.stem]:.1f} s)")
    return {"replicas": restarted, "gateway_told": signal_gateway(run_dir)}
