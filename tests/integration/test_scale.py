"""Past the embedded defaults, for real: `msml tracking up` (mlflow server on a PostgreSQL cluster of
its own, artifacts proxied), train + distributed tune + register + gate through HTTP only, two
tuning worker processes sharing one Optuna study in PostgreSQL, and one of them SIGKILLed mid-trial."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import mlflow
import optuna
import pytest
import requests
from mlflow import MlflowClient
from optuna.trial import TrialState
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from msml.config import load_settings
from msml.errors import DataError, TrackingError
from msml.tracking.postgres import LOOP_DB, MLFLOW_DB, OPTUNA_DB, PostgresError, find_bin_dir
from msml.tracking.registry import CHAMPION
from msml.training.workers import RETRY_OF_TAG, TRIAL_NUMBER_TAG, TRIAL_RUN_ATTR, WORKER_PID_TAG
from tests import background
from tests.conftest import BIN, ROOT, run_msml

pytestmark = pytest.mark.slow
TRIALS, FOLDS, WORKERS = 4, 2, 2
STUDY = "scale-test"
SMALL_ROWS = 6000  # of 48,842: the gate still ranks tuned HGB above the baseline; a trial takes seconds


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _require_postgres() -> None:
    try:
        find_bin_dir()
    except PostgresError as exc:
        if os.environ.get("MSML_REQUIRE_SYSTEM") == "1":
            pytest.fail(f"MSML_REQUIRE_SYSTEM=1 but {exc}")
        pytest.skip(str(exc))


def make_small_processed(root: Path, raw_path: Path, contract) -> Path:
    """The first rows of the real raw file, preprocessed: trials in seconds, the same code paths."""
    from msml.data.preprocessing import preprocess

    with raw_path.open() as f:
        (root / "raw.csv").write_text("".join(itertools.islice(f, 1 + SMALL_ROWS)))
    out = root / f"{contract.name}_preprocessing"
    preprocess(root / "raw.csv", out, contract, seed=42)
    return out


def start_server(small_processed: Path) -> dict:
    """`msml tracking up` in a temp home (PostgreSQL + mlflow server on free ports); `stop_server` after."""
    _require_postgres()
    # in /tmp, not pytest's 0700 tree: the cluster runs as the `postgres` user, which must reach its folder
    root = Path(tempfile.mkdtemp(prefix="msml-scale-"))
    root.chmod(0o755)
    home = {"MSML_HOME": str(root / "server")}
    port, pg_port = free_port(), free_port()
    up = run_msml("tracking", "up", "--port", str(port), "--postgres-port", str(pg_port), env=home, timeout=300)
    state = {"root": root, "home": home, "pg_port": pg_port}
    if up.returncode != 0:
        stop_server(state)
        raise AssertionError(up.stdout + up.stderr)
    url = f"http://127.0.0.1:{port}"
    optuna_uri = f"postgresql://postgres@127.0.0.1:{pg_port}/{OPTUNA_DB}"
    loop_uri = f"postgresql://postgres@127.0.0.1:{pg_port}/{LOOP_DB}"
    client_home = root / "client"  # the clients' own home: nothing may be written there
    client_home.mkdir()
    env = {"MSML_HOME": str(client_home), "MSML_PROCESSED": str(small_processed), "MLFLOW_TRACKING_URI": url}
    state |= {
        "url": url,
        "env": env,
        "client_home": client_home,
        "optuna": optuna_uri,
        "loop": loop_uri,
        "mlflow_db": f"postgresql://postgres@127.0.0.1:{pg_port}/{MLFLOW_DB}",
        "artifacts": root / "server" / ".run" / "tracking" / "artifacts",
        "up": up.stdout,
    }
    return state


def stop_server(state: dict) -> subprocess.CompletedProcess:
    """`msml tracking down` of `start_server`'s home, and its folder removed."""
    try:
        return run_msml("tracking", "down", env=state["home"])
    finally:
        shutil.rmtree(state["root"], ignore_errors=True)


