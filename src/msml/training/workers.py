"""Tuning workers: several processes (or machines) on one Optuna study, one MLflow parent run.

The process that creates the study (`msml tune --storage postgresql://… --study NAME`) opens the
MLflow parent run and records in the study what every worker needs (`StudySpec`). A worker — one
that `--workers N` spawns, or one started by hand elsewhere with the same `--storage`/`--study` —
claims trials until the study's budget is spent and logs each trial as a nested run of that
parent, tagged with its PID and host. Claiming ("count the trials, create the next one") holds a
PostgreSQL advisory lock, so however many workers run, the study gets exactly `n_trials` trials,
numbered 0..n_trials-1 by the database, none twice. The creator refits the best trial once.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import mlflow
import optuna
from optuna.trial import TrialState

from msml.errors import PipelineError

WORKER_PID_TAG = "msml.worker_pid"
WORKER_HOST_TAG = "msml.worker_host"
TRIAL_NUMBER_TAG = "optuna.trial_number"
TRIAL_RUN_ATTR = "mlflow_run_id"  # trial user attribute: the nested run that logged the trial


class TuningError(PipelineError):
    """The study cannot be created, joined or finished; the message says why."""


@dataclass(frozen=True)
class StudySpec:
    """What every worker of a study shares, stored as the study's user attributes."""

    parent_run_id: str
    experiment_id: str
    n_trials: int
    cv_folds: int
    seed: int
    train_sha256: str  # workers on other machines must tune on the same training file

    def save(self, study: optuna.Study) -> None:
        for key, value in asdict(self).items():
            study.set_user_attr(f"msml.{key}", value)

    @classmethod
    def load(cls, study: optuna.Study) -> StudySpec:
        attrs = study.user_attrs
        try:
            return cls(**{f.name: attrs[f"msml.{f.name}"] for f in fields(cls)})
        except KeyError:
            raise TuningError(
                f"study {study.study_name!r} was not created by `msml tune` (no msml.* attributes); "
                "choose another --study name"
            ) from None


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def is_distributed(storage_url: str | None) -> bool:
    return bool(storage_url) and storage_url.startswith("postgresql")


def open_storage(storage_url: str | None) -> optuna.storages.BaseStorage | None:
    """Optuna's RDB storage for `storage_url` (None: in memory), with a clear error when unreachable."""
    if not storage_url:
        return None
    try:
        return optuna.storages.RDBStorage(storage_url)
    except Exception as exc:  # SQLAlchemy/driver errors differ by backend; all mean the same to the user
        message = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise TuningError(f"Optuna storage {_redact(storage_url)} cannot be used: {message}") from None


def _redact(url: str) -> str:
    """The URL without a password, for messages."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<the --storage URL>"


JOIN_WAIT_SECONDS = 600.0  # `--join`: how long a worker waits for the study's creator
SPEC_WAIT_SECONDS = 60.0  # a creator saves the spec seconds after creating the study


def find_study(storage: optuna.storages.BaseStorage | None, name: str, wait: float = 0.0) -> optuna.Study | None:
    """The study `name` once its creator has saved the spec; None when it does not exist (after `wait` s).

    A study that exists without its spec yet is waited for: its creator is between the two steps.
    """
    if storage is None:
        return None
    deadline = time.monotonic() + max(wait, 0.0)
    spec_deadline = time.monotonic() + max(wait, SPEC_WAIT_SECONDS)
    while True:
        try:
            study = optuna.load_study(study_name=name, storage=storage)
        except KeyError:
            if time.monotonic() >= deadline:
                return None
        else:
            if (
                all(f"msml.{f.name}" in study.user_attrs for f in fields(StudySpec))
                or time.monotonic() >= spec_deadline
            ):
                return study  # StudySpec.load names what is missing
        time.sleep(1.0)


@contextlib.contextmanager
def budget_lock(storage_url: str | None, study_name: str) -> Iterator[None]:
    """Serialise trial claims across every worker of the study (a PostgreSQL advisory lock).

    One process on in-memory or SQLite storage needs no lock: it is the only claimant.
    """
    if not is_distributed(storage_url):
        yield
        return
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    key = int.from_bytes(hashlib.sha256(f"msml-tune:{study_name}".encode()).digest()[:8], "big", signed=True)
    engine = create_engine(storage_url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
    finally:
        engine.dispose()


def claim_trial(study: optuna.Study, n_trials: int, lock) -> optuna.Trial | None:
    """The study's next trial, or None when all `n_trials` exist (finished or running elsewhere)."""
    with lock():
        if len(study.get_trials(deepcopy=False)) >= n_trials:
            return None
        return study.ask()


