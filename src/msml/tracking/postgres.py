"""A PostgreSQL cluster of our own (Debian's `postgresql` package): create, start, stop, databases.

The tracking server's backend store, Optuna's distributed study and the loop store live in it. The cluster
listens on 127.0.0.1 only (and on a unix socket inside its own folder), so `trust` authentication
reaches nobody but local users; a shared deployment uses a managed PostgreSQL with passwords
(docs/SCALING.md). PostgreSQL refuses to run as root, so as root the cluster is owned by the
`postgres` user the Debian package creates.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from msml.errors import TrackingError

SUPERUSER = "postgres"
# One database per store: MLflow and Optuna both keep an `alembic_version` table; the loop store (msml.loop.store:
# predictions, labels, retrain decisions) has its own too.
MLFLOW_DB = "mlflow"
OPTUNA_DB = "optuna"
LOOP_DB = "loop"


class PostgresError(TrackingError):
    """PostgreSQL is missing or a cluster operation failed; the message says which and why."""


def find_bin_dir() -> Path:
    """The newest /usr/lib/postgresql/<major>/bin holding initdb (Debian does not put it on PATH)."""
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))
    if candidates:
        return candidates[-1].parent
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    raise PostgresError(
        "PostgreSQL is not installed (no initdb): run `make system` "
        "(scripts/install-system-deps.sh installs Debian's postgresql)"
    )


def _as_owner(command: list[str]) -> list[str]:
    """Run as the `postgres` user when we are root (PostgreSQL refuses root), else as ourselves."""
    return ["runuser", "-u", SUPERUSER, "--", *command] if os.geteuid() == 0 else command


def _give_to_owner(path: Path) -> None:
    if os.geteuid() == 0:
        owner = pwd.getpwnam(SUPERUSER)
        os.chown(path, owner.pw_uid, owner.pw_gid)


MAX_CONNECTIONS = 300


@dataclass(frozen=True)
class Cluster:
    """A cluster in `data_dir` on 127.0.0.1:`port`, its unix socket in `data_dir` too."""

    data_dir: Path
    port: int

    @property
    def log(self) -> Path:
        return self.data_dir.parent / f"{self.data_dir.name}.log"

    def uri(self, database: str) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def _run(self, command: list[str], what: str, timeout: float = 120) -> str:
        result = subprocess.run(_as_owner(command), capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise PostgresError(f"{what} failed (exit {result.returncode}): {(result.stderr or result.stdout)[-800:]}")
        return result.stdout

    def init(self) -> None:
        """initdb, unless `data_dir` already holds a cluster (then it is reused, data and all)."""
        if (self.data_dir / "PG_VERSION").exists():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.chmod(0o700)
        _give_to_owner(self.data_dir)
        self._run(
            [
                str(find_bin_dir() / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                SUPERUSER,
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-instructions",
            ],
            "initdb",
        )

    def start(self) -> None:
        """Start the server and wait until it accepts connections (`pg_ctl -w`)."""
        self.log.touch()
        _give_to_owner(self.log)  # the server writes its log as the cluster's owner
        # 300 connections, not PostgreSQL's 100: each process that shares the study (the creator, every tuning
        # worker and its heartbeat thread) and the tracking server keep SQLAlchemy pools of their own; with two
        # workers, a dead one's retry and the server, 100 ran out in a clean-clone CI run ("too many clients already")
        options = f"-p {self.port} -k {self.data_dir} -c listen_addresses=127.0.0.1"
        options += f" -c max_connections={MAX_CONNECTIONS}"
        self._run(
            [
                str(find_bin_dir() / "pg_ctl"),
                "-D",
                str(self.data_dir),
                "-o",
                options,
                "-l",
                str(self.log),
                "-w",
                "-t",
                "60",
                "start",
            ],
            f"starting PostgreSQL on 127.0.0.1:{self.port} (log: {self.log})",
        )

    def running(self) -> bool:
        result = subprocess.run(
            _as_owner([str(find_bin_dir() / "pg_ctl"), "-D", str(self.data_dir), "status"]),
            capture_output=True,
            text=True,
            timeout=30,
        )
        return result.returncode == 0

    def stop(self) -> bool:
        """Stop the server (fast shutdown: open sessions are rolled back). False when it was not running."""
        if not (self.data_dir / "postmaster.pid").exists():
            return False
        self._run(
            [str(find_bin_dir() / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "stop"],
            "stopping PostgreSQL",
        )
        return True

    def create_database(self, name: str) -> None:
        """Create database `name` unless it exists."""
        psql = [
            str(find_bin_dir() / "psql"),
            "-h",
            str(self.data_dir),
            "-p",
            str(self.port),
            "-U",
            SUPERUSER,
            "-d",
            "postgres",
            "-tAc",
        ]
        exists = self._run([*psql, f"SELECT 1 FROM pg_database WHERE datname = '{name}'"], "psql").strip()
        if exists != "1":
            self._run([*psql, f'CREATE DATABASE "{name}"'], f"creating database {name}")


def start_cluster(
    data_dir: str | Path, port: int, databases: tuple[str, ...] = (MLFLOW_DB, OPTUNA_DB, LOOP_DB)
) -> Cluster:
    """Create (if new) and start a cluster with `databases`; the caller stops it with `Cluster.stop`."""
    cluster = Cluster(Path(data_dir).resolve(), port)
    cluster.init()
    cluster.start()
    try:
        for name in databases:
            cluster.create_database(name)
    except PostgresError:
        cluster.stop()
        raise
    return cluster
