"""Promotion under load, for real: `make demo`'s serving (two `mlflow models serve` replicas behind `msml gateway`,
pid files in the run folder) keeps answering while @champion moves and msml.loop.rollout restarts the replicas one
at a time — no 5xx — and afterwards the gateway reports the new version and its drift reference is the new
champion's run's.
"""

from __future__ import annotations

import concurrent.futures
import json
import threading
import time
import urllib.error
import urllib.request
from collections import Counter

import mlflow
import pytest
from mlflow import MlflowClient

from msml.config import load_settings
from msml.monitoring.render import Ports
from msml.ops.demo import start_serving, stop_all
from msml.tracking.registry import CHAMPION, promote_gated
from tests.integration.serving_fixtures import free_port, train_and_register

pytestmark = [pytest.mark.slow, pytest.mark.timing]  # run last (tests/conftest.py)
LOAD_THREADS = 4
MAX_SECONDS = 120  # the load stops by itself even if the rollout hangs


def _copy_as_new_version(client: MlflowClient, name: str, version: str, experiment: str) -> tuple[str, str]:
    """The same model logged again in a run of its own (its own drift reference): (new version, its run id)."""
    from mlflow.artifacts import download_artifacts

    source = client.get_model_version(name, version)
    local = download_artifacts(run_id=source.run_id, artifact_path="")
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name="next-champion") as run:
        mlflow.log_artifacts(local)
    new = mlflow.register_model(f"runs:/{run.info.run_id}/model", name)
    return str(new.version), run.info.run_id


def _health(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/health", timeout=5) as resp:
        return json.loads(resp.read())


def _free_pair() -> int:
    for _ in range(50):
        port = free_port()
        try:
            import socket

            with socket.socket() as s:
                s.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue
    raise RuntimeError("no two consecutive free ports")


def test_the_champion_changes_under_load_without_a_5xx(processed, contract, tmp_path, monkeypatch):
    model = train_and_register(processed, contract, tmp_path / "store", "loop-rollout-model")
    settings = load_settings(root=tmp_path, contract_path=contract.path).with_overrides(
        processed_dir=processed, tracking_uri=model.tracking_uri, model_name=model.name
    )
    monkeypatch.setenv("MSML_MODEL_NAME", model.name)  # the gateway's default model URI: models:/<name>@champion
    mlflow.set_tracking_uri(model.tracking_uri)
    client = MlflowClient()
    new_version, new_run = _copy_as_new_version(client, model.name, model.version, "serving-tests")
    ports = Ports(gateway=free_port(), model_server=_free_pair())
    body = json.dumps(
        {
            "dataframe_split": {
                "columns": contract.features,
                "data": [
                    [
                        39,
                        "State-gov",
                        77516,
                        "Bachelors",
                        13,
                        "Never-married",
                        "Adm-clerical",
                        "Not-in-family",
                        "White",
                        "Male",
                        2174,
                        0,
                        40,
                        "United-States",
                    ]
                ],
            }
        }
    ).encode()
    statuses: Counter = Counter()
    reasons: Counter = Counter()  # the answers that were not 200, as the gateway wrote them
    done = threading.Event()

    def load(url: str) -> None:
        deadline = time.monotonic() + MAX_SECONDS
        while not done.is_set() and time.monotonic() < deadline:
            req = urllib.request.Request(f"{url}/invocations", body, {"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=10) as resp:
                    statuses[resp.status] += 1
            except urllib.error.HTTPError as exc:
                statuses[exc.code] += 1
                reasons[exc.read()[:200]] += 1
            except OSError as exc:
                statuses[type(exc).__name__] += 1

    try:
        urls = start_serving(settings, ports, replicas=2)
        gateway = urls["gateway"]
        before = _health(gateway)
        assert before["model"]["version"] == model.version and before["drift_reference_run"] == model.run_id
        with concurrent.futures.ThreadPoolExecutor(LOAD_THREADS) as pool:
            workers = [pool.submit(load, gateway) for _ in range(LOAD_THREADS)]
            time.sleep(1.0)
            assert promote_gated(model.name, new_version, model.version, "test")
            from msml.loop.rollout import roll_out

            rolled = roll_out(settings.run_dir, settings.tracking_uri)
            time.sleep(1.0)
            done.set()
            for w in workers:
                w.result()
        deadline = time.monotonic() + 10
        while _health(gateway)["model"]["version"] != new_version and time.monotonic() < deadline:
            time.sleep(0.2)
        after = _health(gateway)
        log = (settings.run_dir / "gateway.log").read_text(errors="replace")
        print("\n".join(line for line in log.splitlines() if "model server" in line)[-3000:])
    finally:
        done.set()
        stop_all(settings)
        mlflow.set_tracking_uri(None)
    print(f"statuses during the change: {dict(statuses)}; rollout {rolled}")
    assert set(rolled["replicas"]) == {"model-server", "model-server-2"} and rolled["gateway_told"]
    assert statuses[200] > 100 and set(statuses) == {200}, (statuses, reasons)
    assert str(client.get_model_version_by_alias(model.name, CHAMPION).version) == new_version
    assert after["model"]["version"] == new_version
    assert after["drift_reference"] and after["drift_reference_run"] == new_run  # the new champion's training data
