"""Real Alertmanager → real receiver → the loop's trigger and its guards.

Alertmanager runs with the config the stack renders (webhook to the receiver's /trigger, bearer token read from a
0600 file); alerts are POSTed to its API as Prometheus would. The receiver runs in-process with a real loop store
(SQLite). Its retrain action is a counting subprocess (appends one line per start, holds, writes the outcome the
receiver reads): each test proves the guards, not training; tests/integration/test_loop_gate.py runs the real one.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from msml.loop import trigger as T
from msml.loop.store import Label, Prediction, open_store
from msml.monitoring import render
from msml.monitoring.receiver import LoopMetrics, make_server, read_notifications
from msml.ops.processes import spawn, stop_process
from tests.helpers import need_binary
from tests.integration.serving_fixtures import free_port, parse_metrics

pytestmark = pytest.mark.system
TOKEN = "test-token-" + uuid.uuid4().hex

# The stand-in retraining: one line per start in argv's count file, hold, then the outcome for the receiver.
COUNTING = """
import json, sys, time
args = dict(zip(sys.argv[3::2], sys.argv[4::2]))
with open(sys.argv[1], "a") as f:
    f.write(args["--reason"] + " " + args["--fingerprint"] + "\\n")
time.sleep(float(sys.argv[2]))
open(args["--result"], "w").write(json.dumps({"outcome": "promoted", "candidate": "7"}))
"""


@pytest.fixture(scope="module")
def alertmanager(tmp_path_factory):
    work = tmp_path_factory.mktemp("am")
    receiver_port = free_port()
    token_file = work / "receiver.token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o600)
    config = work / "alertmanager.yml"
    targets = render.Targets.local(render.Ports(receiver=receiver_port))
    config.write_text(render._yaml(render.alertmanager_config(targets, render.FAST, token_file=str(token_file))))
    port = free_port()
    proc = spawn(
        [
            need_binary("alertmanager", "prometheus-alertmanager"),
            f"--config.file={config}",
            f"--storage.path={work / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
        ],
        work / "am.log",
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{url}/-/ready", timeout=1)
            break
        except OSError:
            time.sleep(0.2)
    yield url, receiver_port
    stop_process(proc)


class Loop:
    """One receiver (in-process, on the port Alertmanager posts to) with its trigger, store and counter file."""

    def __init__(self, work: Path, port: int, hold: float, labels: int, **settings) -> None:
        self.count_file = work / "started.txt"
        self.store = open_store(f"sqlite:///{work / 'loop.db'}")
        now = time.time()
        self.store.log_predictions(
            [Prediction(f"r{i}", now, "m", "1", "h", {"age": 30}, 0.3, 0) for i in range(labels)]
        )
        self.store.record_labels([Label(f"r{i}", "<=50K", now) for i in range(labels)])
        command = (sys.executable, "-c", COUNTING, str(self.count_file), str(hold))
        self.settings = T.TriggerSettings(run_dir=work, command=command, **settings)
        self.metrics = LoopMetrics()
        self.trigger = T.Trigger(self.settings, self.store, self.metrics.count)
        self.server = make_server("127.0.0.1", port, work / "notes.jsonl", self.trigger, TOKEN, self.metrics)
        self.url = f"http://127.0.0.1:{port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def started(self) -> list[str]:
        return self.count_file.read_text().splitlines() if self.count_file.exists() else []

    def outcomes(self) -> list[str]:
        return [d.decision for d in reversed(self.store.decisions(limit=100))]

    def wait_for(self, n: int, timeout: float = 20.0) -> list[str]:
        """The outcomes once `n` decisions are recorded (Alertmanager notifies after group_wait)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(self.outcomes()) < n:
            time.sleep(0.1)
        return self.outcomes()

    def close(self) -> None:
        self.trigger.wait(30)
        self.server.shutdown()
        self.server.server_close()
        self.store.close()


@pytest.fixture
def loop_factory(alertmanager, tmp_path):
    made = []

    def make(hold: float = 0.2, labels: int = 50, **settings) -> Loop:
        settings = {"cooldown_seconds": 0.0, "min_new_labels": 10, **settings}
        made.append(Loop(tmp_path, alertmanager[1], hold, labels, **settings))
        return made[-1]

    yield make
    for loop in made:
        loop.close()


