"""`msml export`: the course's exact trees, the zip, clean workflows, and each exported course file working on its
own in ONE fresh virtualenv with only the exported requirements.txt (no msml): automate_<student>.py byte-identical
to `msml preprocess`, modelling.py's autolog metrics equal to `msml train`'s, modelling_tuning.py's manual logging,
`mlflow run MLProject`, and 3.prometheus_exporter.py + 7.inference.py against a real `mlflow models serve`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from msml.config import DEFAULT_DOCKERHUB_USER, DEFAULT_GITHUB_USER, DEFAULT_STUDENT, load_settings
from msml.data.contract import Contract
from msml.errors import ExportError
from msml.handin.course import course_files
from msml.handin.names import (
    ALERTING_DIR,
    EXPORTER,
    GRAFANA_DIR,
    INFERENCE,
    MISSING_FILE,
    PROMETHEUS_DIR,
)
from msml.handin.repos import check_names
from msml.handin.units import _copy_processed, _copy_raw, write_eksperimen, write_submission, write_workflow_ci
from tests import background
from tests.conftest import ROOT, run_msml
from tests.helpers import dataset_digests, lint_workflows

pytestmark = pytest.mark.slow

S = DEFAULT_STUDENT
EKS = f"Eksperimen_SML_{S}"
SUB = f"SMSML_{S}"
DATA = "adult_preprocessing"
PROCESSED_FILES = {
    "quarantine.csv",
    "report.json",
    "test.csv.gz",
    "test_clean.csv",
    "train.csv.gz",
    "train_clean.csv",
    "transformer.joblib",
}

# The course's trees, exactly (names, spelling, spaces). `<dir>/` marks a folder; a processed-dataset folder
# is checked file by file separately. requirements.txt pins PyPI packages only (no msml travels with them).
EXPECTED = {
    EKS: {
        ".github/",
        ".github/workflows/",
        ".github/workflows/preprocessing.yml",
        ".gitignore",
        "README.md",
        "requirements.txt",
        "adult_raw/",
        "adult_raw/README.md",
        "adult_raw/adult.csv",
        "preprocessing/",
        f"preprocessing/Eksperimen_{S}.ipynb",
        f"preprocessing/automate_{S}.py",
        f"preprocessing/{DATA}/",
    },
    "Workflow-CI": {
        ".github/",
        ".github/workflows/",
        ".github/workflows/training.yml",
        ".github/scripts/",
        ".github/scripts/commit_artifacts.sh",
        ".gitignore",
        "README.md",
        "requirements.txt",
        "MLProject/",
        "MLProject/MLproject",
        "MLProject/conda.yaml",
        "MLProject/modelling.py",
        "MLProject/modelling_tuning.py",
        f"MLProject/{DATA}/",
        "MLProject/DockerHub.txt",
    },
    SUB: {
        f"{EKS}.txt",
        "Workflow-CI.txt",
        "Membangun_model/",
        "Membangun_model/modelling.py",
        "Membangun_model/modelling_tuning.py",
        f"Membangun_model/{DATA}/",
        "Membangun_model/requirements.txt",
        "Membangun_model/DagsHub.txt",
        "Monitoring dan Logging/",
        "Monitoring dan Logging/2.prometheus.yml",
        "Monitoring dan Logging/2.prometheus_rules.yml",
        "Monitoring dan Logging/2.alert_runbooks.md",
        "Monitoring dan Logging/requirements.txt",
        "Monitoring dan Logging/3.prometheus_exporter.py",
        "Monitoring dan Logging/4.bukti monitoring Prometheus/",
        "Monitoring dan Logging/5.bukti monitoring Grafana/",
        "Monitoring dan Logging/6.bukti alerting Grafana/",
        "Monitoring dan Logging/7.inference.py",
    },
}
# The export makes none of these (`msml handin` and `msml evidence grafana` do): listed in MISSING_EVIDENCE.md.
EVIDENCE = {
    f"{SUB}/Membangun_model/screenshoot_dashboard.jpg",
    f"{SUB}/Membangun_model/screenshoot_artifak.jpg",
    f"{SUB}/Monitoring dan Logging/1.bukti_serving.jpg",
    f"{SUB}/Monitoring dan Logging/4.bukti monitoring Prometheus/",
    f"{SUB}/Monitoring dan Logging/5.bukti monitoring Grafana/",
    f"{SUB}/Monitoring dan Logging/6.bukti alerting Grafana/",
}


def tree(root: Path) -> set[str]:
    """Relative paths under root (folders end in /), without .git/ and without the processed datasets' files."""
    found = set()
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if rel.parts[0] == ".git" or (len(rel.parts) > 1 and rel.parts[-2] == DATA):
            continue
        found.add(rel.as_posix() + ("/" if path.is_dir() else ""))
    return found


