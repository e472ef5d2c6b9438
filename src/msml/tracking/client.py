"""MLflow tracking set-up: embedded SQLite + local artifacts by default, any MLflow server by URI.

`MLFLOW_TRACKING_URI` (+ `MLFLOW_TRACKING_USERNAME` / `MLFLOW_TRACKING_PASSWORD`) switches to a
remote server such as DagsHub (`https://dagshub.com/<user>/<repo>.mlflow`) with no code change.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import mlflow
import requests

from msml.config import Settings
from msml.errors import TrackingError


def is_remote(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def check_server(uri: str, timeout: tuple[float, float] = (5.0, 60.0)) -> None:
    """Fail fast with a clear message when a remote tracking server is down or refuses us.

    MLflow's own client retries a dead server for minutes before a long traceback. A refused or
    silent connection fails within the connect timeout; a server that accepted may take longer to
    answer its first query (seen: > 5 s from a fresh PostgreSQL-backed server on a loaded machine).
    """
    if not is_remote(uri):
        return
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    auth = (user, password) if user and password else None
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        response = requests.get(
            f"{uri.rstrip('/')}/api/2.0/mlflow/experiments/search",
            params={"max_results": 1},
            auth=auth,
            headers=headers,
            timeout=timeout,
        )
    except requests.RequestException as exc:
        raise TrackingError(f"tracking server {uri} is not reachable: {type(exc).__name__}") from None
    if response.status_code in (401, 403):
        raise TrackingError(
            f"tracking server {uri} refused the credentials (HTTP {response.status_code}): check "
            "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (DagsHub: your user name and a token)"
        )
    if response.status_code >= 400:
        raise TrackingError(f"tracking server {uri} answered HTTP {response.status_code}: {response.text[:200]}")


def project_experiment(requested: str) -> str | None:
    """Inside `mlflow run`: the experiment of the run the project opened (MLFLOW_EXPERIMENT_ID), else None.

    `mlflow run` creates the run first and hands its id to the entry point (MLFLOW_RUN_ID), which
    `mlflow.start_run()` resumes; setting any other experiment would make that resume fail. A
    different requested name is reported, not obeyed: `mlflow run --experiment-name` decides.
    """
    run_id, experiment_id = os.environ.get("MLFLOW_RUN_ID"), os.environ.get("MLFLOW_EXPERIMENT_ID")
    if not (run_id and experiment_id):
        return None
    try:
        actual = mlflow.get_experiment(experiment_id).name
    except mlflow.exceptions.MlflowException as exc:
        raise TrackingError(f"tracking store {mlflow.get_tracking_uri()}: {exc.message}") from None
    if actual != requested:
        logging.getLogger(__name__).warning(
            "the project run %s is in experiment %r, not %r: logging there (choose it with "
            "`mlflow run --experiment-name %s`)",
            run_id,
            actual,
            requested,
            requested,
        )
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def setup_tracking(settings: Settings, experiment: str | None = None) -> str:
    """Point MLflow at the settings' store and make sure the experiment exists. Returns its id."""
    check_server(settings.tracking_uri)
    mlflow.set_tracking_uri(settings.tracking_uri)
    name = experiment or settings.experiment
    project_run = project_experiment(name)
    if project_run is not None:
        return project_run
    try:
        found = mlflow.get_experiment_by_name(name)
        if found is not None:
            experiment_id = found.experiment_id
        elif is_remote(settings.tracking_uri):
            experiment_id = mlflow.create_experiment(name)  # the server decides where artifacts go
        else:
            settings.artifact_root.mkdir(parents=True, exist_ok=True)
            experiment_id = mlflow.create_experiment(name, artifact_location=settings.artifact_root.as_uri())
    except mlflow.exceptions.MlflowException as exc:
        raise TrackingError(f"tracking store {settings.tracking_uri}: {exc.message}") from None
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def server_command(
    backend_uri: str,
    artifacts_dir: str | Path,
    port: int,
    host: str = "127.0.0.1",
    app_name: str | None = None,
    expose_prometheus: str | Path | None = None,
) -> list[str]:
    """`mlflow server` on loopback serving its own artifacts (the UI, a DagsHub-like remote, or
    with `--app-name basic-auth` a server behind HTTP basic auth)."""
    command = [
        str(Path(sys.executable).parent / "mlflow"),
        "server",
        "--host",
        host,
        "--port",
        str(port),
        "--backend-store-uri",
        backend_uri,
        "--artifacts-destination",
        str(artifacts_dir),
        "--workers",
        "1",
    ]
    if app_name:
        command += ["--app-name", app_name]
    if expose_prometheus:
        command += ["--expose-prometheus", str(expose_prometheus)]
    return command
