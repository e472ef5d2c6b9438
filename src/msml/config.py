"""Settings: paths, names and the tracking URI — read once from the environment, passed down.

Every default lives here; `MSML_*` environment variables override them (and the standard
`MLFLOW_TRACKING_URI` / `MLFLOW_TRACKING_USERNAME` / `MLFLOW_TRACKING_PASSWORD` switch tracking
to any MLflow server, DagsHub included; `MSML_LOOP_STORE` moves the loop's store to any PostgreSQL).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from msml.data.contract import DEFAULT_CONTRACT, Contract

# The course's identities (Kriteria 1–4 submission).
DEFAULT_STUDENT = "YudhaElfransyah"
DEFAULT_GITHUB_USER = "YudhaElfransyah"
DEFAULT_DOCKERHUB_USER = "yudhaelfransyah"
# Optuna trials of `msml tune`: the search plateaus by trial ~5 on Adult (benchmarks/bench_training.py),
# and 10 trials fit the 3-minute budget on 2 cores.
DEFAULT_TRIALS = 10
# Tuning stops starting trials after this many seconds, so a busy machine still ends within ~3 minutes.
DEFAULT_TIME_BUDGET = 150.0
# Tuning workers on a shared study: a running trial's heartbeat, seconds. A missed beat is not a death: on a
# loaded 2-core machine a thread can wait seconds for the GIL, so a trial is failed (and retried by another
# worker) only after GRACE_BEATS beats in a row are missing. 10 s × 3 = 30 s lost per dead worker, against
# ~18 CPU-s per trial (docs/SCALING.md); one UPDATE per beat per running trial.
DEFAULT_HEARTBEAT_SECONDS = 10
GRACE_BEATS = 3
# The seed of everything seeded (split, CV folds, samplers, estimators) unless `--seed` says otherwise.
# The Python everything is locked for (`make lock --python-version`) and tested on; conda.yaml files, workflows
# and the hand-in state it (the course recommends 3.12.7: the lock, mlflow 2.19's pins, runs on 3.11.7 here).
PYTHON_VERSION = "3.11"
DEFAULT_SEED = 42
DEFAULT_TEST_SIZE = 0.2  # share of rows held out as the test split (stratified)
# P(positive) at or above this is the positive class: evaluation, the gateway's predicted class, the model card.
DECISION_THRESHOLD = 0.5
LOOPBACK = "127.0.0.1"
# The closed loop's store (msml.loop.store): an SQLAlchemy URL; default an SQLite file in the run folder.
LOOP_STORE_ENV = "MSML_LOOP_STORE"
LOOP_DB_FILE = "loop.db"


@dataclass(frozen=True)
class Ports:
    """Where each server listens on 127.0.0.1 (defaults: what `make demo` and the course configs use)."""

    gateway: int = 8000
    model_server: int = 5001
    mlflow: int = 5000  # also `msml tracking up`: where the monitoring stack's Prometheus scrapes MLflow
    prometheus: int = 9090
    alertmanager: int = 9093
    receiver: int = 9095
    grafana: int = 3000


DEFAULT_PORTS = Ports()
# `msml tracking up`'s PostgreSQL, beside a system one on 5432.
TRACKING_POSTGRES_PORT = 5433


def local_url(port: int) -> str:
    """http://127.0.0.1:<port>: the URL of a server this machine runs."""
    return f"http://{LOOPBACK}:{port}"


@dataclass(frozen=True)
class Settings:
    root: Path
    contract: Contract
    raw_path: Path
    processed_dir: Path
    tracking_uri: str
    artifact_root: Path
    experiment: str
    model_name: str
    student: str
    github_user: str
    dockerhub_user: str
    loop_store_url: str | None = None  # MSML_LOOP_STORE; None: the SQLite file in the run folder

    @property
    def dataset(self) -> str:
        return self.contract.name

    @property
    def image(self) -> str:
        """Docker image name `<user>/<model>` as `mlflow models build-docker -n` takes it."""
        return f"{self.dockerhub_user}/{self.model_name}"

    @property
    def run_dir(self) -> Path:
        """Pid files and logs of the servers `make demo` starts."""
        return self.root / ".run"

    @property
    def loop_store(self) -> str:
        """The loop store's SQLAlchemy URL: MSML_LOOP_STORE, else `sqlite:///<run folder>/loop.db`."""
        return self.loop_store_url or f"sqlite:///{self.run_dir / LOOP_DB_FILE}"

    @property
    def feedback_dir(self) -> Path:
        """Where `msml collect` writes its versioned snapshots: data/<dataset>_feedback/<version>/."""
        return self.root / "data" / f"{self.dataset}_feedback"

    def with_overrides(self, **changes) -> Settings:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


def load_settings(root: str | Path | None = None, contract_path: str | Path | None = None) -> Settings:
    """Build settings from defaults, the environment and explicit arguments (which win)."""
    env = os.environ
    root = Path(root or env.get("MSML_HOME") or Path.cwd()).resolve()
    contract = Contract.load(contract_path or env.get("MSML_CONTRACT") or DEFAULT_CONTRACT)
    name = contract.name
    return Settings(
        root=root,
        contract=contract,
        raw_path=Path(env.get("MSML_RAW") or root / "data" / f"{name}_raw" / f"{name}.csv"),
        processed_dir=Path(env.get("MSML_PROCESSED") or root / "data" / f"{name}_preprocessing"),
        tracking_uri=env.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root / 'mlflow.db'}",
        artifact_root=Path(env.get("MSML_ARTIFACT_ROOT") or root / "mlartifacts"),
        experiment=env.get("MLFLOW_EXPERIMENT_NAME") or f"{name}-classification",
        model_name=env.get("MSML_MODEL_NAME") or contract.model_name,
        student=env.get("MSML_STUDENT") or DEFAULT_STUDENT,
        github_user=env.get("MSML_GITHUB_USER") or DEFAULT_GITHUB_USER,
        dockerhub_user=env.get("MSML_DOCKERHUB_USER") or DEFAULT_DOCKERHUB_USER,
        loop_store_url=env.get(LOOP_STORE_ENV) or None,
    )