STUDENT_GIT = ("Yudha Elfransyah", "yudha.elfransyah@example.com")  # the student's own `git config --global`


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("export")
    (base / "gitconfig").write_text(f"[user]\n\tname = {STUDENT_GIT[0]}\n\temail = {STUDENT_GIT[1]}\n")
    out = base / "dist"
    result = run_msml("export", "--out", str(out), "--no-evidence", env={"GIT_CONFIG_GLOBAL": str(base / "gitconfig")})
    assert result.returncode == 0, result.stdout + result.stderr
    return out


def test_exact_trees(exported):
    assert {p.name for p in exported.iterdir()} == {EKS, "Workflow-CI", SUB, f"{SUB}.zip", MISSING_FILE, "SUBMIT.md"}
    for unit, expected in EXPECTED.items():
        assert tree(exported / unit) == expected, unit
    committed = dataset_digests(ROOT / "data" / DATA)
    assert set(committed) == PROCESSED_FILES
    for folder in (f"{EKS}/preprocessing/{DATA}", f"Workflow-CI/MLProject/{DATA}", f"{SUB}/Membangun_model/{DATA}"):
        assert dataset_digests(exported / folder) == committed, folder
    assert (exported / EKS / "adult_raw" / "adult.csv").read_bytes() == (ROOT / "data/adult_raw/adult.csv").read_bytes()


def test_zip_holds_exactly_the_submission_folder(exported):
    with zipfile.ZipFile(exported / f"{SUB}.zip") as zf:
        names = set(zf.namelist())
    on_disk = {f"{SUB}/"} | {
        f"{SUB}/{p.relative_to(exported / SUB).as_posix()}" + ("/" if p.is_dir() else "")
        for p in (exported / SUB).rglob("*")
    }
    assert names == on_disk
    assert all(name.startswith(f"{SUB}/") for name in names)
    # the empty evidence folders are in the zip as folders, with nothing inside
    for folder in (PROMETHEUS_DIR, GRAFANA_DIR, ALERTING_DIR):
        assert f"{SUB}/Monitoring dan Logging/{folder}/" in names
        assert not [n for n in names if n.startswith(f"{SUB}/Monitoring dan Logging/{folder}/") and not n.endswith("/")]


def test_missing_evidence_is_listed_with_commands_not_faked(exported):
    report = (exported / MISSING_FILE).read_text()
    for item in EVIDENCE:
        assert f"`{item}`" in report, item
        assert not any((exported / item).glob("*")) if item.endswith("/") else not (exported / item).exists()
    assert "docker compose" not in report  # compose publishes make demo's ports: never both
    grafana_items = [line for line in report.splitlines() if GRAFANA_DIR in line or ALERTING_DIR in line]
    assert len(grafana_items) == 2
    assert report.count('make demo && .venv/bin/msml evidence grafana --out "$EXPORT"') == 2
    assert not list(exported.rglob("*.jpg"))


def test_each_repository_is_committed_on_main(exported):
    for repo in (EKS, "Workflow-CI"):
        path = exported / repo
        git = lambda *a, path=path: subprocess.run(["git", "-C", str(path), *a], capture_output=True, text=True)  # noqa: E731
        assert git("rev-parse", "--abbrev-ref", "HEAD").stdout.strip() == "main"
        assert git("status", "--porcelain").stdout == ""
        assert len(git("log", "--format=%H").stdout.split()) == 1
        assert git("config", "--local", "user.name").stdout == ""  # the student's identity for their commits
        # authored and committed by the student's git identity, never by a tool
        assert git("log", "--format=%an|%ae|%cn|%ce").stdout.strip() == "|".join([*STUDENT_GIT, *STUDENT_GIT])
        assert "requirements.txt" in git("ls-files").stdout.split("\n")
        assert (
            f"git remote add origin https://github.com/{DEFAULT_GITHUB_USER}/{repo}.git"
            in (exported / "SUBMIT.md").read_text()
        )


