"""Tuning workers: several processes (or machines) on one Optuna study, one MLflow parent run.

The process that creates the study (`msml tune --storage postgresql://… --study NAME`) opens the
MLflow parent run and records in the study what every worker needs (`StudySpec`). A worker — one
that `--workers N` spawns, or one started by hand elsewhere with the same `--storage`/`--study` —
claims trials until the study's budget is spent and logs each trial as a nested run of that
parent, tagged with its PID and host. Claiming ("count the trials, create the next one") holds a
PostgreSQL advisory lock, so however many workers run, the study gets exactly `n_trials` trials,
numbered 0..n_trials-1 by the database, none twice. The creator refits the best trial once.

A worker can die mid-trial (SIGKILL, a node lost, a pod evicted). Each running trial records Optuna's heartbeat
in the database (`Heartbeat`); a trial silent for the grace period is failed by whichever process claims next
(`optuna.storages.fail_stale_trials`), its MLflow run is marked KILLED, and Optuna's retry callback queues the
same parameters as a new WAITING trial, which the next claim takes. The budget counts the retry in place of the
failed trial, so the study still ends with `n_trials` finished trials; every worker stays until none is running,
so a retry always finds one to run it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import mlflow
import optuna
from optuna.trial import TrialState

from msml.config import DEFAULT_HEARTBEAT_SECONDS, GRACE_BEATS
from msml.errors import DataError, PipelineError, TrackingError
from msml.training.heartbeat import Heartbeat, beats, budget_trials, fail_stale

WORKER_PID_TAG = "msml.worker_pid"
WORKER_HOST_TAG = "msml.worker_host"
TRIAL_NUMBER_TAG = "optuna.trial_number"
TRIAL_RUN_ATTR = "mlflow_run_id"  # trial user attribute: the nested run that logged the trial
RETRY_OF_TAG = "msml.retry_of"  # on a retried trial's run: the number of the trial whose worker died
MAX_RETRIES = 3  # a trial whose workers keep dying (it kills them: memory) fails the study after this many


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
    heartbeat_seconds: int = DEFAULT_HEARTBEAT_SECONDS  # the creator's choice; every worker beats the same

    def save(self, study: optuna.Study) -> None:
        for key, value in asdict(self).items():
            study.set_user_attr(f"msml.{key}", value)

    @classmethod
    def load(cls, study: optuna.Study) -> StudySpec:
        attrs = study.user_attrs
        try:
            return cls(**{f.name: attrs[f"msml.{f.name}"] for f in fields(cls)})
        except KeyError:
            raise DataError(  # the user named a study that is not ours: bad input
                f"study {study.study_name!r} was not created by `msml tune` (no msml.* attributes); "
                "choose another --study name"
            ) from None


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def is_distributed(storage_url: str | None) -> bool:
    return bool(storage_url) and storage_url.startswith("postgresql")


def open_storage(
    storage_url: str | None, heartbeat_seconds: int | None = None, on_stale=None
) -> optuna.storages.RDBStorage | None:
    """Optuna's RDB storage for `storage_url` (None: in memory), with a clear error when unreachable.

    With `heartbeat_seconds`, running trials record a heartbeat and one silent for GRACE_BEATS beats is failed,
    then `on_stale(study, frozen_trial)` runs (see `stale_trial_callback`).
    """
    if not storage_url:
        return None
    heartbeat = {}
    if heartbeat_seconds:
        heartbeat = {
            "heartbeat_interval": heartbeat_seconds,
            "grace_period": GRACE_BEATS * heartbeat_seconds,
            "heartbeat_stale_trial_callback": on_stale,
        }
    try:
        with warnings.catch_warnings():  # heartbeat_interval is "experimental" in Optuna since 2.9; we test it
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(storage_url, **heartbeat)
    except Exception as exc:  # SQLAlchemy/driver errors differ by backend; all mean the same to the user
        message = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        # the study's database is the tracking setup's PostgreSQL (`msml tracking up`): unusable like a tracking server
        raise TrackingError(f"Optuna storage {_redact(storage_url)} cannot be used: {message}") from None


def with_heartbeat(
    study: optuna.Study, storage_url: str | None, spec: StudySpec, sampler, pruner, progress=print
) -> tuple[optuna.Study, optuna.storages.RDBStorage | None]:
    """The study again, through a storage that records heartbeats and fails (and retries) stale trials, and that
    storage; on a single-process study (in memory, SQLite) the study as it is and None: no one else can die."""
    if not is_distributed(storage_url):
        return study, None
    storage = open_storage(storage_url, spec.heartbeat_seconds, stale_trial_callback(spec, progress))
    return optuna.load_study(study_name=study.study_name, storage=storage, sampler=sampler, pruner=pruner), storage


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


def claim_trial(study: optuna.Study, n_trials: int, lock, storage=None, new: bool = True) -> optuna.Trial | None:
    """The study's next trial (a retry waiting first), or None when none waits and all `n_trials` exist
    (finished or running elsewhere). `new=False`: only a waiting retry (a time budget has passed).

    Under the lock, stale trials are failed first (a retry is queued in the same step), and the claimed trial
    records its first heartbeat before the lock is released: a trial without one is never found stale.
    """
    with lock():
        fail_stale(study, storage)
        trials = study.get_trials(deepcopy=False)
        waiting = any(t.state == TrialState.WAITING for t in trials)
        if not waiting and (not new or len(budget_trials(trials)) >= n_trials):
            return None
        with warnings.catch_warnings():  # "heartbeat is supposed to be used with Study.optimize": `Heartbeat`
            warnings.simplefilter("ignore", UserWarning)
            trial = study.ask()
        if beats(storage):
            storage.record_heartbeat(trial._trial_id)
        return trial


def stale_trial_callback(spec: StudySpec, progress=print):
    """What happens to a trial whose worker stopped beating: Optuna's retry callback queues its parameters as
    a new trial (up to MAX_RETRIES times), and its nested MLflow run, left RUNNING by the dead process, is
    marked KILLED (found by the run id the trial recorded, else by its trial-number tag)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES)

    def on_stale(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        retry(study, trial)
        client = mlflow.MlflowClient()
        run_ids = [trial.user_attrs[TRIAL_RUN_ATTR]] if TRIAL_RUN_ATTR in trial.user_attrs else []
        if not run_ids:  # died between opening its run and recording it
            runs = client.search_runs(
                [spec.experiment_id],
                f"tags.mlflow.parentRunId = '{spec.parent_run_id}' and tags.`{TRIAL_NUMBER_TAG}` = '{trial.number}' "
                "and attributes.status = 'RUNNING'",
            )
            run_ids = [r.info.run_id for r in runs]
        for run_id in run_ids:
            client.set_tag(run_id, "optuna.state", "failed: no heartbeat")
            client.set_terminated(run_id, status="KILLED")
        progress(
            f"  trial {trial.number + 1}: worker {trial.user_attrs.get('worker_pid', '?')} stopped beating; "
            f"trial failed, run {', '.join(run_ids) or '(none)'} KILLED, parameters queued again"
        )

    return on_stale


def run_trial(trial: optuna.Trial, spec: StudySpec, objective: Callable[[optuna.Trial], float], storage=None) -> float:
    """One trial as a nested run of the study's parent run, whichever process runs it, beating while it runs."""
    pid = os.getpid()
    tags = {WORKER_PID_TAG: str(pid), WORKER_HOST_TAG: socket.gethostname(), TRIAL_NUMBER_TAG: str(trial.number)}
    if beats(storage):
        frozen = next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number)
        if (retry_of := frozen.system_attrs.get("failed_trial")) is not None:
            tags[RETRY_OF_TAG] = str(retry_of)
    with (
        Heartbeat(storage, trial),
        mlflow.start_run(
            run_name=f"trial-{trial.number:03d}",
            experiment_id=spec.experiment_id,
            parent_run_id=spec.parent_run_id,
            nested=True,
            tags=tags,
        ) as run,
    ):
        trial.set_user_attr(TRIAL_RUN_ATTR, run.info.run_id)
        trial.set_user_attr("worker_pid", pid)
        try:
            return objective(trial)
        except optuna.TrialPruned:
            # stopped early on purpose (tagged optuna.state=pruned by the objective), not failed: leaving the
            # `with` by an exception would end the run FAILED, a red cross in the MLflow UI for a working trial
            mlflow.end_run("FINISHED")
            raise


