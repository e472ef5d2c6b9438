"""Start and stop background servers by PID and process group — only the ones we started.

`make demo` / `make down` use the pid files in `settings.run_dir`; tests use the `Popen` handles.
Each server runs in its own session (process group = its PID), so stopping it also stops the
workers it forked (gunicorn) and nothing else. A pid file records the process's identity (PID, start
time, command line, read with psutil, so no /proc): after a reboot or PID reuse, `stop` leaves the
process now holding that PID alone. Ports are checked before a server starts, so "ready" (its URL
answers while it runs) never means another program answered on that port.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from msml.errors import PortBusyError, ServerError


def spawn(
    cmd: Sequence[str], log: str | Path, env: Mapping[str, str] | None = None, cwd: str | Path | None = None
) -> subprocess.Popen:
    """Start `cmd` in a new session with stdout and stderr appended to `log`."""
    log = Path(log)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        return subprocess.Popen(
            list(cmd),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
        )


def check_port(port: int, what: str, option: str, host: str = "127.0.0.1") -> None:
    """PortBusyError naming the port, its holder and the option that changes it, unless `port` is free."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a closed socket in TIME_WAIT is no holder
        try:
            sock.bind((host, port))
            return
        except OSError:
            pass
    raise PortBusyError(
        f"port {port} ({what}) is held by {port_holder(port)}; stop it or choose another port with {option}"
    )


def port_holder(port: int) -> str:
    """ "pid N (command line)" of the process listening on `port`, as far as we may see it."""
    try:
        for conn in psutil.net_connections(kind="inet"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
                return f"pid {conn.pid} ({_describe(conn.pid)})"
    except (psutil.AccessDenied, PermissionError):
        pass
    return "another process (not ours; run `sudo ss -ltnp` to see which)"


def _describe(pid: int) -> str:
    try:
        return " ".join(psutil.Process(pid).cmdline())[:120] or psutil.Process(pid).name()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return "unknown"


def start_background(
    cmd: Sequence[str],
    pidfile: str | Path,
    log: str | Path,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
) -> int:
    """Start `cmd` detached, record its identity (PID, start time, command line) in `pidfile`, return the PID.

    Refuses to start when `pidfile` names a process of ours that is still running.
    """
    pidfile = Path(pidfile)
    running = read_pid(pidfile)
    if running is not None:
        raise PortBusyError(f"{pidfile} names process {running}, still running; stop it first (`msml down`)")
    proc = spawn(cmd, log, env=env, cwd=cwd)
    identity = {"pid": proc.pid, "create_time": psutil.Process(proc.pid).create_time(), "cmdline": list(cmd)}
    pidfile.parent.mkdir(parents=True, exist_ok=True)
    tmp = pidfile.with_suffix(".tmp")
    tmp.write_text(json.dumps(identity) + "\n")
    os.replace(tmp, pidfile)  # a reader never sees half a pid file
    return proc.pid


@dataclass(frozen=True)
class PidFile:
    """What a pid file says and what the machine says about it now."""

    path: Path
    pid: int | None
    state: str  # "ours" (alive, same identity) · "gone" (exited) · "foreign" (PID reused) · "absent" · "unreadable"
    detail: str = ""


def inspect(pidfile: str | Path) -> PidFile:
    """Compare the identity recorded in `pidfile` with the live process holding that PID (psutil: no /proc)."""
    path = Path(pidfile)
    try:
        recorded = json.loads(path.read_text())
        pid, created, cmdline = int(recorded["pid"]), float(recorded["create_time"]), list(recorded["cmdline"])
    except FileNotFoundError:
        return PidFile(path, None, "absent")
    except (ValueError, KeyError, TypeError):  # a bare PID (older msml) or garbage: identity unknown
        return PidFile(path, None, "unreadable", "no process identity recorded")
    # Identity is PID + start time: a reused PID cannot have the same start time. The command line is
    # recorded for the report but not compared: exec changes it legitimately (`mlflow models serve`
    # execs gunicorn, which renames itself; a script runs under its interpreter).
    try:
        proc = psutil.Process(pid)
        same = abs(proc.create_time() - created) < 0.05
        if proc.status() == psutil.STATUS_ZOMBIE:
            return PidFile(path, pid, "gone", "exited (zombie)")
    except psutil.NoSuchProcess:
        return PidFile(path, pid, "gone", "exited")
    except psutil.AccessDenied:
        return PidFile(path, pid, "foreign", "another user's process")
    if not same:
        return PidFile(
            path,
            pid,
            "foreign",
            f"PID {pid} is now another process: {_describe(pid)}; it was: {' '.join(cmdline)[:120]}",
        )
    return PidFile(path, pid, "ours")


def read_pid(pidfile: str | Path) -> int | None:
    """The PID in `pidfile` if that very process (same start time and command line) is still running."""
    found = inspect(pidfile)
    return found.pid if found.state == "ours" else None


def _group_alive(pgid: int) -> bool:
    """True while a live (non-zombie) process is in process group `pgid`."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    for proc in psutil.process_iter(["status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, PermissionError):
            continue
    return False


def stop_group(pgid: int, timeout: float = 10.0, proc: subprocess.Popen | None = None) -> None:
    """SIGTERM the process group `pgid`, wait up to `timeout` s, then SIGKILL what is left."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if proc is not None:
                proc.poll()  # reap our own child so it does not linger as a zombie
            else:
                _reap(pgid)
            if not _group_alive(pgid):
                break
            time.sleep(0.05)
        else:
            continue
        break
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):  # not our child: its own parent reaps it
        os.waitpid(pid, os.WNOHANG)


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """Stop a server started with `spawn` (its whole process group)."""
    if proc.poll() is None or _group_alive(proc.pid):
        stop_group(proc.pid, timeout=timeout, proc=proc)


def stop(pidfile: str | Path, timeout: float = 10.0) -> PidFile:
    """Stop the server named in `pidfile` (its process group) if it is still the process we started.

    The pid file is removed in every case but a foreign one is never signalled: the returned `PidFile`
    says what was found ("ours" = stopped now; "gone", "foreign", "unreadable" = left alone, reported). It is
    always truthy: "did this stop a server?" is `stop(pidfile).state == "ours"`.
    """
    found = inspect(pidfile)
    if found.state == "ours":
        try:
            leads_group = os.getpgid(found.pid) == found.pid
        except ProcessLookupError:
            leads_group = False  # exited just now
        if leads_group:
            stop_group(found.pid, timeout=timeout)
    found.path.unlink(missing_ok=True)
    return found


def wait_ready(
    url: str, timeout: float = 60.0, alive: Callable[[], bool] | None = None, log: str | Path | None = None
) -> None:
    """Block until `url` answers 200 while `alive()` (the process we started runs): both make "ready".
    ServerError (a RuntimeError), with the tail of `log`, when the process exits or `timeout` s pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                answered = resp.status == 200
        except (urllib.error.URLError, OSError, ValueError):
            answered = False
        running = alive is None or alive()
        if answered and running:
            return
        if not running:
            raise ServerError(f"the server behind {url} exited before answering{_tail(log)}")
        time.sleep(0.2)
    raise ServerError(f"{url} did not answer 200 within {timeout:.0f} s{_tail(log)}")


def _tail(log: str | Path | None) -> str:
    """The log's last line and where the rest is: enough for a one-line error."""
    if log is None or not Path(log).exists():
        return ""
    lines = [line.strip() for line in Path(log).read_text(errors="replace").splitlines() if line.strip()]
    return f"; its log ends: {lines[-1][:300]!r} (full log: {log})" if lines else f" (empty log: {log})"