# What reads as someone else's work to a reviewer (lower case): the generator, its paths, "do not edit" headers.
FINGERPRINTS = ("generated by", "msml export", "src/msml", "msml repository", "msml.", "do not edit by hand")
BINARY = {".gz", ".joblib", ".jpg", ".png", ".zip"}


def test_no_machine_path_and_no_generator_fingerprint_in_the_hand_in(exported):
    """Every text file of the three units and every commit message: no path of this machine, nothing naming the
    tool that wrote them, and GitHub links only to the student's own repositories (or pinned actions)."""
    machine = {str(ROOT), str(exported), "/work/", "/root/", "/tmp/", "/home/", "/usr/", sys.prefix, ".venv/bin/"}
    checked = 0
    for unit in (EKS, "Workflow-CI", SUB):
        for path in (exported / unit).rglob("*"):
            if ".git" in path.relative_to(exported).parts or not path.is_file() or path.suffix in BINARY:
                continue
            text = re.sub(r"\A#!.*\n", "", path.read_text())  # a shebang names the interpreter, not this machine
            where = path.relative_to(exported)
            assert not [m for m in machine if m in text], (where, [m for m in machine if m in text])
            assert not [f for f in FINGERPRINTS if f in text.lower()], (
                where,
                [f for f in FINGERPRINTS if f in text.lower()],
            )
            for owner in re.findall(r"https://github\.com/([\w.-]+)/", text):
                assert owner == DEFAULT_GITHUB_USER, (where, owner)
            checked += 1
        if unit != SUB:
            messages = _git(exported / unit, "log", "--format=%B").lower()
            assert not [f for f in FINGERPRINTS if f in messages], unit
    assert checked >= 20


def test_links_and_names_come_from_config(exported):
    sub = exported / SUB
    assert (sub / f"{EKS}.txt").read_text() == f"https://github.com/{DEFAULT_GITHUB_USER}/{EKS}\n"
    assert (sub / "Workflow-CI.txt").read_text() == f"https://github.com/{DEFAULT_GITHUB_USER}/Workflow-CI\n"
    # the repository's page, not its .mlflow endpoint (SUBMIT.md shows the tracking URI and the token's place)
    dagshub = (sub / "Membangun_model" / "DagsHub.txt").read_text()
    assert dagshub == f"https://dagshub.com/{DEFAULT_GITHUB_USER}/{SUB}\n"
    submit = (exported / "SUBMIT.md").read_text()
    assert f"export MLFLOW_TRACKING_URI=https://dagshub.com/{DEFAULT_GITHUB_USER}/{SUB}.mlflow" in submit
    # one ordered path: accounts and tokens, secrets before the first push, pushes, green run, DagsHub, Grafana, zip
    steps = re.findall(r"^## (\d)\. (.+)$", submit, flags=re.MULTILINE)
    assert [n for n, _ in steps] == list("1234567"), steps
    order = ["gh repo create", "gh secret set DOCKERHUB_TOKEN", "git push -u origin main", "gh run watch"]
    order += ["python modelling_tuning.py", "msml evidence grafana", f"zip -r {SUB}.zip {SUB}"]
    assert [submit.index(o) for o in order] == sorted(submit.index(o) for o in order)
    assert (
        exported / "Workflow-CI/MLProject/DockerHub.txt"
    ).read_text() == f"https://hub.docker.com/r/{DEFAULT_DOCKERHUB_USER}/adult-income-classifier\n"


def test_options_override_names(tmp_path):
    settings = load_settings(root=ROOT).with_overrides(student="Ani", github_user="ani-gh", dockerhub_user="anidh")
    write_eksperimen(settings, ROOT, tmp_path / "E")
    write_workflow_ci(settings, ROOT, tmp_path / "W")
    write_submission(settings, ROOT, tmp_path / "S")
    assert (tmp_path / "E/preprocessing/automate_Ani.py").is_file()
    notebook = (tmp_path / "E/preprocessing/Eksperimen_Ani.ipynb").read_text()
    assert "automate_Ani.py" in notebook and f"automate_{S}" not in notebook
    assert "python preprocessing/automate_Ani.py" in (tmp_path / "E/.github/workflows/preprocessing.yml").read_text()
    from msml.handin.submit import submit_text

    submit = submit_text(settings)
    assert "gh repo create ani-gh/Eksperimen_SML_Ani --public" in submit and "--body anidh" in submit
    assert (tmp_path / "S/Eksperimen_SML_Ani.txt").read_text() == "https://github.com/ani-gh/Eksperimen_SML_Ani\n"
    assert "IMAGE: anidh/adult-income-classifier" in (tmp_path / "W/.github/workflows/training.yml").read_text()
    assert (
        tmp_path / "W/MLProject/DockerHub.txt"
    ).read_text() == "https://hub.docker.com/r/anidh/adult-income-classifier\n"


