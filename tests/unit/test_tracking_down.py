"""`msml tracking down` reports only what it stopped: `processes.stop` returns a PidFile (always truthy), so a
caller asks its `state`; a missing or stale pid file is not a stopped server. (The servers themselves:
tests/integration/test_scale.py and test_gateway_processes.py.)"""

from __future__ import annotations

import json
import subprocess

from msml.tracking.server import Layout, down


def test_nothing_running_stops_nothing(tmp_path):
    assert down(tmp_path) == []


def test_a_pid_file_whose_process_exited_is_removed_and_not_reported_stopped(tmp_path):
    exited = subprocess.Popen(["true"])
    exited.wait()
    layout = Layout(tmp_path)
    layout.pidfile.write_text(json.dumps({"pid": exited.pid, "create_time": 0.0, "cmdline": ["mlflow", "server"]}))
    assert down(tmp_path) == []
    assert not layout.pidfile.exists()