def train_both(server: dict, out: Path) -> dict:
    """Baseline, then tuning with two worker processes on one study, both through HTTP only."""
    env = server["env"]
    baseline = run_msml("train", "--run-info", str(out / "baseline.json"), env=env)
    assert baseline.returncode == 0, baseline.stderr
    tuned = run_msml(
        "tune",
        "--n-trials",
        str(TRIALS),
        "--cv-folds",
        str(FOLDS),
        "--storage",
        server["optuna"],
        "--study",
        STUDY,
        "--workers",
        str(WORKERS),
        "--run-info",
        str(out / "tuned.json"),
        env=env,
    )
    assert tuned.returncode == 0, tuned.stdout + tuned.stderr
    return {
        "baseline": json.loads((out / "baseline.json").read_text()),
        "tuned": json.loads((out / "tuned.json").read_text()),
        "stdout": tuned.stdout,
        "out": out,
    }


@background.job("trained", needs=("raw_path", "contract"), cleanup=lambda made: stop_server(made[0]))
def make_trained(base: Path, raw_path: Path, contract) -> tuple[dict, dict]:
    """The server and the training through it, beside the other tests (tests/background.py): (server's value,
    trained's value); the server runs until the module's end (`server` stops it)."""
    (base / "small").mkdir()
    (base / "runs").mkdir()
    state = start_server(make_small_processed(base / "small", raw_path, contract))
    try:
        return state, train_both(state, base / "runs")
    except BaseException:
        stop_server(state)
        raise


@pytest.fixture(scope="module")
def server(tmp_path_factory, raw_path, contract):
    """The tracking server: the one `trained`'s job started when a test takes `trained`, else one of its own;
    `msml tracking down` after, which must stop both servers."""
    if background.JOBS["trained"].started:
        state, _ = background.result("trained", None)
    else:
        state = start_server(make_small_processed(tmp_path_factory.mktemp("small"), raw_path, contract))
    up, url, pg_port = state["up"], state["url"], state["pg_port"]
    try:
        assert f"MLFLOW_TRACKING_URI={url}" in up and state["optuna"] in up
        assert f"MSML_LOOP_STORE={state['loop']}" in up
        yield state
    finally:
        down = stop_server(state)
    assert down.returncode == 0 and "tracking-server" in down.stdout and "postgresql" in down.stdout, down.stdout
    with socket.socket() as s:  # the cluster really stopped
        assert s.connect_ex(("127.0.0.1", pg_port)) != 0


@pytest.fixture(scope="module")
def trained(server, tmp_path_factory):
    """Baseline, then tuning with two worker processes on one study, both through HTTP only."""
    if background.JOBS["trained"].started:
        made = background.result("trained", None)[1]
    else:
        made = train_both(server, tmp_path_factory.mktemp("runs"))
    mlflow.set_tracking_uri(server["url"])
    return made


def test_runs_models_and_the_gate_go_through_the_server(server, trained):
    client = MlflowClient(server["url"])
    tuned = client.get_run(trained["tuned"]["run_id"])
    assert tuned.data.metrics["test_roc_auc"] > 0.85
    # artifacts are proxied: the run points at the server's mlflow-artifacts: scheme, the bytes land on its side
    assert tuned.info.artifact_uri.startswith("mlflow-artifacts:")
    names = {f.path for f in client.list_artifacts(tuned.info.run_id, "evaluation")}
    assert "evaluation/roc_curve.png" in names
    local = Path(
        mlflow.artifacts.download_artifacts(
            run_id=tuned.info.run_id, artifact_path="model/MLmodel", dst_path=str(trained["out"] / "dl")
        )
    )
    assert local.read_text().startswith("artifact_path") or "flavors" in local.read_text()
    assert any(server["artifacts"].rglob("MLmodel"))
    # the clients wrote nothing locally: no SQLite store, no artifact folder
    assert sorted(p.name for p in server["client_home"].iterdir()) == []
    # registry and gate: the tuned model is champion; the baseline is registered but rejected
    name = load_settings().model_name
    assert client.get_model_version_by_alias(name, CHAMPION).run_id == tuned.info.run_id
    result = run_msml("register", trained["baseline"]["run_id"], env=server["env"])
    assert result.returncode == 0 and "registered, not promoted" in result.stdout, result.stderr
    assert client.get_model_version_by_alias(name, CHAMPION).run_id == tuned.info.run_id
    # the backend store really is PostgreSQL: the runs are rows there
    engine = create_engine(server["mlflow_db"], poolclass=NullPool)
    with engine.connect() as conn:
        n_runs = conn.execute(text("SELECT count(*) FROM runs")).scalar_one()
    engine.dispose()
    assert n_runs == 1 + 1 + TRIALS  # baseline, tuning parent, one nested run per trial
    # and Prometheus can scrape the server
    metrics = requests.get(f"{server['url']}/metrics", timeout=10)
    assert metrics.status_code == 200 and "mlflow_http_request" in metrics.text