def fire(am_url: str, *alerts: dict) -> None:
    """POST alerts to Alertmanager's API as Prometheus does. Each call's alerts get a job of their own: Alertmanager
    groups by alert name and job, and a group's notification lists every alert of it, earlier tests' too."""
    now, job = dt.datetime.now(dt.UTC).isoformat(), uuid.uuid4().hex
    body = [{"labels": {"job": job, **a}, "startsAt": now} for a in alerts]
    req = urllib.request.Request(
        f"{am_url}/api/v2/alerts", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    urllib.request.urlopen(req, timeout=5)


def post(url: str, body: bytes, token: str | None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(urllib.request.Request(f"{url}/trigger", body, headers), timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_one_alert_starts_one_retraining_and_its_ending_is_recorded(alertmanager, loop_factory):
    loop = loop_factory()
    fire(alertmanager[0], {"alertname": "DataDriftPSI", "feature": "age"})
    assert loop.wait_for(2) == ["started", "promoted"]
    assert len(loop.started()) == 1 and loop.started()[0].startswith("DataDriftPSI ")
    ending = loop.store.decisions(limit=1)[0]
    assert ending.model_version == "7" and ending.fingerprint == loop.started()[0].split()[1]
    samples = parse_metrics(urllib.request.urlopen(f"{loop.url}/metrics", timeout=5).read().decode())
    assert samples[("msml_retrain_decisions_total", (("outcome", "started"), ("reason", "DataDriftPSI")))] == 1


def test_without_the_token_401_and_nothing_starts(loop_factory):
    loop = loop_factory()
    note = {
        "version": "4",
        "alerts": [{"status": "firing", "labels": {"alertname": "DataDriftPSI"}, "fingerprint": "f1", "startsAt": "t"}],
    }
    body = json.dumps(note).encode()
    assert post(loop.url, body, None)[0] == 401
    assert post(loop.url, body, "forged")[0] == 401
    status, answer = post(loop.url, json.dumps({"version": "4", "alerts": [{"labels": {}}]}).encode(), TOKEN)
    assert status == 422 and "alertname" in answer["error"]
    time.sleep(0.5)
    assert loop.started() == [] and loop.outcomes() == []
    assert read_notifications(loop.settings.run_dir / "notes.jsonl") == []  # refused bodies are not recorded


def test_the_same_alert_resent_starts_nothing_more(alertmanager, loop_factory):
    loop = loop_factory()
    fire(alertmanager[0], {"alertname": "LiveAccuracyDrop"})
    assert loop.wait_for(2) == ["started", "promoted"]
    # Alertmanager's own notification, delivered again (a retry after a lost answer looks exactly like this)
    sent = [n["payload"] for n in read_notifications(loop.settings.run_dir / "notes.jsonl")]
    status, answer = post(loop.url, json.dumps(sent[-1]).encode(), TOKEN)
    assert status == 200 and [d["outcome"] for d in answer["decisions"]] == ["duplicate"]
    assert len(loop.started()) == 1


def test_cooldown_is_honoured(alertmanager, loop_factory):
    loop = loop_factory(cooldown_seconds=600)
    fire(alertmanager[0], {"alertname": "DataDriftPSI", "feature": "age"})
    assert loop.wait_for(2) == ["started", "promoted"]
    fire(alertmanager[0], {"alertname": "DataDriftPSI", "feature": "age"})
    assert loop.wait_for(3)[-1] == "skipped-cooldown"
    skipped = loop.store.decisions(limit=1)[0]
    assert 590 < skipped.detail["seconds_left"] <= 600
    assert len(loop.started()) == 1


def test_too_few_labels_is_skipped_with_the_reason(alertmanager, loop_factory):
    loop = loop_factory(labels=3, min_new_labels=10)
    fire(alertmanager[0], {"alertname": "LiveAccuracyDrop"})
    assert loop.wait_for(1) == ["skipped-few-rows"]
    assert loop.store.decisions(limit=1)[0].detail | {"starts_at": None} == {
        "new_labels": 3,
        "needed": 10,
        "starts_at": None,
    }
    assert loop.started() == []


def test_two_alerts_at_once_start_one_retraining(alertmanager, loop_factory):
    loop = loop_factory(hold=3.0)
    fire(
        alertmanager[0], {"alertname": "DataDriftPSI", "feature": "age"}, {"alertname": "LiveAccuracyDrop"}
    )  # two groups (alertname differs): two notifications at the same moment
    outcomes = loop.wait_for(3)
    assert sorted(outcomes[:2]) == ["skipped-busy", "started"] and outcomes[2] == "promoted"
    assert len(loop.started()) == 1


def test_a_data_quality_alert_pages_and_does_not_retrain(alertmanager, loop_factory):
    loop = loop_factory()
    fire(alertmanager[0], {"alertname": "ModelServerDown"})
    assert loop.wait_for(1) == ["paged"]
    time.sleep(0.5)
    assert loop.started() == []
