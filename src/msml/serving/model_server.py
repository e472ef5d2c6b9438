"""The model runtime: MLflow's own scoring server (`mlflow models serve`) for the champion.

The gateway talks to it only through `/ping` and `/invocations`, exactly what the Docker image
built by `mlflow models build-docker` answers on port 8080, so either can sit behind the gateway.
"""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from msml.config import DEFAULT_PORTS
from msml.ops.processes import spawn, stop_process, wait_ready

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = DEFAULT_PORTS.model_server


def serve_command(
    model_uri: str, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, workers: int = 1, timeout: int = 60
) -> list[str]:
    """The `mlflow models serve` command line (local env manager: the venv already has the deps)."""
    mlflow = Path(sys.executable).parent / "mlflow"
    return [
        str(mlflow) if mlflow.exists() else "mlflow",
        "models",
        "serve",
        "-m",
        model_uri,
        "--env-manager",
        "local",
        "-h",
        host,
        "-p",
        str(port),
        "-w",
        str(workers),
        "-t",
        str(timeout),
    ]


def replica_ports(port: int, replicas: int) -> list[int]:
    """The ports of `replicas` model servers: consecutive from `port`. ValueError when none or past 65535."""
    if replicas < 1:
        raise ValueError(f"replicas must be at least 1, got {replicas}")
    if not 0 < port <= 65536 - replicas:
        raise ValueError(f"{replicas} model servers from port {port} would pass port 65535")
    return list(range(port, port + replicas))


def replica_name(i: int) -> str:
    """The name (pid file, log) of model-server replica `i` from 0: the first keeps the single server's name."""
    return "model-server" if i == 0 else f"model-server-{i + 1}"


def serve_env(tracking_uri: str, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for the server: the tracking URI, the venv's bin on PATH (it execs gunicorn), 1 math thread."""
    env = dict(os.environ if base is None else base)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["MLFLOW_TRACKING_URI"] = tracking_uri
    # One math thread per worker: OpenMP/BLAS pools spin-waiting on a shared, busy machine multiply
    # the latency of small requests (measured: p50 20 ms → 100+ ms under load). Scale with --workers.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(var, "1")
    return env


def ping(url: str, timeout: float = 1.0) -> bool:
    """True when `<url>/ping` answers 200."""
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/ping", timeout=timeout) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def wait_for_ping(
    url: str, timeout: float = 120.0, proc: subprocess.Popen | None = None, log: Path | None = None
) -> None:
    """Block until `<url>/ping` answers; RuntimeError (with the log's tail) if `proc` dies or time runs out."""
    wait_ready(f"{url.rstrip('/')}/ping", timeout, alive=(lambda: proc.poll() is None) if proc else None, log=log)


class ModelServer:
    """One `mlflow models serve` process group: start, wait for /ping, stop (only what it started)."""

    def __init__(
        self,
        model_uri: str,
        tracking_uri: str,
        port: int,
        log: str | Path,
        host: str = DEFAULT_HOST,
        workers: int = 1,
        timeout: int = 60,
    ) -> None:
        self.model_uri = model_uri
        self.tracking_uri = tracking_uri
        self.host = host
        self.port = port
        self.workers = workers
        self.timeout = timeout
        self.log = Path(log)
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def command(self) -> list[str]:
        return serve_command(self.model_uri, self.host, self.port, self.workers, self.timeout)

    def start(self, wait: float | None = 120.0) -> ModelServer:
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError(f"model server already running (pid {self.proc.pid})")
        self.proc = spawn(self.command, self.log, env=serve_env(self.tracking_uri))
        if wait:
            self.wait_ready(wait)
        return self

    def wait_ready(self, timeout: float = 120.0) -> ModelServer:
        """Block until /ping answers; on failure (it exited, time ran out) stop it and raise."""
        try:
            wait_for_ping(self.url, timeout=timeout, proc=self.proc, log=self.log)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is not None:
            stop_process(self.proc, timeout=timeout)
            self.proc = None

    def __enter__(self) -> ModelServer:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc) -> None:
        self.stop()
