"""Kriteria 3 for real: `mlflow run MLProject` for both entry points into a temp tracking store, the local CI
proof (`msml ci`: run-info file → artifacts → summary → generated Dockerfile), failure exits, reproducibility,
the committed MLProject files, and the training workflow's shape."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from msml.config import PYTHON_VERSION, load_settings
from msml.generated import stale
from msml.ops.ci import check_dockerfile
from msml.ops.project import (
    CONDA_FILE,
    DOCKERHUB_FILE,
    MLPROJECT_FILE,
    PROJECT_DIR,
    locked_requirements,
    project_files,
    render_mlproject,
)
from tests import background
from tests.conftest import ROOT, run_msml
from tests.helpers import cheapest_seed

BIN = Path(sys.executable).parent
PROJECT = ROOT / PROJECT_DIR
WORKFLOW = ROOT / ".github" / "workflows" / "training.yml"


# Under a shared, busy machine a fit can run 10-50x slower than alone: generous per-test limits.
SLOW_LIMIT = 1800


def store_env(tmp: Path) -> dict:
    """A throwaway tracking store and artifact root; the repository stays the settings' root (MLProject/, data/)."""
    return {
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}",
        "MSML_ARTIFACT_ROOT": str(tmp / "mlartifacts"),
        "MSML_HOME": str(ROOT),
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    }


