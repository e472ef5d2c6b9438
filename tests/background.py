"""Expensive setups that only run commands to their end, run beside the tests: the suite's second lane.

The suite runs its tests one at a time, on a 2-core machine; a few module fixtures spend a minute or more running
the real CLI (`msml train` + `msml tune`, a fresh venv's pip install, `mlflow run`) and then only hand over what it
left (a store, run-info files, a venv). Such a fixture registers its work here (`@background.job(...)`); when a
selected test uses the fixture, tests/conftest.py starts the registered work at the session's first test, one job
after the other in a thread, and the fixture takes the result (`background.result`), waiting if it is not ready.
The work is the same code with the same commands and assertions, and fails the same tests, with the same message,
as when it ran in the fixture; a fixture whose job was not started (the module run alone, under `-k`) runs it
itself. Jobs only wait on subprocesses (no Python work of note in the thread, which shares the GIL with the tests).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Job:
    """`make(scratch dir, **fixtures)` -> the fixture's value; `needs`: session fixtures it takes (resolved in the
    tests' thread before the lane starts); `cleanup(value)`: stops what the value holds (a server), at the
    session's end when the fixture did not take it."""

    name: str
    make: Callable[..., Any]
    needs: tuple[str, ...] = ()
    cleanup: Callable[[Any], None] | None = None
    done: threading.Event = field(default_factory=threading.Event)
    value: Any = None
    error: BaseException | None = None
    seconds: float = 0.0
    taken: bool = False
    started: bool = False


JOBS: dict[str, Job] = {}  # by the name of the fixture that takes the result, in registration order
_LOCK = threading.Lock()
TIMEOUT = 1800  # a job's own commands are bounded; this only stops a wait on a lane that died


def job(name: str, needs: tuple[str, ...] = (), cleanup: Callable[[Any], None] | None = None):
    """Register `make` as the work of the fixture `name` (module-level, in the test module that defines it)."""

    def register(make):
        JOBS[name] = Job(name, make, needs, cleanup)
        return make

    return register


def wanted(items) -> list[Job]:
    """The registered jobs a selected test's fixtures take, in registration order."""
    used = {name for item in items for name in item.fixturenames}
    return [j for j in JOBS.values() if j.name in used]


class Lane:
    """The jobs one after another in a daemon thread; each gets its own scratch dir (made before the thread starts)."""

    def __init__(self, jobs: list[Job], dirs: dict[str, Path], fixtures: dict[str, Any]) -> None:
        self.jobs, self.dirs, self.fixtures = jobs, dirs, fixtures
        self.thread = threading.Thread(target=self._run, name="background-lane", daemon=True)

    def start(self) -> Lane:
        with _LOCK:
            for j in self.jobs:
                j.started = True
        self.thread.start()
        return self

    def _run(self) -> None:
        for j in self.jobs:
            began = time.monotonic()
            try:
                j.value = j.make(self.dirs[j.name], **{n: self.fixtures[n] for n in j.needs})
            except BaseException as exc:  # re-raised in the fixture that takes it
                j.error = exc
            finally:
                j.seconds = time.monotonic() - began
                j.done.set()

    def wait(self) -> None:
        """Until every job has ended (each is bounded by its own commands' time limits)."""
        self.thread.join(TIMEOUT * len(self.jobs))

    def stop(self) -> None:
        """At the session's end: what a job started and no fixture took is stopped."""
        for j in self.jobs:
            if j.done.is_set() and not j.taken and j.cleanup is not None and j.value is not None:
                j.cleanup(j.value)


def result(name: str, scratch: Callable[[], Path] | None, **fixtures: Any) -> Any:
    """The value of the job of fixture `name`: from the lane (waiting for it), else made here and now, once (a job
    that reads another job's result gets the value made for that one's fixture)."""
    j = JOBS[name]
    with _LOCK:
        inline, j.started = not j.started, True
    if inline:
        try:
            j.value = j.make(scratch(), **fixtures)
        except BaseException as exc:
            j.error = exc
        finally:
            j.done.set()
    if not j.done.wait(TIMEOUT):
        raise TimeoutError(f"the background job {name} did not end within {TIMEOUT} s")
    j.taken = True
    if j.error is not None:
        raise j.error
    return j.value
