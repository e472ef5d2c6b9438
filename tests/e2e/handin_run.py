"""The hand-in run of tests/e2e/test_handin.py, started in the background when the session starts.

`msml export` then `msml handin --profile quick` take about 5 minutes, most of it waiting: 130 s of the phases'
traffic, Prometheus's next scrapes, servers starting. Nothing else in the suite reads what it makes, so it runs
beside the other tests (tests/conftest.py starts it at the session's first test when a test of the hand-in is
selected, and puts those tests last); their module fixture waits for it and asserts on its result exactly as
when it ran in the fixture itself. The commands, their options and their time limits are the same.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

from msml.config import DEFAULT_STUDENT
from tests.conftest import BIN, ROOT

SUB = f"SMSML_{DEFAULT_STUDENT}"
BINARIES = ("prometheus", "Xvfb", "xterm", "tmux", "chromium")
EXPORT_TIMEOUT, HANDIN_TIMEOUT = 300, 1500


def wanted(items) -> bool:
    """Does a selected test read the hand-in run (its module fixture `handin`)?"""
    return any(item.path.name == "test_handin.py" and "handin" in item.fixturenames for item in items)


class HandinRun:
    """export -> handin in a thread (each a subprocess of the real `msml`); `result()` waits for it."""

    def __init__(self, base: Path) -> None:
        self.out, self.workspace = base / "dist", base / "ws"
        self.started = self.ended = 0.0
        self.failure: str | None = None
        self._proc: subprocess.Popen | None = None
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="handin-run", daemon=True)

    def start(self) -> HandinRun:
        self.started = time.monotonic()
        self._thread.start()
        return self

    def _msml(self, timeout: float, *args: str) -> tuple[int | None, str, str]:
        env = {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}"}
        self._proc = subprocess.Popen(
            [str(BIN / "msml"), *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        try:
            out, err = self._proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._interrupt()
            out, err = self._proc.communicate()
            return None, out, err + f"\n[test] did not finish within {timeout} s"
        return self._proc.returncode, out, err

    def _run(self) -> None:
        try:
            code, out, err = self._msml(EXPORT_TIMEOUT, "export", "--out", str(self.out), "--no-evidence")
            if code != 0:
                self.failure = f"msml export exited {code}: {err}"
                return
            if self._stopping:
                self.failure = "stopped before the hand-in run"
                return
            code, out, err = self._msml(
                HANDIN_TIMEOUT,
                "handin",
                "--out",
                str(self.out),
                "--workspace",
                str(self.workspace),
                "--profile",
                "quick",
                "--free-ports",
            )
            if code != 0:
                self.failure = f"msml handin exited {code}: {out[-3000:]}{err[-3000:]}"
        except BaseException as exc:  # reported by result(), in the test's thread
            self.failure = f"the hand-in run raised {exc!r}"
        finally:
            self.ended = time.monotonic()

    def wait(self) -> None:
        """Until the run has ended (every command of it is bounded)."""
        self._thread.join(EXPORT_TIMEOUT + HANDIN_TIMEOUT + 120)

    def result(self) -> tuple[Path, Path, dict]:
        """(export folder, workspace, evidence.json) once the run ended; AssertionError with its output if it failed."""
        self.wait()
        assert not self._thread.is_alive(), "the hand-in run did not end"
        assert self.failure is None, self.failure
        return self.out, self.workspace, json.loads((self.out / SUB / "evidence.json").read_text())

    def _interrupt(self) -> None:
        """SIGTERM msml (its servers are stopped by its own cleanup: SIGTERM is an interrupt there), then SIGKILL."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()

    def stop(self) -> None:
        """At the session's end: a run still going (the session was cut short) is interrupted."""
        self._stopping = True
        self._interrupt()
        self._thread.join(120)


def can_run() -> bool:
    """The binaries the run needs are there (else the tests' fixture fails or skips with need_binary, as before)."""
    return all(shutil.which(b) for b in BINARIES)