def test_workflows_lint_clean_and_fit_their_repository(exported):
    workflows = sorted(exported.glob("*/.github/workflows/*.yml"))
    assert [w.relative_to(exported).as_posix() for w in workflows] == [
        f"{EKS}/.github/workflows/preprocessing.yml",
        "Workflow-CI/.github/workflows/training.yml",
    ]
    assert lint_workflows(workflows) == []
    for workflow in workflows:
        repo = workflow.parents[2]
        spec = yaml.safe_load(workflow.read_text())
        for pattern in spec[True]["push"]["paths"]:  # PyYAML reads the key `on` as True
            first = pattern.lstrip("!").split("/")[0].replace("**", "")
            assert (repo / first).exists(), f"{workflow.name}: trigger path {pattern} matches nothing in {repo.name}"
        text = workflow.read_text()
        assert "pip install -r requirements.txt" in text
    pre = (exported / EKS / ".github/workflows/preprocessing.yml").read_text()
    assert f"python preprocessing/automate_{S}.py" in pre and "[skip ci]" in pre
    assert f"PROCESSED_DIR: preprocessing/{DATA}" in pre
    train = (exported / "Workflow-CI/.github/workflows/training.yml").read_text()
    for needle in (
        "mlflow run MLProject -e tune",
        "run_info.json",
        "mlflow models build-docker",
        "docker/login-action@",
        "secrets.DOCKERHUB_TOKEN",
        "actions/upload-artifact@",
    ):
        assert needle in train, needle