def mlflow_run(*args: str, env: dict, cwd: Path, timeout: float = SLOW_LIMIT) -> subprocess.CompletedProcess:
    """The plain `mlflow run` command, as a user would type it."""
    full_env = {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}", **env}
    for name in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        full_env.pop(name, None)
    return subprocess.run(
        [str(BIN / "mlflow"), "run", str(PROJECT), *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def client_for(tmp: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}")


def all_runs(client: MlflowClient) -> list:
    ids = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(ids, max_results=1000)


# --- the committed files -------------------------------------------------------------------------------------


def test_committed_project_files_are_current():
    settings = load_settings(root=ROOT)
    files = project_files(settings, ROOT)
    assert set(files) == {f"{PROJECT_DIR}/{n}" for n in (MLPROJECT_FILE, CONDA_FILE, DOCKERHUB_FILE)}
    assert stale(ROOT, files) == [], "run `msml project render` and commit MLProject/"


def test_mlproject_has_typed_entry_points_with_defaults():
    spec = yaml.safe_load((PROJECT / MLPROJECT_FILE).read_text())
    assert spec["conda_env"] == CONDA_FILE
    main, tune = spec["entry_points"]["main"], spec["entry_points"]["tune"]
    for entry in (main, tune):
        params = entry["parameters"]
        assert {"data_path", "seed", "experiment_name", "run_info"} <= set(params)
        assert all("type" in p and "default" in p for p in params.values())
        assert (PROJECT / params["data_path"]["default"] / "train.csv.gz").is_file()  # relative to MLProject/
    assert main["command"].startswith("msml train") and tune["command"].startswith("msml tune")
    assert tune["parameters"]["trials"]["type"] == "float"  # MLflow has no int type
    # an export (data copied next to MLproject) only changes the default
    exported = yaml.safe_load(render_mlproject(load_settings(root=ROOT), data_path="adult_preprocessing"))
    assert exported["entry_points"]["tune"]["parameters"]["data_path"]["default"] == "adult_preprocessing"


def test_conda_env_pins_what_the_package_pins():
    env = yaml.safe_load((PROJECT / CONDA_FILE).read_text())
    deps = env["dependencies"]
    assert f"python={PYTHON_VERSION}" in deps
    assert sys.version.startswith(PYTHON_VERSION + "."), "the tests run on the Python the lock is made for"
    pip = next(d["pip"] for d in deps if isinstance(d, dict))
    norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()  # noqa: E731
    lock = {
        norm(n): v
        for n, v in (
            line.split("==", 1)
            for line in (ROOT / "requirements" / "runtime.txt").read_text().splitlines()
            if "==" in line and not line.startswith("#")
        )
    }
    assert pip[:-1] == locked_requirements(ROOT)
    assert "mlflow==2.19.0" in pip and "scikit-learn==1.5.2" in pip
    for req in pip[:-1]:
        name, version = req.split("==")
        assert lock[norm(name.split("[")[0])] == version, req
    assert pip[-1] == "-e .."  # msml itself, from the checked-out repository


def test_dockerhub_link_comes_from_the_settings(monkeypatch):
    assert (
        PROJECT / DOCKERHUB_FILE
    ).read_text() == "https://hub.docker.com/r/yudhaelfransyah/adult-income-classifier\n"
    monkeypatch.setenv("MSML_DOCKERHUB_USER", "someone")
    files = project_files(load_settings(root=ROOT), ROOT)
    assert files[f"{PROJECT_DIR}/{DOCKERHUB_FILE}"].startswith("https://hub.docker.com/r/someone/")


# --- mlflow run, for real ----------------------------------------------------------------------------------


@background.job("main_run")
def make_main_run(tmp: Path) -> dict:
    """`mlflow run MLProject -e main --env-manager local` from another directory, without --experiment-name (run
    beside the other tests: tests/background.py)."""
    run_info = tmp / "run_info.json"
    result = mlflow_run(
        "-e", "main", "--env-manager", "local", "-P", f"run_info={run_info}", env=store_env(tmp), cwd=tmp
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return {"tmp": tmp, "result": result, "info": json.loads(run_info.read_text())}


@pytest.fixture(scope="module")
def main_run(tmp_path_factory) -> dict:
    return background.result("main_run", lambda: tmp_path_factory.mktemp("mlproject-main"))


@pytest.mark.slow
@pytest.mark.timeout(SLOW_LIMIT)
def test_main_entry_point_logs_into_the_project_run(main_run):
    client = client_for(main_run["tmp"])
    runs = all_runs(client)
    assert len(runs) == 1, "the entry point must log into the run `mlflow run` opened, not a second one"
    run = runs[0]
    info = main_run["info"]
    assert info["run_id"] == run.info.run_id and info["model_uri"] == f"runs:/{run.info.run_id}/model"
    assert run.info.status == "FINISHED"
    assert run.data.tags["mlflow.source.type"] == "PROJECT"
    assert run.data.tags["mlflow.project.entryPoint"] == "main"
    assert run.data.metrics["test_roc_auc"] > 0.85 and "training_roc_auc" in run.data.metrics  # autolog + ours
    assert {"C", "max_iter", "data_path", "seed"} <= set(run.data.params)  # autolog's and the project's
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"model", "monitoring"} <= artifacts
    # no --experiment-name: the run is in Default, and the entry point says it logged there, not elsewhere
    assert run.info.experiment_id == info["experiment_id"] == "0"
    assert "logging there" in main_run["result"].stderr


@pytest.mark.slow
@pytest.mark.timeout(SLOW_LIMIT)
def test_ci_proof_runs_tune_through_the_project_and_generates_the_image(tmp_path):
    """What `make ci-local` runs (`msml ci`), with a tiny budget: the tuning parent run is the project run."""
    out = tmp_path / "ci"
    result = run_msml(
        "ci",
        "--entry",
        "tune",
        "--trials",
        "1",
        "--cv-folds",
        "2",
        "--seed",
        str(cheapest_seed()),
        "--out",
        str(out),
        "--image-tag",
        "abc123",
        env=store_env(tmp_path),
        timeout=SLOW_LIMIT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads((out / "run_summary.json").read_text())
    run_info = json.loads((out / "run_info.json").read_text())
    assert summary["run_id"] == run_info["run_id"]
    assert summary["image"] == "yudhaelfransyah/adult-income-classifier:abc123"
    assert summary["metrics"]["test_roc_auc"] > 0.8
    assert {"mlflow_run", "collect_artifacts", "generate_dockerfile"} <= set(summary["seconds"])

    client = client_for(tmp_path)
    runs = all_runs(client)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert [p.info.run_id for p in parents] == [summary["run_id"]]
    parent = parents[0]
    assert parent.data.tags["mlflow.source.type"] == "PROJECT"
    assert parent.data.tags["mlflow.project.entryPoint"] == "tune"
    assert client.get_experiment(parent.info.experiment_id).name == summary["experiment"]
    assert len(children) == 1 and children[0].data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert "cv_roc_auc_mean" in children[0].data.metrics

    # artifacts collected from the run: model, evaluation, model card
    for rel in ("model/MLmodel", "model/model.pkl", "monitoring/drift_reference.json", "model_card.md"):
        assert (out / "artifacts" / rel).is_file(), rel
    # the Dockerfile `mlflow models build-docker --env-manager local` builds
    dockerfile = out / "docker" / "Dockerfile"
    text = dockerfile.read_text()
    assert re.search(r"^FROM python:3\.[\d.]+-slim$", text, re.MULTILINE)
    assert "COPY model_dir/model /opt/ml/model" in text
    assert "_serve" in text.split("ENTRYPOINT", 1)[1]
    assert (out / "docker" / "model_dir" / "model" / "MLmodel").is_file()
    assert check_dockerfile(dockerfile) == []


def test_dockerfile_check_is_not_a_rubber_stamp(tmp_path, monkeypatch):
    (tmp_path / "model_dir" / "model").mkdir(parents=True)
    (tmp_path / "model_dir" / "model" / "MLmodel").write_text("flavors: {}\n")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:24.04\nENV DOCKERHUB_TOKEN=abc\nCOPY model_dir/model /opt/ml/model\nCMD bash\n")
    problems = "\n".join(check_dockerfile(bad))
    assert "slim Python" in problems and "DOCKERHUB_TOKEN" in problems and "does not serve" in problems
    monkeypatch.setenv("SOME_API_TOKEN", "s3cr3t-value-123")
    bad.write_text(
        "FROM python:3.12-slim\nCOPY model_dir/model /opt/ml/model\nLABEL x=s3cr3t-value-123\n"
        'ENTRYPOINT ["python", "-c", "from mlflow.models import container as C; C._serve(\'local\')"]\n'
    )
    assert any("value of a secret" in p for p in check_dockerfile(bad))


@pytest.mark.slow
@pytest.mark.timeout(SLOW_LIMIT)
def test_broken_data_path_fails_mlflow_run_with_the_cause(tmp_path):
    result = mlflow_run(
        "-e",
        "main",
        "--env-manager",
        "local",
        "-P",
        f"data_path={tmp_path / 'nowhere'}",
        "-P",
        f"run_info={tmp_path / 'run_info.json'}",
        env=store_env(tmp_path),
        cwd=tmp_path,
    )
    assert result.returncode != 0
    log = result.stdout + result.stderr
    assert "processed file not found" in log and str(tmp_path / "nowhere") in log
    assert not (tmp_path / "run_info.json").exists()
    assert [r.info.status for r in all_runs(client_for(tmp_path))] == ["FAILED"]


@pytest.mark.slow
@pytest.mark.timeout(SLOW_LIMIT)
def test_ci_fails_when_the_entry_point_fails(tmp_path):
    result = run_msml(
        "ci",
        "--entry",
        "main",
        "--data",
        str(tmp_path / "nowhere"),
        "--out",
        str(tmp_path / "ci"),
        env=store_env(tmp_path),
        timeout=SLOW_LIMIT,
    )
    assert result.returncode != 0
    assert "processed file not found" in result.stderr and "mlflow run -e main` exited" in result.stderr
    assert not (tmp_path / "ci" / "run_summary.json").exists()


@pytest.mark.slow
@pytest.mark.timeout(SLOW_LIMIT)
def test_same_data_and_seed_reproduce_the_metrics(main_run, tmp_path):
    out = tmp_path / "ci"
    result = run_msml(
        "ci", "--entry", "main", "--no-dockerfile", "--out", str(out), env=store_env(tmp_path), timeout=SLOW_LIMIT
    )
    assert result.returncode == 0, result.stdout + result.stderr
    again = json.loads((out / "run_summary.json").read_text())["metrics"]
    first = main_run["info"]["metrics"]
    assert again == first


# --- the workflow and the local proof call the same command ---------------------------------------------------


def test_training_workflow_does_what_the_course_asks():
    wf = yaml.safe_load(WORKFLOW.read_text())
    triggers = wf[True]  # YAML 1.1 reads the key `on` as True
    assert {"push", "workflow_dispatch", "workflow_run"} <= set(triggers)
    assert {"MLProject/**", "data/adult_preprocessing/**"} <= set(triggers["push"]["paths"])
    assert {"trials", "push_image"} <= set(triggers["workflow_dispatch"]["inputs"])
    assert triggers["workflow_run"]["workflows"] == ["preprocessing"]
    assert wf["permissions"] == {"contents": "read"}
    jobs = wf["jobs"]
    writers = [name for name, job in jobs.items() if job.get("permissions", {}).get("contents") == "write"]
    assert writers == ["commit"]
    steps = jobs["train"]["steps"]
    # one absolute store for mlflow run (entry point inside MLProject/) and build-docker (runs:/ URI)
    assert jobs["train"]["env"]["MLFLOW_TRACKING_URI"] == "sqlite:///${{ github.workspace }}/mlflow.db"
    runs = "\n".join(step.get("run", "") for step in steps)
    assert "msml ci --entry tune" in runs
    assert 'build-docker -m "runs:/$RUN_ID/model"' in runs and "--env-manager local" in runs
    assert 'docker push "$IMAGE:$GITHUB_SHA"' in runs and 'docker push "$IMAGE:latest"' in runs
    assert "ls -t" not in WORKFLOW.read_text() and "|| true" not in WORKFLOW.read_text()
    login = next(s for s in steps if s.get("uses", "").startswith("docker/login-action@"))
    assert len(login["uses"].split("@")[1].split()[0]) == 40  # pinned by commit sha
    assert login["with"] == {
        "username": "${{ secrets.DOCKERHUB_USERNAME }}",
        "password": "${{ secrets.DOCKERHUB_TOKEN }}",
    }
    assert login["if"] == "steps.push.outputs.push == 'true'"  # no secrets: built, not pushed, and said so
    assert "not pushed" in runs
    assert any("upload-artifact" in s.get("uses", "") for s in steps)
    assert "last_run.json" in "\n".join(s.get("run", "") for s in jobs["commit"]["steps"])


def test_make_ci_local_runs_the_workflow_command():
    dry = subprocess.run(["make", "-n", "ci-local", "TRIALS=2"], cwd=ROOT, capture_output=True, text=True)
    assert dry.returncode == 0, dry.stderr
    assert "msml ci --entry tune --trials 2" in dry.stdout
