"""The hand-in's scratch workspace: the exported folders under a neutral home, run as the student runs them.

`Workspace(home)` copies `Eksperimen_SML_<student>/` and `SMSML_<student>/` from an `msml export --out DIR` into
`home` (HOME of every process started here), gives each folder a fresh virtualenv made from *its own*
requirements.txt only, and runs the course's files with a clean environment: no MLFLOW_* or MSML_* variable of
ours, no msml on the path, the folder's venv first on PATH.

The venvs are made with uv when msml's environment has it (the dev lock ships it: `uv venv --seed .venv && uv pip
install -r requirements.txt`, seconds from uv's cache), else, or when uv fails (an index only pip's configuration
knows), as the hand-in's README tells the student (`python3 -m venv .venv && python -m pip install -r
requirements.txt`, minutes: the three installs took 2 min of a 5 min quick run here). Both install the same exact
pins; the step records which one ran.

Every command is recorded as the student types it (`Step`): the folder as `~/SMSML_<student>/...`, the venv's
interpreter as `python`; the evidence manifest quotes these, never a path of the machine.
"""

from __future__ import annotations

import functools
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from msml.errors import ExportError, ServerError
from msml.handin.names import MEMBANGUN, MONITORING, REQUIREMENTS, eksperimen_name, submission_name
from msml.ops.processes import spawn, stop_process, wait_ready

VENV = ".venv"
VENV_PYTHON = f"{VENV}/bin/python"
# Variables of ours that would change what the course files do (a tracking server, msml's settings, another venv).
DROPPED_PREFIXES = ("MLFLOW_", "MSML_", "VIRTUAL_ENV", "PYTHON", "CONDA", "PIP_REQUIRE")
# One OpenMP thread: on this 2-core machine, shared, HistGradientBoosting's spinning threads made a 2-trial tuning
# run take > 10 min wall; single-threaded it took 2 min (measured for tests/e2e/test_export.py).
THREADS = {"OMP_NUM_THREADS": "1"}


@dataclass
class Step:
    """One command as the student runs it: where, what, how long, and where its output went."""

    what: str
    cwd: str  # `~/...`
    command: str  # as typed (venv interpreter shown as `python`)
    started: float
    seconds: float = 0.0
    log: str = ""  # relative to the workspace's log directory

    def as_dict(self) -> dict:
        return asdict(self)


def find_uv() -> str | None:
    """uv beside msml's interpreter (the dev lock's), else on PATH; None: the venvs are made with pip."""
    beside = Path(sys.executable).parent / "uv"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("uv")


@functools.cache
def uv_cache_dir(uv: str) -> str:
    """uv's cache as msml's own environment has it (UV_CACHE_DIR, XDG_CACHE_HOME or ~/.cache/uv)."""
    done = subprocess.run([uv, "cache", "dir"], capture_output=True, text=True, timeout=60)
    if done.returncode != 0 or not done.stdout.strip():
        raise ExportError(f"`uv cache dir` exited {done.returncode}: {done.stderr.strip()[-300:]}")
    return done.stdout.strip()