def test_requirements_are_per_folder_and_pinned_from_the_lock(exported):
    """Each folder's own requirements.txt (derived from its imports: tests/unit/test_course_files.py), every pin at
    the runtime lock's version, PyPI only (no msml, no wheel, no vendored code)."""
    locked = {}
    for line in (ROOT / "requirements" / "runtime.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            locked[name.lower().replace("_", "-")] = version
    folders = [EKS, "Workflow-CI", f"{SUB}/Membangun_model", f"{SUB}/Monitoring dan Logging"]
    pins = {}
    for folder in folders:
        lines = [x for x in (exported / folder / "requirements.txt").read_text().splitlines() if x and x[0] != "#"]
        pins[folder] = dict(line.split("==") for line in lines)
        for name, version in pins[folder].items():
            assert locked.get(name.lower().replace("_", "-")) == version, (folder, name)
        assert "msml" not in pins[folder]
    assert {"mlflow", "scikit-learn", "optuna", "sqlalchemy"} <= set(pins["Workflow-CI"])
    assert set(pins[f"{SUB}/Monitoring dan Logging"]) == {"numpy", "pandas", "prometheus-client"}
    assert "mlflow" not in pins[EKS]
    assert not list(exported.rglob("*.whl")) and not list(exported.rglob("vendor"))
    conda = yaml.safe_load((exported / "Workflow-CI/MLProject/conda.yaml").read_text())
    assert conda["name"] == "Workflow-CI" and conda["dependencies"][0] == "python=3.11"
    # one Python stated everywhere: the lock's (compiled for 3.11), the notebook's kernel, conda, the workflows
    notebook = json.loads((exported / EKS / f"preprocessing/Eksperimen_{S}.ipynb").read_text())
    assert notebook["metadata"]["language_info"]["version"].startswith("3.11.")
    stated = re.findall(r'python-version: "([\d.]+)"', "".join(p.read_text() for p in exported.rglob("*.yml")))
    assert stated and set(stated) == {"3.11"}
    assert conda["dependencies"][-1]["pip"] == [f"{n}=={v}" for n, v in pins["Workflow-CI"].items()]
    mlproject = yaml.safe_load((exported / "Workflow-CI/MLProject/MLproject").read_text())
    assert mlproject["entry_points"]["main"]["command"].startswith("python modelling.py ")
    assert mlproject["entry_points"]["tune"]["command"].startswith("python modelling_tuning.py ")
    for entry in ("main", "tune"):
        assert mlproject["entry_points"][entry]["parameters"]["data_path"]["default"] == DATA


def test_exported_course_files_are_the_generated_ones(exported):
    """What the export writes is exactly `course_files` (checked statically in tests/unit/test_course_files.py)."""
    files = course_files(load_settings(root=ROOT), ROOT)
    places = {
        f"{EKS}/preprocessing/automate_{S}.py": f"automate_{S}.py",
        "Workflow-CI/MLProject/modelling.py": "modelling.py",
        "Workflow-CI/MLProject/modelling_tuning.py": "modelling_tuning.py",
        f"{SUB}/Membangun_model/modelling.py": "modelling.py",
        f"{SUB}/Membangun_model/modelling_tuning.py": "modelling_tuning.py",
        f"{SUB}/Monitoring dan Logging/{EXPORTER}": EXPORTER,
        f"{SUB}/Monitoring dan Logging/{INFERENCE}": INFERENCE,
    }
    for rel, name in places.items():
        assert (exported / rel).read_text() == files[name], rel
    notebook = json.loads((exported / EKS / f"preprocessing/Eksperimen_{S}.ipynb").read_text())
    code = "\n".join("".join(c["source"]) for c in notebook["cells"] if c["cell_type"] == "code")
    assert 'RAW_PATH = "../adult_raw/adult.csv"' in code and "data/adult_raw" not in code
    assert f'AUTOMATE = "automate_{S}.py"' in code


# --- the course files in a fresh virtualenv: exported requirements.txt only ------------------------------------


@background.job("course_env")
def make_course_env(base: Path):
    """One venv per session with only the exported requirements.txt (pip, as the student installs), and temp copies
    of the units, from an export of its own (the same command as `exported`'s). Made beside the other tests
    (tests/background.py): the install is a minute of pip.

    Returns (python, env, work): `env` has no MLFLOW_*/MSML_* variables and the venv's bin first on PATH.
    """
    exported = base / "dist"
    result = run_msml("export", "--out", str(exported), "--no-evidence")
    assert result.returncode == 0, result.stdout + result.stderr
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "MSML_", "VIRTUAL_ENV", "PYTHON"))}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    # one OpenMP thread: on a loaded 2-core machine HistGradientBoosting's spinning threads made a 2-trial
    # tuning run take > 10 min wall (measured), single-threaded it took 2 min
    env["OMP_NUM_THREADS"] = "1"
    # each folder's own requirements.txt, all into this one venv (pinned from the same lock, so they agree)
    folders = [EKS, "Workflow-CI", f"{SUB}/Membangun_model", f"{SUB}/Monitoring dan Logging"]
    result = subprocess.run(
        [str(py), "-m", "pip", "install", "-q", *(a for f in folders for a in ("-r", f"{f}/requirements.txt"))],
        cwd=exported,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    missing = subprocess.run([str(py), "-c", "import msml"], env=env, capture_output=True, text=True)
    assert missing.returncode != 0, "msml must not be importable in the course venv"
    work = base / "work"
    for unit in (EKS, "Workflow-CI", SUB):
        shutil.copytree(exported / unit, work / unit)
    return py, env, work


@pytest.fixture(scope="module")
def course_env(tmp_path_factory):
    return background.result("course_env", lambda: tmp_path_factory.mktemp("course-venv"))


def _run(course_env, cmd, cwd, timeout=600, **extra):
    _, env, _ = course_env
    result = subprocess.run(cmd, cwd=cwd, env={**env, **extra}, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{cmd} exited {result.returncode}:\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
    return result


def test_automate_writes_exactly_what_msml_preprocess_writes(course_env, processed):
    py, _, work = course_env
    out = work / "automate-out"
    _run(course_env, [str(py), f"preprocessing/automate_{S}.py", "--out", str(out)], cwd=work / EKS)
    assert dataset_digests(out) == dataset_digests(processed)


def _metrics(store: str, run_id: str) -> dict[str, float]:
    import mlflow

    return mlflow.MlflowClient(store).get_run(run_id).data.metrics


@background.job("baseline_run")
def make_baseline_run(tmp: Path):
    """modelling.py in the course venv against its own sqlite store; returns (store, run info). After
    `course_env` in the background lane (tests/background.py), which it waits for."""
    course_env = background.result("course_env", None)
    _py, _, work = course_env
    store = f"sqlite:///{tmp / 'm.db'}"
    _run(
        course_env,
        [str(_py), "modelling.py", "--run-info", str(tmp / "baseline.json")],
        cwd=work / SUB / "Membangun_model",
        MLFLOW_TRACKING_URI=store,
    )
    return store, json.loads((tmp / "baseline.json").read_text())


@pytest.fixture(scope="module")
def baseline_run(course_env, tmp_path_factory):
    return background.result("baseline_run", lambda: tmp_path_factory.mktemp("modelling"))


def test_modelling_autolog_metrics_equal_msml_train(baseline_run, registered_model):
    """The session's registered model is an `msml.training.train.train_baseline` run on the same processed data with the
    default seed (tests/conftest.py): its logged metrics are what `msml train` logs."""
    store, info = baseline_run
    course = _metrics(store, info["run_id"])
    package = _metrics(registered_model.tracking_uri, registered_model.run_id)
    autolog = {k: v for k, v in package.items() if k.startswith("training_")}
    assert len(autolog) >= 7
    assert {k: course[k] for k in autolog} == pytest.approx(autolog, rel=1e-9)
    assert course["test_roc_auc"] == pytest.approx(package["test_roc_auc"], rel=1e-9)
    import mlflow

    params = mlflow.MlflowClient(store).get_run(info["run_id"]).data.params
    assert params["max_iter"] == "2000" and "C" in params  # autolog recorded the estimator's parameters


def test_modelling_tuning_logs_autolog_names_and_artifacts(course_env, baseline_run, tmp_path):
    import mlflow

    py, _, work = course_env
    store_path = tmp_path / "t.db"
    _run(
        course_env,
        [
            str(py),
            "modelling_tuning.py",
            "--n-trials",
            "2",
            "--cv-folds",
            "2",
            "--max-iter",
            "50",
            "--run-info",
            str(tmp_path / "tune.json"),
        ],
        cwd=work / SUB / "Membangun_model",
        timeout=900,
        MLFLOW_TRACKING_URI=f"sqlite:///{store_path}",
    )
    info = json.loads((tmp_path / "tune.json").read_text())
    client = mlflow.MlflowClient(f"sqlite:///{store_path}")
    run = client.get_run(info["run_id"])
    baseline_store, baseline = baseline_run
    autolog_names = {k for k in _metrics(baseline_store, baseline["run_id"]) if k.startswith("training_")}
    assert autolog_names <= set(run.data.metrics), autolog_names - set(run.data.metrics)
    assert run.data.params["n_trials"] == "2" and run.data.params["best_max_iter"] == "50"
    artifacts = {
        a.path
        for top in client.list_artifacts(run.info.run_id)
        for a in ([top] if not top.is_dir else client.list_artifacts(run.info.run_id, top.path))
    }
    extra = artifacts - {"model"}
    assert len([a for a in extra if not a.startswith("model/")]) >= 2, artifacts
    assert "model" in {a.path for a in client.list_artifacts(run.info.run_id)}
    children = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{run.info.run_id}'")
    assert len(children) == 2 and all("cv_roc_auc_mean" in c.data.metrics for c in children)
    assert {c.info.status for c in children} == {"FINISHED"} and run.info.status == "FINISHED"  # no red run


def test_mlflow_run_mlproject_main(course_env, baseline_run, tmp_path):
    _py, _, work = course_env
    run_info = tmp_path / "project.json"
    result = _run(
        course_env,
        [
            "mlflow",
            "run",
            "MLProject",
            "-e",
            "main",
            "--env-manager",
            "local",
            "--experiment-name",
            "adult-classification",
            "-P",
            f"run_info={run_info}",
        ],
        cwd=work / "Workflow-CI",
        MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'w.db'}",
    )
    project = json.loads(run_info.read_text())
    assert f"Run (ID '{project['run_id']}') succeeded" in result.stderr
    store, baseline = baseline_run
    assert project["metrics"]["training_roc_auc"] == pytest.approx(
        _metrics(store, baseline["run_id"])["training_roc_auc"]
    )


def test_exporter_and_inference_against_a_served_model(course_env, baseline_run, tmp_path):
    """mlflow models serve (course venv) <- 3.prometheus_exporter.py <- 7.inference.py; /metrics counts those rows."""
    import httpx

    from tests.integration.serving_fixtures import free_port

    py, env, work = course_env
    store, baseline = baseline_run
    monitoring = work / SUB / "Monitoring dan Logging"
    model_port, exporter_port = free_port(), free_port()
    logs = []
    procs = []
    try:
        for cmd, port in (
            (
                [
                    str(py.parent / "mlflow"),
                    "models",
                    "serve",
                    "-m",
                    baseline["model_uri"],
                    "-p",
                    str(model_port),
                    "-h",
                    "127.0.0.1",
                    "--env-manager",
                    "local",
                    "-w",
                    "1",
                ],
                model_port,
            ),
            (
                [str(py), EXPORTER, "--port", str(exporter_port), "--model-url", f"http://127.0.0.1:{model_port}"],
                exporter_port,
            ),
        ):
            log = (tmp_path / f"{port}.log").open("w")
            logs.append(log)
            procs.append(
                subprocess.Popen(
                    cmd, cwd=monitoring, env={**env, "MLFLOW_TRACKING_URI": store}, stdout=log, stderr=subprocess.STDOUT
                )
            )
            _wait_ok(f"http://127.0.0.1:{port}/ping", procs[-1], tmp_path / f"{port}.log")
        out = _run(
            course_env,
            [
                str(py),
                INFERENCE,
                "--url",
                f"http://127.0.0.1:{exporter_port}",
                "--phases",
                "normal,invalid,wrong-feedback",
                "--count",
                "30",
                "--batch",
                "10",
                "--rate",
                "50",
                "--data",
                str(work / SUB / "Membangun_model" / DATA),
            ],
            cwd=monitoring,
        )
        assert "--- phase normal: 3 requests, 30 rows, accuracy" in out.stdout
        assert "--- phase invalid: 3 requests, 30 rows, none scored, 0 failed" in out.stdout
        bad = httpx.post(
            f"http://127.0.0.1:{exporter_port}/invocations", json={"dataframe_records": [{"age": "old"}]}, timeout=10
        )
        assert bad.status_code == 422 and bad.json()["details"][0] == {"row": 0, "field": "age", "reason": "wrong_type"}
        assert httpx.post(f"http://127.0.0.1:{exporter_port}/invocations", content=b"{", timeout=10).status_code == 400
        metrics = httpx.get(f"http://127.0.0.1:{exporter_port}/metrics", timeout=10).text
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(timeout=30)
        for log in logs:
            log.close()
    from prometheus_client.parser import text_string_to_metric_families

    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(metrics)
        for s in family.samples
    }
    assert samples[("msml_rows_scored_total", ())] == 60  # normal + wrong-feedback; the invalid rows were refused
    assert samples[("msml_batch_rows_count", ())] == 6
    assert samples[("msml_requests_total", (("endpoint", "/invocations"), ("status", "200")))] == 6
    assert samples[("msml_requests_total", (("endpoint", "/invocations"), ("status", "422")))] == 4
    assert samples[("msml_requests_total", (("endpoint", "/feedback"), ("status", "200")))] == 6
    required = [c for c in Contract.load().columns if not c.nullable]
    # one per invalid row, then the bad request's: age wrong_type and every other required feature missing
    assert sum(v for (name, _), v in samples.items() if name == "msml_validation_failures_total") == 30 + len(required)
    assert sum(v for (name, _), v in samples.items() if name == "msml_predictions_total") == 60
    feedback = {dict(k)["outcome"]: v for (name, k), v in samples.items() if name == "msml_feedback_total"}
    assert sum(feedback.values()) == 60 and 0 < samples[("msml_live_accuracy_ratio", ())] < 1
    assert samples[("msml_live_accuracy_ratio", ())] == pytest.approx(feedback.get("correct", 0) / 60)
    assert samples[("msml_drift_window_rows", ())] == 60  # PSI itself is exported from 400 rows on
    assert samples[("msml_model_up", ())] == 1
    assert ("process_resident_memory_bytes", ()) in samples


