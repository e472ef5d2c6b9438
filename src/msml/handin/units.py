"""The three units of the hand-in, written file by file: Eksperimen_SML_<student>/, Workflow-CI/, SMSML_<student>/.

Each folder that holds runnable files gets a requirements.txt derived from what those files import
(`msml.handin.requirements`); data are copied (the raw file, exactly the files `msml preprocess` writes).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from msml.config import Settings
from msml.errors import ExportError
from msml.handin import requirements as reqs
from msml.handin.course import course_files, export_notebook, template, template_values
from msml.handin.names import (
    ALERTING_DIR,
    COMMIT_ARTIFACTS,
    DAGSHUB_FILE,
    EXPORTER,
    GRAFANA_DIR,
    INFERENCE,
    MEMBANGUN,
    MODELLING,
    MODELLING_TUNING,
    MONITORING,
    PROMETHEUS_DIR,
    REQUIREMENTS,
    WORKFLOW_CI,
    automate_name,
    eksperimen_name,
    notebook_name,
    processed_dir,
    raw_dir,
    submission_name,
)

RUN_INFO = "../ci-output/run_info.json"  # relative to MLProject/ (CI passes an absolute path)
GITIGNORE = "__pycache__/\n.ipynb_checkpoints/\nmlflow.db\nmlartifacts/\nmlruns/\nci-output/\n.venv/\n"


def github_url(user: str, repo: str) -> str:
    return f"https://github.com/{user}/{repo}"


def dagshub_repo(settings: Settings) -> str:
    """The DagsHub repository the tuning run logs to (a new DagsHub repository, named after the submission)."""
    return submission_name(settings.student)


def dagshub_url(user: str, repo: str) -> str:
    """The DagsHub repository's page (what DagsHub.txt hands in)."""
    return f"https://dagshub.com/{user}/{repo}"


def dagshub_tracking_uri(user: str, repo: str) -> str:
    """The MLflow tracking server of that repository (MLFLOW_TRACKING_URI)."""
    return dagshub_url(user, repo) + ".mlflow"


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def write_requirements(folder: Path, root: Path, what: str) -> list[str]:
    """requirements.txt of `folder`: the distributions its files import (and mlflow's runtime pins), from the lock."""
    from msml.ops.project import RUNTIME_LOCK, read_lock

    lock_path = root / RUNTIME_LOCK
    if not lock_path.is_file():
        raise ExportError(f"runtime lock not found: {lock_path} (run `make lock`)")
    pins = reqs.requirements(reqs.folder_imports(folder), read_lock(lock_path))
    _write(folder / REQUIREMENTS, reqs.requirements_text(pins, what))
    return pins


def write_eksperimen(settings: Settings, root: Path, repo: Path) -> None:
    name, student = settings.dataset, settings.student
    values = template_values(settings, root)
    course = course_files(settings, root)
    _copy_raw(settings, repo / raw_dir(name))
    notebooks = sorted((root / "notebooks").glob("Eksperimen_*.ipynb"))
    if not notebooks:
        raise ExportError(f"no notebooks/Eksperimen_*.ipynb in {root}")
    export_notebook(notebooks[0], repo / "preprocessing" / notebook_name(student), settings)
    _write(repo / "preprocessing" / automate_name(student), course[automate_name(student)])
    _copy_processed(settings, repo / "preprocessing" / processed_dir(name))
    _write(repo / ".github" / "workflows" / "preprocessing.yml", template("preprocessing.yml.tmpl", values))
    write_requirements(repo, root, f"the notebook and {automate_name(student)}")
    _write(repo / ".gitignore", GITIGNORE)
    _write(repo / "README.md", template("README_eksperimen.md.tmpl", {**values, "repo": eksperimen_name(student)}))


