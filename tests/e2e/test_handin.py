"""`msml handin --profile quick`: the exported hand-in run as the student runs it, in fresh venvs made from each
folder's own requirements.txt, and every image it adds made by its own files' processes (evidence.json says which).

One run per session, started in the background when the session starts (tests/e2e/handin_run.py: most of its ~5
minutes is waiting for traffic phases and scrapes); the tests, run last, read what it left: the export with its
images and manifest, the workspace (the runs' store, the exporter's last /metrics).
"""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import pytest

from msml.config import DEFAULT_STUDENT
from msml.handin.names import MEMBANGUN, MONITORING, PROMETHEUS_DIR, SERVING_IMAGE
from msml.handin.workspace import Workspace, find_uv
from tests.conftest import ROOT
from tests.e2e.handin_run import BINARIES
from tests.helpers import need_binary

# The whole hand-in run took 15.6 min here with the machine shared by a team (load 10-15; 7 of them the three venv
# installs): the suite's 600 s per test does not fit it; the run stops by itself (every phase is bounded).
pytestmark = [pytest.mark.slow, pytest.mark.system, pytest.mark.timeout(1800)]

SUB = f"SMSML_{DEFAULT_STUDENT}"
STAGES = [["normal"], ["drifted"], ["invalid"], ["drifted", "wrong-feedback"]]
PIP_INSTALL = "python -m pip install -q -r requirements.txt"  # the student's way (the hand-in's README)
UV_INSTALL = "uv pip install --quiet --python .venv/bin/python -r requirements.txt"


@pytest.fixture(scope="module")
def handin(handin_run):
    """The run tests/conftest.py started in the background with the session (tests/e2e/handin_run.py)."""
    for binary in BINARIES:
        need_binary(binary)
    return handin_run.result()


def test_every_image_is_in_the_manifest_and_numbered_as_the_course_does(handin):
    out, _, manifest = handin
    listed = {image["file"] for image in manifest["images"]}
    on_disk = {p.relative_to(out / SUB).as_posix() for p in (out / SUB).rglob("*.jpg")}
    assert on_disk == listed  # nothing in the hand-in that this run did not make
    for image in manifest["images"]:  # each says what made it: a page of a process, or the commands typed
        assert image.get("url", "").startswith("http://127.0.0.1:") or image.get("commands"), image["file"]
        assert image.get("process") or image.get("commands"), image["file"]
        assert image["time_range"][0] < image["time_range"][1], image["file"]
    assert {f"{MEMBANGUN}/screenshoot_dashboard.jpg", f"{MEMBANGUN}/screenshoot_artifak.jpg"} <= listed
    assert f"{MONITORING}/{SERVING_IMAGE}" in listed
    graphs = sorted(p.name for p in (out / SUB / MONITORING / PROMETHEUS_DIR).glob("*.jpg"))
    numbers = sorted(int(name.split(".", 1)[0]) for name in graphs)
    assert numbers == list(range(1, len(graphs) + 1)) and len(graphs) >= 5
    assert any(".rules_prometheus" in g for g in graphs) and any(".alerts_prometheus" in g for g in graphs)


def test_every_metric_named_is_exported_by_the_exporter(handin):
    from prometheus_client.parser import text_string_to_metric_families

    _, workspace, manifest = handin
    scraped = (workspace / "exporter-metrics.txt").read_text()  # the exporter's own /metrics at the end of the run
    exported = {s.name for family in text_string_to_metric_families(scraped) for s in family.samples}
    named = {m for image in manifest["images"] for m in image["metrics"]}
    assert named, "no Prometheus graph names a metric"
    assert named <= exported, named - exported
    for metric in ("msml_feature_drift_psi", "msml_live_accuracy_ratio"):  # the phases' alerts read these
        assert metric in named


def test_prometheus_scraped_the_exporter_and_every_series_came_from_it(handin):
    _, _, manifest = handin
    exporter = manifest["exporter"]["url"]
    targets = manifest["prometheus"]["scrape_targets"]
    assert [t["url"] for t in targets if t["url"] == exporter and t["health"] == "up"], targets
    instance = re.match(r"http://([^/]+)/", exporter).group(1)
    for image in manifest["images"]:
        if image["metrics"]:
            assert {s["instance"] for s in image["scraped_from"]} == {instance}, image["file"]