def _wait_ok(url: str, proc, log, timeout: float = 120) -> None:
    import time

    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{url}: process exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} not ready in {timeout} s:\n{log.read_text()[-3000:]}")


# --- re-export and safety -----------------------------------------------------------------------------------------


def _git(path, *args):
    result = subprocess.run(["git", "-C", str(path), *args], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_a_second_export_into_pushed_clones_adds_a_commit_that_fast_forwards(exported, tmp_path):
    """The student pushed the first export, cloned it back, exports again (another Docker Hub user): the clone gets
    one new commit on top of the pushed one, and `git push` fast-forwards the remote."""
    dist = tmp_path / "dist"
    remotes = {}
    for repo in (EKS, "Workflow-CI"):
        remotes[repo] = tmp_path / f"{repo}.git"
        subprocess.run(["git", "clone", "-q", "--bare", str(exported / repo), str(remotes[repo])], check=True)
        subprocess.run(["git", "clone", "-q", str(remotes[repo]), str(dist / repo)], check=True)
    (dist / "Workflow-CI" / "stale.txt").write_text("a file the new export does not write")
    first = {repo: _git(dist / repo, "rev-parse", "HEAD") for repo in remotes}
    result = run_msml(
        "export",
        "--out",
        str(dist),
        "--no-evidence",
        "--dockerhub-user",
        "other-user",
        "--author",
        "Ani <ani@example.com>",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for repo in remotes:
        clone = dist / repo
        assert _git(clone, "status", "--porcelain") == ""
        if repo == "Workflow-CI":  # its workflow names the new Docker Hub user: one commit on top of the pushed one
            assert _git(clone, "rev-parse", "HEAD~1") == first[repo]
        else:  # nothing of it changed: no empty commit
            assert _git(clone, "rev-parse", "HEAD") == first[repo]
        assert _git(clone, "remote", "get-url", "origin") == str(remotes[repo])  # the clone stays a clone
        push = subprocess.run(["git", "-C", str(clone), "push", "origin", "main"], capture_output=True, text=True)
        assert push.returncode == 0 and "rejected" not in push.stderr, push.stderr
        assert _git(remotes[repo], "rev-parse", "main") == _git(clone, "rev-parse", "HEAD")
    assert not (dist / "Workflow-CI" / "stale.txt").exists()
    assert _git(dist / "Workflow-CI", "log", "-1", "--format=%an <%ae>") == "Ani <ani@example.com>"  # --author
    assert "IMAGE: other-user/" in (dist / "Workflow-CI/.github/workflows/training.yml").read_text()


def test_bad_names_are_refused_with_one_clear_line(tmp_path):
    result = run_msml(
        "export", "--out", str(tmp_path / "dist"), "--no-evidence", "--student", "Yudha Elfransyah", timeout=120
    )
    assert result.returncode != 0
    assert result.stderr.strip() == (
        "error: --student 'Yudha Elfransyah' is not a valid name: use only letters, digits, '-' and '_'"
    )
    assert not (tmp_path / "dist").exists()
    settings = load_settings(root=ROOT)
    for field, option, value in (
        ("github_user", "--github-user", "../x"),
        ("dockerhub_user", "--dockerhub-user", "a;b"),
        ("student", "--student", ""),
    ):
        with pytest.raises(ExportError, match=f"^{option} {re.escape(repr(value))} is not a valid name"):
            check_names(settings.with_overrides(**{field: value}))
    check_names(settings.with_overrides(student="Ani_2", github_user="ani-gh"))  # letters, digits, - and _ pass
    out = tmp_path / "dist"
    bad = run_msml("export", "--out", str(out), "--no-evidence", "--author", "Ani")
    assert bad.returncode != 0 and bad.stderr.strip() == "error: --author 'Ani' is not 'Your Name <you@example.com>'"
    nobody = {"GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}  # a machine where git knows no one
    anonymous = run_msml("export", "--out", str(out), "--no-evidence", env=nobody)
    assert anonymous.returncode != 0 and "no git identity for the exported commits" in anonymous.stderr
    assert "--author" in anonymous.stderr and not out.exists()


def test_only_the_raw_file_and_the_listed_processed_outputs_are_copied(tmp_path):
    from msml.data.preprocessing import OUTPUT_FILES

    raw_dir, processed = tmp_path / "raw", tmp_path / "processed"
    shutil.copytree(ROOT / "data" / "adult_raw", raw_dir)
    shutil.copytree(ROOT / "data" / DATA, processed)
    for folder in (raw_dir, processed):
        (folder / "credentials.env").write_text("TOKEN=not-for-export\n")
        (folder / "scratch").mkdir()
        (folder / "scratch" / "big.bin").write_bytes(b"x")
    settings = load_settings(root=ROOT).with_overrides(raw_path=raw_dir / "adult.csv", processed_dir=processed)
    _copy_raw(settings, tmp_path / "out_raw")
    _copy_processed(settings, tmp_path / "out_processed")
    assert {p.name for p in (tmp_path / "out_raw").iterdir()} == {"adult.csv", "README.md"}
    assert {p.name for p in (tmp_path / "out_processed").iterdir()} == set(OUTPUT_FILES) == PROCESSED_FILES
    (processed / "train.csv.gz").unlink()
    with pytest.raises(ExportError, match=r"missing train\.csv\.gz"):
        _copy_processed(settings, tmp_path / "again")