def write_workflow_ci(settings: Settings, root: Path, repo: Path) -> None:
    from msml.ops.project import (
        CONDA_FILE,
        DOCKERHUB_FILE,
        HEADER,
        MLPROJECT_FILE,
        PROJECT_DIR,
        render_dockerhub_link,
        render_mlproject,
    )

    name = settings.dataset
    values = {**template_values(settings, root), "dockerhub_file": DOCKERHUB_FILE}
    project = repo / PROJECT_DIR
    mlproject = render_mlproject(
        settings,
        data_path=processed_dir(name),
        run_info=RUN_INFO,
        train_command=f"python {MODELLING}",
        tune_command=f"python {MODELLING_TUNING}",
    ).replace(HEADER, "# The MLflow Project: `main` trains the baseline (autolog), `tune` the Optuna search.\n", 1)
    _write(project / MLPROJECT_FILE, mlproject)
    _write(project / DOCKERHUB_FILE, render_dockerhub_link(settings))
    course = course_files(settings, root)
    _write(project / MODELLING, course[MODELLING])
    _write(project / MODELLING_TUNING, course[MODELLING_TUNING])
    _copy_processed(settings, project / processed_dir(name))
    pins = write_requirements(repo, root, f"{PROJECT_DIR}/{MODELLING} and {PROJECT_DIR}/{MODELLING_TUNING}")
    _write(project / CONDA_FILE, reqs.conda_env(WORKFLOW_CI, pins))
    _write(repo / ".github" / "workflows" / "training.yml", template("training.yml.tmpl", values))
    _write(repo / COMMIT_ARTIFACTS, template("commit_artifacts.sh.tmpl", values))
    _write(repo / ".gitignore", GITIGNORE)
    _write(repo / "README.md", template("README_workflow_ci.md.tmpl", values))


def write_submission(settings: Settings, root: Path, folder: Path) -> None:
    from msml.handin.prometheus import prometheus_files

    student, user = settings.student, settings.github_user
    _write(folder / f"{eksperimen_name(student)}.txt", github_url(user, eksperimen_name(student)) + "\n")
    _write(folder / f"{WORKFLOW_CI}.txt", github_url(user, WORKFLOW_CI) + "\n")

    course = course_files(settings, root)
    model = folder / MEMBANGUN
    _write(model / MODELLING, course[MODELLING])
    _write(model / MODELLING_TUNING, course[MODELLING_TUNING])
    _copy_processed(settings, model / processed_dir(settings.dataset))
    write_requirements(model, root, f"{MODELLING} and {MODELLING_TUNING}")
    _write(model / DAGSHUB_FILE, dagshub_url(user, dagshub_repo(settings)) + "\n")

    monitoring = folder / MONITORING
    for name, text in prometheus_files().items():
        _write(monitoring / name, text)
    _write(monitoring / EXPORTER, course[EXPORTER])
    _write(monitoring / INFERENCE, course[INFERENCE])
    write_requirements(monitoring, root, f"{EXPORTER} and {INFERENCE}")
    for sub in (PROMETHEUS_DIR, GRAFANA_DIR, ALERTING_DIR):
        (monitoring / sub).mkdir(parents=True, exist_ok=True)


def _copy_processed(settings: Settings, target: Path) -> None:
    """Copy exactly the files `msml preprocess` writes (preprocessing.OUTPUT_FILES), nothing else of the folder."""
    from msml.data.preprocessing import OUTPUT_FILES

    source = settings.processed_dir
    absent = [name for name in OUTPUT_FILES if not (source / name).is_file()]
    if absent:
        raise ExportError(
            f"no complete processed dataset in {source} (missing {', '.join(absent)}): run `msml preprocess` first"
        )
    target.mkdir(parents=True, exist_ok=True)
    for name in OUTPUT_FILES:
        shutil.copy2(source / name, target / name)


def _copy_raw(settings: Settings, target: Path) -> None:
    """Copy the contract's raw file (and the data card README.md beside it, when there is one), nothing else."""
    if not settings.raw_path.is_file():
        raise ExportError(f"raw data file not found: {settings.raw_path}")
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy2(settings.raw_path, target / settings.raw_path.name)
    card = settings.raw_path.parent / "README.md"
    if card.is_file():  # the data card, its references to this repository's layout rewritten for the export's
        automate = f"`preprocessing/{automate_name(settings.student)}`"
        text = re.sub(r"`src/msml/data/contracts/[\w.-]+`", f"the `COLUMNS` of {automate}", card.read_text())
        text = text.replace("Everything under `data/` other than this folder", "Everything under `preprocessing/`")
        _write(target / card.name, text.replace("`msml preprocess`", automate))