class Workspace:
    """The student's home with the hand-in's folders; `logs` (outside it) keeps every command's output."""

    def __init__(
        self,
        home: Path,
        student: str,
        logs: Path,
        extra_env: dict[str, str] | None = None,
        uv: str | None = "auto",
    ) -> None:
        """`uv`: the uv binary that makes the venvs, "auto" (`find_uv`), or None (venv + pip, as the student)."""
        self.home, self.student, self.logs = Path(home), student, Path(logs)
        self.uv = find_uv() if uv == "auto" else uv
        self.eksperimen = self.home / eksperimen_name(student)
        self.submission = self.home / submission_name(student)
        self.model_dir = self.submission / MEMBANGUN
        self.monitoring_dir = self.submission / MONITORING
        self.steps: list[Step] = []
        self.extra_env = {**THREADS, **(extra_env or {})}
        self._procs: list[subprocess.Popen] = []

    # --- setting up -----------------------------------------------------------------------------------------

    def copy_from(self, out: Path) -> None:
        """The exported folders (not their git history, not evidence images of an earlier run) into the home."""
        for name in (self.eksperimen.name, self.submission.name):
            source = Path(out) / name
            if not source.is_dir():
                raise ExportError(f"no {source}: run `msml export --out {out}` first")
            if (self.home / name).exists():
                shutil.rmtree(self.home / name)
            shutil.copytree(source, self.home / name, ignore=shutil.ignore_patterns(".git", "*.jpg", "evidence.json"))
        self.logs.mkdir(parents=True, exist_ok=True)

    def shown(self, path: Path | str) -> str:
        """`path` as the student sees it: under `~`, never the machine's path."""
        path = Path(path)
        try:
            return "~/" + path.relative_to(self.home).as_posix()
        except ValueError:
            return path.as_posix()

    def env(self, folder: Path | None = None) -> dict[str, str]:
        """A clean environment: HOME is the workspace, `folder`'s venv (if any) first on PATH."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(DROPPED_PREFIXES)}
        env.update(self.extra_env)
        env["HOME"] = str(self.home)
        path = [p for p in env.get("PATH", "").split(os.pathsep) if p and Path(sys.executable).parent != Path(p)]
        if folder is not None and (folder / VENV).is_dir():
            env["VIRTUAL_ENV"] = str(folder / VENV)
            path.insert(0, str(folder / VENV / "bin"))
        env["PATH"] = os.pathsep.join(path)
        return env

    def python(self, folder: Path) -> Path:
        return folder / VENV / "bin" / "python"

    def make_venv(self, folder: Path) -> Path:
        """A fresh venv in `folder` with exactly its requirements.txt installed; returns its interpreter.
        With uv (module docstring) when there is one; pip when there is none or uv fails."""
        if not (folder / REQUIREMENTS).is_file():
            raise ExportError(f"{self.shown(folder)} has no {REQUIREMENTS}: each folder must carry its own")
        if self.uv:
            try:
                return self._make_venv_uv(folder)
            except ExportError:  # its step and log stay recorded; the student's way next
                pass
        shutil.rmtree(folder / VENV, ignore_errors=True)
        self.run(folder, [sys.executable, "-m", "venv", VENV], "virtualenv", shown_argv=["python3", "-m", "venv", VENV])
        python = self.python(folder)
        self.run(
            folder,
            [str(python), "-m", "pip", "install", "-q", "-r", REQUIREMENTS],
            f"install {self.shown(folder / REQUIREMENTS)}",
            timeout=1800,
        )
        return python

    def _make_venv_uv(self, folder: Path) -> Path:
        """`uv venv --seed` (pip in it, like `python -m venv`) from msml's interpreter, then `uv pip install -r`. uv's
        cache is the machine's (HOME here is the scratch home, where a cache would start empty every run)."""
        shutil.rmtree(folder / VENV, ignore_errors=True)
        env = {"UV_CACHE_DIR": uv_cache_dir(self.uv), "UV_PYTHON_DOWNLOADS": "never"}
        self.run(
            folder,
            [self.uv, "venv", "--quiet", "--seed", "--python", sys.executable, VENV],
            "virtualenv",
            shown_argv=["uv", "venv", "--quiet", "--seed", "--python", "python3", VENV],
            env=env,
        )
        self.run(
            folder,
            [self.uv, "pip", "install", "--quiet", "--python", VENV_PYTHON, "-r", REQUIREMENTS],
            f"install {self.shown(folder / REQUIREMENTS)}",
            timeout=1800,
            shown_argv=["uv", "pip", "install", "--quiet", "--python", VENV_PYTHON, "-r", REQUIREMENTS],
            env=env,
        )
        return self.python(folder)

    # --- running ----------------------------------------------------------------------------------------------

    def _shown_argv(self, argv: list[str], folder: Path) -> str:
        shown = []
        for arg in argv:
            if arg == str(self.python(folder)):
                shown.append("python")
            elif arg.startswith(str(folder / VENV / "bin") + "/"):
                shown.append(Path(arg).name)
            else:
                shown.append(arg.replace(str(self.home), "~"))
        return shlex.join(shown)

    def _step(self, folder: Path, argv: list[str], what: str, shown_argv: list[str] | None) -> Step:
        n = len(self.steps) + 1
        step = Step(
            what=what,
            cwd=self.shown(folder),
            command=shlex.join(shown_argv) if shown_argv else self._shown_argv(argv, folder),
            started=time.time(),
            log=f"{n:02d}-{'-'.join(what.split()[:3]).replace('/', '_').replace('~', '')}.log",
        )
        self.steps.append(step)
        return step

    def run(
        self,
        folder: Path,
        argv: list[str],
        what: str,
        timeout: float = 1800,
        shown_argv: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> Step:
        """Run `argv` in `folder` to its end; ExportError with the log's tail when it fails."""
        step = self._step(folder, argv, what, shown_argv)
        log = self.logs / step.log
        started = time.perf_counter()
        with log.open("wb") as out:
            try:
                code = subprocess.run(
                    argv,
                    cwd=folder,
                    env={**self.env(folder), **(env or {})},
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    timeout=timeout,
                ).returncode
            except subprocess.TimeoutExpired:
                code = None
        step.seconds = time.perf_counter() - started
        if code != 0:
            lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
            why = f"did not finish in {timeout:.0f} s" if code is None else f"exited {code}"
            raise ExportError(
                f"{what}: `{step.command}` in {step.cwd} {why}; its output ends: {' | '.join(lines[-3:])[-500:]} "
                f"(full log: {log})"
            )
        return step

    def start(
        self,
        folder: Path,
        argv: list[str],
        what: str,
        ready_url: str,
        timeout: float = 120,
        env: dict[str, str] | None = None,
    ) -> tuple[subprocess.Popen, Step]:
        """Start a server in `folder` (its own process group, stopped by `close`) and wait for `ready_url`."""
        step = self._step(folder, argv, what, None)
        log = self.logs / step.log
        proc = spawn(argv, log, env={**self.env(folder), **(env or {})}, cwd=folder)
        self._procs.append(proc)
        try:
            wait_ready(ready_url, timeout=timeout, alive=lambda: proc.poll() is None, log=log)
        except ServerError as exc:
            raise ServerError(f"{what} (`{step.command}` in {step.cwd}): {exc}") from None
        step.seconds = time.time() - step.started
        return proc, step

    def stop(self, proc: subprocess.Popen) -> None:
        stop_process(proc)
        if proc in self._procs:
            self._procs.remove(proc)

    def close(self) -> None:
        """Stop every server started here (each by its process group), newest first."""
        for proc in reversed(self._procs):
            stop_process(proc)
        self._procs.clear()