def unfinished(study: optuna.Study) -> list[int]:
    """Numbers of the trials running (here or elsewhere) or waiting to be retried."""
    return [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING))]


def work(
    study: optuna.Study,
    spec: StudySpec,
    objective: Callable[[optuna.Trial], float],
    storage_url: str | None,
    progress=print,
    deadline: float | None = None,
    storage=None,
    poll: float = 1.0,
) -> int:
    """Claim and run trials until the budget is spent (or `deadline`, a perf_counter time, has passed); returns
    how many this process ran.

    With a heartbeat (a shared study), a process whose claim finds nothing stays while other trials run: one of
    them may die, and its retry needs someone to run it. A pruned trial is told PRUNED; a trial whose objective
    raises is told FAILED (not left RUNNING) and the error propagates.
    """
    lock = lambda: budget_lock(storage_url, study.study_name)  # noqa: E731
    done = 0
    announced = False
    while True:
        new = deadline is None or time.perf_counter() < deadline
        trial = claim_trial(study, spec.n_trials, lock, storage, new=new)
        if trial is None:
            others = unfinished(study) if beats(storage) else []
            if not others:
                break
            if not announced:
                progress(f"  [pid {os.getpid()}] waiting for trials {others} (run elsewhere; retried here if lost)")
                announced = True
            time.sleep(poll)
            continue
        started = time.perf_counter()
        where = f"trial {trial.number + 1}/{spec.n_trials}"
        try:
            value = run_trial(trial, spec, objective, storage)
        except optuna.TrialPruned as pruned:
            study.tell(trial, state=TrialState.PRUNED, skip_if_finished=True)
            progress(f"  {where}: {pruned} {time.perf_counter() - started:.1f}s [pid {os.getpid()}]")
            continue
        except BaseException:
            study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
            raise
        # skip_if_finished: a trial this process ran while its beats could not reach the database for the whole
        # grace period was failed meanwhile, and its retry counts instead
        if study.tell(trial, value, skip_if_finished=True).state != TrialState.COMPLETE:
            progress(f"  {where}: failed meanwhile (no heartbeat reached the database); its retry counts")
            continue
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
    for p, code in zip(procs, codes, strict=True):
        if code < 0:  # killed from outside: its trial is failed by the heartbeat and retried (`work`)
            progress(f"  tuning worker pid {p.pid} was killed ({signal.Signals(-code).name}); its trial is retried")
    failed = [f"pid {p.pid} exited {code}" for p, code in zip(procs, codes, strict=True) if code > 0]
    if failed:
        raise TuningError(f"tuning worker(s) failed: {', '.join(failed)} (their error is printed above)")


def wait_for_trials(
    study: optuna.Study, n_trials: int, progress=print, poll: float = 2.0, started_only: bool = False
) -> None:
    """Block until all `n_trials` trials are finished (workers on other machines may still run some); with
    `started_only`, until the trials that exist are finished (one process that stopped at its time budget).
    TuningError when a trial failed and was not retried."""
    announced = False
    while True:
        trials = study.get_trials(deepcopy=False)
        running = [t.number for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
        if (started_only or len(budget_trials(trials)) >= n_trials) and not running:
            break
        if not announced:
            progress(f"  waiting for trials {running} still running in other workers")
            announced = True
        time.sleep(poll)
    trials = study.get_trials(deepcopy=False)
    failed = [t.number for t in budget_trials(trials) if t.state == TrialState.FAIL]
    if failed:
        raise TuningError(f"study {study.study_name!r}: trial(s) {failed} failed; see the workers' output")