def test_two_workers_share_one_study_exactly_once(server, trained):
    study = optuna.load_study(study_name=STUDY, storage=server["optuna"])
    trials = study.get_trials(deepcopy=False)
    assert sorted(t.number for t in trials) == list(range(TRIALS))  # none lost, none twice
    assert all(t.state == TrialState.COMPLETE for t in trials)
    pids = {t.user_attrs["worker_pid"] for t in trials}
    assert len(pids) == WORKERS  # both workers ran trials (different processes)

    client = MlflowClient(server["url"])
    parent = client.get_run(trained["tuned"]["run_id"])
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(int(c.data.tags[TRIAL_NUMBER_TAG]) for c in children) == list(range(TRIALS))
    # each trial's nested run is the one the trial names, tagged with the PID of the worker that ran it
    by_run = {c.info.run_id: c for c in children}
    for t in trials:
        assert by_run[t.user_attrs[TRIAL_RUN_ATTR]].data.tags[WORKER_PID_TAG] == str(t.user_attrs["worker_pid"])
        assert by_run[t.user_attrs[TRIAL_RUN_ATTR]].data.metrics["cv_roc_auc_mean"] == pytest.approx(t.value)
    # the best trial is refitted once, by the process that created the study
    assert {k[len("best_") :]: v for k, v in parent.data.params.items() if k.startswith("best_")} == {
        k: str(v) for k, v in study.best_params.items()
    }
    # the chosen candidate is the best trial or the ensemble of each family's best, never worse than the best trial;
    # the best trial's out-of-fold score, recomputed by the creator whichever worker ran it, is the study's value
    assert parent.data.metrics["best_cv_roc_auc"] >= study.best_value - 1e-9
    assert parent.data.metrics[f"cv_roc_auc_{study.best_params['family']}"] == pytest.approx(study.best_value)
    assert trained["stdout"].count("refitting on the whole train split") == 1
    assert not any(client.list_artifacts(c.info.run_id) for c in children)  # models only on the parent


def test_distributed_tuning_errors_are_clear(server, trained):
    env = server["env"]
    local = run_msml("tune", "--workers", "2", "--n-trials", "1", env=env)
    # a usage mistake is bad input (2); an unreachable study database is a tracking-setup failure (3)
    assert local.returncode == DataError.exit_code and "needs --storage postgresql://" in local.stderr, local.stderr
    down = run_msml(
        "tune",
        "--storage",
        f"postgresql://postgres@127.0.0.1:{free_port()}/{OPTUNA_DB}",
        "--study",
        "x",
        "--workers",
        "2",
        env=env,
    )
    assert down.returncode == TrackingError.exit_code and "cannot be used" in down.stderr, down.stderr
    assert "Traceback" not in down.stderr, down.stderr
    joined = run_msml("tune", "--storage", server["optuna"], "--study", STUDY, "--join", env=env)
    # the study's budget is spent: a late worker joins, runs nothing, and leaves the refit to the creator
    assert joined.returncode == 0 and "joining study" in joined.stdout and "ran 0 trial(s)" in joined.stdout


