"""Process control used by `make demo` / `make down`: pid files, process groups, only what we started."""

from __future__ import annotations

import os
import sys
import time

import pytest

from msml.serving.processes import read_pid, start_background, stop


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = open(f"/proc/{pid}/stat").read()
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_start_background_and_stop_the_whole_group(tmp_path):
    pidfile, log = tmp_path / "server.pid", tmp_path / "server.log"
    # a parent that forks a child (like gunicorn's master and worker), both in the new group
    code = ("import subprocess, sys, time; c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);"
            " print(c.pid, flush=True); time.sleep(60)")
    pid = start_background([sys.executable, "-c", code], pidfile, log)
    assert read_pid(pidfile) == pid and os.getpgid(pid) == pid
    deadline = time.monotonic() + 10
    while not log.read_text().strip() and time.monotonic() < deadline:
        time.sleep(0.05)
    child = int(log.read_text().split()[0])
    assert os.getpgid(child) == pid
    with pytest.raises(RuntimeError, match="still running"):
        start_background([sys.executable, "-c", "pass"], pidfile, log)
    assert stop(pidfile, timeout=5) is True
    deadline = time.monotonic() + 5
    while (_alive(pid) or _alive(child)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child)
    assert not pidfile.exists()
    assert stop(pidfile) is False  # nothing left to stop


def test_stale_pidfile_is_ignored(tmp_path):
    pidfile = tmp_path / "gone.pid"
    pidfile.write_text("999999\n")
    assert read_pid(pidfile) is None
    assert stop(pidfile) is False and not pidfile.exists()
