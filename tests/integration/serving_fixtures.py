"""A champion model in a temp tracking store (real training + registry), and helpers to run the gateway.

The model is what production serves: `msml.training.train` logs the fitted transformer + estimator with
the contract's signature and `pyfunc_predict_fn="predict_proba"`, plus the drift reference artifact
the gateway reads; `msml.tracking.registry` registers it under the settings' model name as @champion.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

from msml.data.contract import Contract


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class RegisteredModel:
    tracking_uri: str
    name: str
    version: str
    run_id: str
    uri: str  # models:/<name>@champion
    artifact_root: Path | None = None  # where the store's runs keep their artifacts


def train_and_register(processed: Path, contract: Contract, workdir: Path, model_name: str) -> RegisteredModel:
    """The real training (`msml.training.train.train_baseline`: transformer + estimator logged with the
    contract's signature, `predict_proba` and the drift reference) and the real registry gate, in a
    temp SQLite store; the first version becomes @champion."""
    import mlflow

    from msml.config import load_settings
    from msml.tracking.registry import register_and_promote
    from msml.training.train import train_baseline

    workdir.mkdir(parents=True, exist_ok=True)
    settings = load_settings(contract_path=contract.path).with_overrides(
        processed_dir=Path(processed),
        tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}",
        artifact_root=workdir / "artifacts",
        experiment="serving-tests",
        model_name=model_name,
    )
    try:
        summary = train_baseline(settings)
        promotion = register_and_promote(summary.model_uri, model_name, summary.run_id)
    finally:
        mlflow.set_tracking_uri(None)
    assert promotion.promoted, promotion.reason
    return RegisteredModel(
        settings.tracking_uri,
        model_name,
        promotion.version,
        summary.run_id,
        f"models:/{model_name}@champion",
        settings.artifact_root,
    )


def start_gateway(
    model_url: str,
    tracking_uri: str,
    log: Path,
    *extra: str,
    port: int | None = None,
    timeout: float = 60.0,
    env: dict[str, str] | None = None,
):
    """The real `msml gateway` in its own process group; returns (Popen, base URL) once /ping answers.

    `env`: extra environment variables (e.g. MSML_FEEDBACK_TOKEN). The loop store is an SQLite file beside `log`
    unless `env` names one (MSML_LOOP_STORE), never the repository's run folder."""
    import os
    import sys

    from msml.ops.processes import spawn, stop_process
    from msml.serving.model_server import wait_for_ping

    port = port or free_port()
    bin_dir = Path(sys.executable).parent
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking_uri,
        "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}",
        "MSML_LOOP_STORE": f"sqlite:///{Path(log).parent / 'loop.db'}",
        **(env or {}),
    }
    cmd = [str(bin_dir / "msml"), "gateway", "--port", str(port), "--model-url", model_url, *extra]
    proc = spawn(cmd, log, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_ping(url, timeout, proc=proc, log=log)
    except BaseException:
        stop_process(proc)
        raise
    return proc, url


def parse_metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Prometheus text → {(sample name, sorted labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
