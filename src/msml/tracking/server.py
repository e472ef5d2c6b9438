"""The shared tracking server: `mlflow server` on a PostgreSQL backend store with proxied artifacts.

`msml tracking up` starts a PostgreSQL cluster of our own (msml.tracking.postgres; or uses the one given by
`--backend-store-uri`) and `mlflow server` with `--artifacts-destination`, so clients upload and
download artifacts through the server's HTTP API and never see its storage path, and with
`--expose-prometheus`, so Prometheus scrapes it (the monitoring config's `mlflow` job). Clients
switch to it with `MLFLOW_TRACKING_URI=http://…` alone. The same cluster holds a second database
for Optuna's distributed studies (`msml tune --storage`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from msml.config import DEFAULT_PORTS, TRACKING_POSTGRES_PORT
from msml.errors import PortBusyError
from msml.ops import processes
from msml.tracking import postgres
from msml.tracking.client import server_command

SERVER = "tracking-server"


@dataclass(frozen=True)
class Layout:
    """Where the tracking server keeps its state under `run_dir` (pid file, log, database, artifacts)."""

    run_dir: Path

    @property
    def home(self) -> Path:
        return self.run_dir / "tracking"

    @property
    def pidfile(self) -> Path:
        return self.run_dir / f"{SERVER}.pid"

    @property
    def log(self) -> Path:
        return self.run_dir / f"{SERVER}.log"

    @property
    def postgres_dir(self) -> Path:
        return self.home / "postgres"

    @property
    def postgres_port_file(self) -> Path:
        return self.home / "postgres.port"

    @property
    def artifacts(self) -> Path:
        return self.home / "artifacts"

    @property
    def prometheus(self) -> Path:
        return self.home / "prometheus"  # prometheus_flask_exporter's multiprocess directory


@dataclass(frozen=True)
class Started:
    url: str
    backend_store_uri: str
    optuna_storage: str | None
    pid: int
    loop_store: str | None = None  # the loop store's database in the same cluster (MSML_LOOP_STORE)


def up(
    run_dir: Path,
    port: int = DEFAULT_PORTS.mlflow,
    postgres_port: int = TRACKING_POSTGRES_PORT,
    backend_store_uri: str | None = None,
    host: str = "127.0.0.1",
    timeout: float = 120.0,
) -> Started:
    """Start PostgreSQL (unless `backend_store_uri` names one) and `mlflow server`; wait until it answers."""
    layout = Layout(Path(run_dir))
    running = processes.read_pid(layout.pidfile)
    if running is not None:
        raise PortBusyError(f"the tracking server is already running (pid {running}); `msml tracking down` first")
    optuna_storage = loop_store = None
    if backend_store_uri is None:
        cluster = postgres.start_cluster(layout.postgres_dir, postgres_port)
        layout.postgres_port_file.write_text(f"{postgres_port}\n")
        backend_store_uri, optuna_storage = cluster.uri(postgres.MLFLOW_DB), cluster.uri(postgres.OPTUNA_DB)
        loop_store = cluster.uri(postgres.LOOP_DB)
    url = f"http://{host}:{port}"
    try:
        layout.artifacts.mkdir(parents=True, exist_ok=True)
        layout.prometheus.mkdir(parents=True, exist_ok=True)
        command = server_command(
            backend_store_uri, layout.artifacts, port, host=host, expose_prometheus=layout.prometheus
        )
        pid = processes.start_background(command, layout.pidfile, layout.log)
        processes.wait_ready(
            f"{url}/health",
            timeout=timeout,
            alive=lambda: processes.read_pid(layout.pidfile) is not None,
            log=layout.log,
        )
    except BaseException:
        down(run_dir)  # what this call started, nothing else: a running server was refused above
        raise
    return Started(url, backend_store_uri, optuna_storage, pid, loop_store)


def down(run_dir: Path) -> list[str]:
    """Stop the `mlflow server` and the PostgreSQL cluster `up` started; returns what was stopped."""
    layout = Layout(Path(run_dir))
    stopped = []
    if processes.stop(layout.pidfile).state == "ours":  # a PidFile is always truthy: its state says what was done
        stopped.append(SERVER)
    if layout.postgres_port_file.exists():
        port = int(layout.postgres_port_file.read_text())
        if postgres.Cluster(layout.postgres_dir.resolve(), port).stop():
            stopped.append(f"postgresql (127.0.0.1:{port})")
        layout.postgres_port_file.unlink()
    return stopped