def run_trial(trial: optuna.Trial, spec: StudySpec, objective: Callable[[optuna.Trial], float]) -> float:
    """One trial as a nested run of the study's parent run, whichever process runs it."""
    pid = os.getpid()
    tags = {WORKER_PID_TAG: str(pid), WORKER_HOST_TAG: socket.gethostname(), TRIAL_NUMBER_TAG: str(trial.number)}
    with mlflow.start_run(
        run_name=f"trial-{trial.number:03d}",
        experiment_id=spec.experiment_id,
        parent_run_id=spec.parent_run_id,
        nested=True,
        tags=tags,
    ) as run:
        trial.set_user_attr(TRIAL_RUN_ATTR, run.info.run_id)
        trial.set_user_attr("worker_pid", pid)
        try:
            return objective(trial)
        except optuna.TrialPruned:
            # stopped early on purpose (tagged optuna.state=pruned by the objective), not failed: leaving the
            # `with` by an exception would end the run FAILED, a red cross in the MLflow UI for a working trial
            mlflow.end_run("FINISHED")
            raise


def work(
    study: optuna.Study,
    spec: StudySpec,
    objective: Callable[[optuna.Trial], float],
    storage_url: str | None,
    progress=print,
    deadline: float | None = None,
) -> int:
    """Claim and run trials until the budget is spent (or `deadline`, a perf_counter time, has passed); returns
    how many this process ran.

    A pruned trial is told PRUNED; a trial whose objective raises is told FAILED (not left RUNNING) and the error
    propagates.
    """
    lock = lambda: budget_lock(storage_url, study.study_name)  # noqa: E731
    done = 0
    while (deadline is None or time.perf_counter() < deadline) and (
        trial := claim_trial(study, spec.n_trials, lock)
    ) is not None:
        started = time.perf_counter()
        where = f"trial {trial.number + 1}/{spec.n_trials}"
        try:
            value = run_trial(trial, spec, objective)
        except optuna.TrialPruned as pruned:
            study.tell(trial, state=TrialState.PRUNED)
            progress(f"  {where}: {pruned} {time.perf_counter() - started:.1f}s [pid {os.getpid()}]")
            continue
        except BaseException:
            study.tell(trial, state=TrialState.FAIL)
            raise
        study.tell(trial, value)
        done += 1
        progress(
            f"  {where}: {trial.params.get('family', '')} cv roc_auc {value:.4f} "
            f"(best {study.best_value:.4f}) {time.perf_counter() - started:.1f}s [pid {os.getpid()}]"
        )
    return done


def worker_command(storage_url: str, study_name: str, processed_dir: Path, contract_path: Path) -> list[str]:
    """The command of one worker: `msml tune` joining the study, as on any other machine."""
    return [
        str(Path(sys.executable).parent / "msml"),
        "tune",
        "--storage",
        storage_url,
        "--study",
        study_name,
        "--workers",
        "1",
        "--join",
        "--data",
        str(processed_dir),
        "--contract",
        str(contract_path),
    ]


def run_workers(n: int, command: list[str], tracking_uri: str, progress=print) -> None:
    """Start `n` worker processes of `command`, wait for all; TuningError when one fails.

    Their output goes to ours, so each trial's progress line shows as it finishes.
    """
    # not the MLflow Project's run (`mlflow run` hands it down): each worker opens nested runs of the study's parent
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID")}
    env["MLFLOW_TRACKING_URI"] = tracking_uri
    procs = [subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL) for _ in range(n)]
    progress(f"  started {n} tuning workers: pids {', '.join(str(p.pid) for p in procs)}")
    try:
        codes = [p.wait() for p in procs]
    except BaseException:
        for p in procs:  # interrupted: our workers must not outlive us
            p.terminate()
        for p in procs:
            p.wait(timeout=30)
        raise
    failed = [f"pid {p.pid} exited {code}" for p, code in zip(procs, codes, strict=False) if code != 0]
    if failed:
        raise TuningError(f"tuning worker(s) failed: {', '.join(failed)} (their error is printed above)")


def wait_for_trials(
    study: optuna.Study, n_trials: int, progress=print, poll: float = 2.0, started_only: bool = False
) -> None:
    """Block until all `n_trials` trials are finished (workers on other machines may still run some); with
    `started_only`, until the trials that exist are finished (one process that stopped at its time budget)."""
    announced = False
    while True:
        trials = study.get_trials(deepcopy=False)
        running = [t.number for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
        if (started_only or len(trials) >= n_trials) and not running:
            break
        if not announced:
            progress(f"  waiting for trials {running} still running in other workers")
            announced = True
        time.sleep(poll)
    failed = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))]
    if failed:
        raise TuningError(f"study {study.study_name!r}: trial(s) {failed} failed; see the workers' output")
