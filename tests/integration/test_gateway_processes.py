"""Process control used by `make demo` / `make down`: pid files, process groups, only what we started."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from msml.errors import PortBusyError
from msml.ops.processes import inspect, read_pid, start_background, stop
from tests.conftest import run_msml


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_start_background_and_stop_the_whole_group(tmp_path):
    pidfile, log = tmp_path / "server.pid", tmp_path / "server.log"
    # a parent that forks a child (like gunicorn's master and worker), both in the new group
    code = (
        "import subprocess, sys, time; c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);"
        " print(c.pid, flush=True); time.sleep(60)"
    )
    pid = start_background([sys.executable, "-c", code], pidfile, log)
    assert read_pid(pidfile) == pid and os.getpgid(pid) == pid
    deadline = time.monotonic() + 10
    while not log.read_text().strip() and time.monotonic() < deadline:
        time.sleep(0.05)
    child = int(log.read_text().split()[0])
    assert os.getpgid(child) == pid
    with pytest.raises(PortBusyError, match="still running"):
        start_background([sys.executable, "-c", "pass"], pidfile, log)
    assert stop(pidfile, timeout=5).state == "ours"
    deadline = time.monotonic() + 5
    while (_alive(pid) or _alive(child)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child)
    assert not pidfile.exists()
    assert stop(pidfile).state == "absent"  # nothing left to stop


def _msml_down(root):
    return run_msml("down", env={"MSML_HOME": str(root)})


def _pidfile(path, pid: int, create_time: float, cmdline: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"pid": pid, "create_time": create_time, "cmdline": cmdline}))


def _wait_for_exec(pid: int, cmdline: list[str]) -> None:
    """Popen returns right after fork: until exec completes, the child's command line is its parent's or empty."""
    deadline = time.monotonic() + 5
    while psutil.Process(pid).cmdline() != cmdline:
        assert time.monotonic() < deadline, f"PID {pid} never became {cmdline}"
        time.sleep(0.01)


def test_reused_pid_names_a_foreign_process_that_down_leaves_alone(tmp_path):
    """A pid file whose PID now belongs to another live process (reboot, PID reuse): never signalled."""
    foreign = subprocess.Popen(["sleep", "60"])  # a real live process that is not ours
    _wait_for_exec(foreign.pid, ["sleep", "60"])
    try:
        pidfile = tmp_path / ".run" / "gateway.pid"
        real = psutil.Process(foreign.pid)
        # what a gateway that once had this PID recorded: another start time and command line
        _pidfile(pidfile, foreign.pid, real.create_time() - 3600, ["/venv/bin/msml", "gateway", "--port", "8000"])
        found = inspect(pidfile)
        assert found.state == "foreign" and "sleep 60" in found.detail, found
        assert read_pid(pidfile) is None
        result = _msml_down(tmp_path)
        assert result.returncode == 0, result.stderr
        assert (
            f"gateway: left alone (PID {foreign.pid} is now another process: sleep 60; it was: /venv/bin/msml "
            "gateway --port 8000)"
        ) in result.stdout
        assert foreign.poll() is None and real.status() != psutil.STATUS_ZOMBIE  # still running, untouched
        assert not pidfile.exists()
    finally:
        foreign.kill()
        foreign.wait()


def test_down_cleans_the_pid_file_of_a_killed_demo_server(tmp_path):
    run_dir = tmp_path / ".run"
    pid = start_background(["sleep", "60"], run_dir / "model-server.pid", run_dir / "model-server.log")
    assert inspect(run_dir / "model-server.pid").state == "ours"
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    result = _msml_down(tmp_path)
    assert result.returncode == 0, result.stderr
    assert "stopped: nothing was running" in result.stdout
    assert f"model-server: pid {pid} had already exited; removed" in result.stdout
    assert not (run_dir / "model-server.pid").exists()


def test_a_bare_pid_file_is_not_trusted(tmp_path):
    """Older pid files held only a PID: without an identity nothing is signalled."""
    me = tmp_path / "old.pid"
    me.write_text(f"{os.getpid()}\n")  # this very test process: alive, and certainly not to be stopped
    assert read_pid(me) is None
    assert stop(me).state == "unreadable" and not me.exists()
