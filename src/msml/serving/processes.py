"""Start and stop background servers by PID and process group — only the ones we started.

`make demo` / `make down` use the pid files in `settings.run_dir`; tests use the `Popen` handles.
Each server runs in its own session (process group = its PID), so stopping it also stops the
workers it forked (gunicorn) and nothing else.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Mapping, Sequence


def spawn(cmd: Sequence[str], log: str | Path, env: Mapping[str, str] | None = None,
          cwd: str | Path | None = None) -> subprocess.Popen:
    """Start `cmd` in a new session with stdout and stderr appended to `log`."""
    log = Path(log)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        return subprocess.Popen(
            list(cmd), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=dict(env) if env is not None else None, cwd=cwd, start_new_session=True,
        )


def start_background(cmd: Sequence[str], pidfile: str | Path, log: str | Path,
                     env: Mapping[str, str] | None = None, cwd: str | Path | None = None) -> int:
    """Start `cmd` detached, write its PID to `pidfile`, return the PID.

    Refuses to start when `pidfile` names a process that is still running.
    """
    pidfile = Path(pidfile)
    running = read_pid(pidfile)
    if running is not None:
        raise RuntimeError(f"{pidfile} names process {running}, still running; stop it first")
    proc = spawn(cmd, log, env=env, cwd=cwd)
    pidfile.parent.mkdir(parents=True, exist_ok=True)
    pidfile.write_text(f"{proc.pid}\n")
    return proc.pid


def read_pid(pidfile: str | Path) -> int | None:
    """The PID in `pidfile` if that process is alive and still leads its own process group."""
    try:
        pid = int(Path(pidfile).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    return pid if _leads_group(pid) else None


def _leads_group(pid: int) -> bool:
    try:
        return os.getpgid(pid) == pid and not _is_zombie(pid)
    except ProcessLookupError:
        return False


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a group whose only members are zombies is as good as gone
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getpgid(int(entry.name)) == pgid and not _is_zombie(int(entry.name)):
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
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass  # not our child: its own parent reaps it


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """Stop a server started with `spawn` (its whole process group)."""
    if proc.poll() is None or _group_alive(proc.pid):
        stop_group(proc.pid, timeout=timeout, proc=proc)


def stop(pidfile: str | Path, timeout: float = 10.0) -> bool:
    """Stop the server named in `pidfile` (and its process group); remove the file.

    Returns True when a running process was stopped, False when there was nothing to stop.
    """
    pidfile = Path(pidfile)
    pid = read_pid(pidfile)
    if pid is not None:
        stop_group(pid, timeout=timeout)
    pidfile.unlink(missing_ok=True)
    return pid is not None


def wait_ready(url: str, timeout: float = 60.0, alive: Callable[[], bool] | None = None,
               log: str | Path | None = None) -> None:
    """Block until `url` answers 200. RuntimeError, with the tail of `log`, when `alive()` turns
    false (the server exited) or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError, ValueError):
            pass
        if alive is not None and not alive():
            raise RuntimeError(f"the server behind {url} exited before answering{_tail(log)}")
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer 200 within {timeout:.0f} s{_tail(log)}")


def _tail(log: str | Path | None, lines: int = 30) -> str:
    if log is None or not Path(log).exists():
        return ""
    text = Path(log).read_text(errors="replace").splitlines()[-lines:]
    return f"\n--- last lines of {log} ---\n" + "\n".join(text)