def test_graphs_span_the_traffic_phases_and_the_alerts_crossed_their_thresholds(handin):
    _, _, manifest = handin
    phases = manifest["traffic"]
    stages = [[p["phase"] for p in phases if p["stage"] == n] for n in sorted({p["stage"] for p in phases})]
    assert stages == STAGES
    assert all(p["end"] > p["start"] and p["command"].startswith("python 7.inference.py") for p in phases)
    graphs = [i for i in manifest["images"] if i.get("queries")]
    assert graphs
    for image in graphs:
        start, end = image["time_range"]
        assert start <= min(p["start"] for p in phases) and end >= max(p["end"] for p in phases), image["file"]
    states = next(i["alert_states"] for i in manifest["images"] if "rules_prometheus" in i["file"])
    assert states["DataDriftPSI"] in ("pending", "firing") and states["LiveAccuracyDrop"] in ("pending", "firing")


def test_no_machine_path_in_the_recorded_commands_or_the_terminal(handin):
    out, workspace, manifest = handin
    text = json.dumps(manifest)
    for path in {str(workspace), str(ROOT), str(out), "/tmp/", "/root", "/work/"}:
        assert path not in text, path
    serving = next(i for i in manifest["images"] if i["file"].endswith(SERVING_IMAGE))
    assert "Listening at" in serving["screen_text"] and '{"predictions"' in serving["screen_text"]
    assert "~/SMSML_" in serving["screen_text"]  # the prompt shows the neutral home
    artifacts = next(i for i in manifest["images"] if i["file"].endswith("screenshoot_artifak.jpg"))
    assert artifacts["hidden"].startswith("1 line")  # MLflow prints the artifact location: hidden, and recorded


def test_the_runs_shown_are_the_ones_the_files_make_and_none_failed(handin):
    out, workspace, manifest = handin
    model = workspace / "home" / SUB / MEMBANGUN
    names = set()
    for script in ("modelling.py", "modelling_tuning.py"):
        names |= set(re.findall(r'run_name="([^"{]+)"', (out / SUB / MEMBANGUN / script).read_text()))
    dashboard = next(i for i in manifest["images"] if i["file"].endswith("screenshoot_dashboard.jpg"))
    assert names and names <= set(dashboard["shows"])
    with sqlite3.connect(model / "mlflow.db") as db:
        statuses = {row[0] for row in db.execute("select status from runs")}
    assert statuses == {"FINISHED"}
    steps = [s["command"] for s in manifest["steps"]]
    # each folder installed exactly its own requirements.txt, by the installer this machine has (uv in the dev lock)
    installs = [s for s in steps if " install " in s]
    assert installs == [UV_INSTALL if find_uv() else PIP_INSTALL] * 3, installs
    assert "python modelling.py" in steps and any(s.startswith("python modelling_tuning.py") for s in steps)


def test_each_folder_ran_in_its_own_venv_from_its_own_requirements(handin):
    _, workspace, manifest = handin
    installs = [s for s in manifest["steps"] if s["what"].startswith("install")]
    assert sorted(s["cwd"] for s in installs) == sorted(
        [f"~/Eksperimen_SML_{DEFAULT_STUDENT}", f"~/{SUB}/{MEMBANGUN}", f"~/{SUB}/{MONITORING}"]
    )
    for folder in (f"Eksperimen_SML_{DEFAULT_STUDENT}", f"{SUB}/{MEMBANGUN}", f"{SUB}/{MONITORING}"):
        venv = Path(workspace / "home" / folder / ".venv")
        assert (venv / "bin" / "python").exists()
        assert not list(venv.glob("lib/python*/site-packages/msml*")), folder  # no msml in the student's venvs


def test_the_grafana_rules_queries_see_the_handins_data(handin):
    """No Grafana here: the rules `msml evidence grafana` fires are proven by their PromQL, evaluated against the
    hand-in's own Prometheus at the end of the run, each returning the exporter's series."""
    _, _, manifest = handin
    assert manifest["grafana_rule_series"] and all(n >= 1 for n in manifest["grafana_rule_series"].values())


def test_without_uv_each_venv_is_made_the_students_way_with_pip(tmp_path):
    """A uv that fails (here one that exits 1 at once) or none: `python3 -m venv` and pip, as the README says."""
    folder, logs = tmp_path / "home" / "folder", tmp_path / "logs"
    folder.mkdir(parents=True)
    logs.mkdir()
    (folder / "requirements.txt").write_text("# already in every fresh venv: installs offline\npip\n")
    ws = Workspace(tmp_path / "home", DEFAULT_STUDENT, logs, uv="/bin/false")
    python = ws.make_venv(folder)
    assert [(s.what, s.command) for s in ws.steps] == [
        ("virtualenv", "python3 -m venv .venv"),
        ("install ~/folder/requirements.txt", PIP_INSTALL),
    ]
    assert python == folder / ".venv" / "bin" / "python" and python.exists()
    assert (folder / ".venv" / "bin" / "pip").exists()