def test_a_worker_killed_mid_trial_is_failed_and_retried_by_the_other(server):
    """Two workers, one SIGKILLed inside a trial: its heartbeat stops, the other worker fails the trial, marks its
    MLflow run KILLED and runs the same parameters again, so the study still ends with N finished trials."""
    study_name, n_trials = "scale-dead-worker", 2
    env = {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}", **server["env"]}
    command = [str(BIN / "msml"), "tune", "--n-trials", str(n_trials), "--cv-folds", "3", "--storage"]
    command += [server["optuna"], "--study", study_name, "--workers", "2", "--heartbeat", "1", "--no-register"]
    # its own session: the creator and the two workers it spawns are one process group, stopped together below
    creator = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    started = time.monotonic()
    try:
        victim = None
        while victim is None and time.monotonic() - started < 180:
            time.sleep(0.1)
            try:
                study = optuna.load_study(study_name=study_name, storage=server["optuna"])
            except KeyError:
                continue
            running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            # inside the objective (its run opened, drawing its parameters): the folds still to fit take seconds
            victim = next((t for t in running if TRIAL_RUN_ATTR in t.user_attrs and t.params), None)
        assert victim is not None, "no trial started within 180 s"
        os.kill(victim.user_attrs["worker_pid"], signal.SIGKILL)
        killed_at = time.monotonic()
        victim = next(t for t in study.get_trials(deepcopy=False) if t.number == victim.number)
        assert victim.state == TrialState.RUNNING, "the trial finished before the kill: the test proved nothing"
        out, _ = creator.communicate(timeout=300)
        ended = time.monotonic()
    finally:
        if creator.poll() is None:
            os.killpg(creator.pid, signal.SIGKILL)
            creator.wait()
    print(f"dead-worker test: kill after {killed_at - started:.1f} s, study done {ended - killed_at:.1f} s later")
    assert creator.returncode == 0, out
    assert "was killed (SIGKILL); its trial is retried" in out, out

    trials = optuna.load_study(study_name=study_name, storage=server["optuna"]).get_trials(deepcopy=False)
    by_state = {s: [t for t in trials if t.state == s] for s in TrialState}
    assert len(by_state[TrialState.COMPLETE]) + len(by_state[TrialState.PRUNED]) == n_trials, trials
    assert [t.number for t in by_state[TrialState.FAIL]] == [victim.number]
    assert not by_state[TrialState.RUNNING] and not by_state[TrialState.WAITING]
    retry = next(t for t in trials if t.system_attrs.get("failed_trial") == victim.number)
    # the parameters drawn before the kill are kept (the rest, when it died between two suggestions, drawn anew)
    assert victim.params.items() <= retry.params.items() and retry.state in (TrialState.COMPLETE, TrialState.PRUNED)
    assert retry.user_attrs["worker_pid"] != victim.user_attrs["worker_pid"]  # the survivor ran it

    client = MlflowClient(server["url"])
    dead_run = client.get_run(victim.user_attrs[TRIAL_RUN_ATTR])
    assert dead_run.info.status == "KILLED" and dead_run.data.tags["optuna.state"] == "failed: no heartbeat"
    retry_run = client.get_run(retry.user_attrs[TRIAL_RUN_ATTR])
    assert retry_run.info.status == "FINISHED" and retry_run.data.tags[RETRY_OF_TAG] == str(victim.number)
    parent_id = dead_run.data.tags["mlflow.parentRunId"]
    children = client.search_runs([dead_run.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")
    assert len(children) == n_trials + 1 and not [c for c in children if c.info.status == "RUNNING"]


def test_the_loop_store_on_the_tracking_servers_postgresql(server, contract, tmp_path):
    """The loop store in the cluster's `loop` database: the gateway's writer thread logs, labels keep the first
    write, and `collect` joins them into the same snapshot the SQLite store gives."""
    from prometheus_client import CollectorRegistry, Counter

    from msml.loop.collect import collect
    from msml.loop.prediction_log import PredictionLog
    from msml.loop.store import Label, open_store
    from msml.serving.validation import RowValidator
    from tests.conftest import RAW

    raw = contract.read_csv(RAW).head(30)
    records = raw[contract.features].astype(object).where(raw[contract.features].notna(), None).to_dict("records")
    rows = RowValidator(contract).validate(records)
    ids = [f"pg{i:02d}" for i in range(len(rows))]
    snapshots = {}
    for name, url in (("postgresql", server["loop"]), ("sqlite", f"sqlite:///{tmp_path / 'loop.db'}")):
        store = open_store(url)
        registry = CollectorRegistry()
        logged, dropped = Counter("logged", "", registry=registry), Counter("dropped", "", registry=registry)
        log = PredictionLog(store, contract.fingerprint, logged, dropped, flush_interval=0.01)
        log.start()
        for k in range(0, len(rows), 7):  # requests of up to 7 rows, all at one time
            n = len(ids[k : k + 7])
            log.append(ids[k : k + 7], rows[k : k + 7], [0.5] * n, [0] * n, None, 1000.0)
        log.stop()
        assert (logged._value.get(), dropped._value.get()) == (len(rows), 0)
        assert store.record_labels([Label(i, t, 1001.0) for i, t in zip(ids, raw[contract.target], strict=True)])
        assert store.record_labels([Label(ids[0], "<=50K", 1002.0)]) == set()  # the first write wins
        store.close()
        snapshots[name] = collect(url, tmp_path / name, contract, horizon=0.0, now=2000.0)
    assert snapshots["postgresql"].manifest["rows"] == len(rows)
    assert snapshots["postgresql"].sha256 == snapshots["sqlite"].sha256
