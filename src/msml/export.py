"""`msml export`: write the course's three repositories and the submission folder from this repository.

```
<out>/Eksperimen_SML_<student>/   git repo: .github/workflows/preprocessing.yml, <dataset>_raw/,
                                  preprocessing/{Eksperimen_<student>.ipynb, automate_<student>.py, <dataset>_preprocessing/}
<out>/Workflow-CI/                git repo: .github/workflows/training.yml,
                                  MLProject/{MLproject, conda.yaml, modelling.py, <dataset>_preprocessing/, DockerHub.txt}
<out>/SMSML_<student>/            Eksperimen_SML_<student>.txt, Workflow-CI.txt, Membangun_model/, Monitoring dan Logging/
<out>/SMSML_<student>.zip         the submission folder
<out>/MISSING_EVIDENCE.md         what could not be produced here, each with the command that produces it
```

Nothing is maintained twice: the course's scripts are thin entry points (templates in
`templates/export/`) onto this package, which travels with every exported unit as a wheel in
`vendor/`, next to a `requirements.txt` of the exact locked versions of its runtime dependency
closure; MLproject and conda.yaml come from `msml.project`, prometheus.yml from
`msml.monitoring.render`, the workflows from templates with this repository's pinned actions.
Evidence images come only from running servers (`msml.evidence`); what is not running is listed.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from msml.config import Settings

TEMPLATES = Path(__file__).parent / "templates" / "export"
WORKFLOW_CI = "Workflow-CI"
MEMBANGUN = "Membangun_model"
MONITORING = "Monitoring dan Logging"
SERVING_IMAGE = "1.bukti_serving.jpg"
PROMETHEUS_YML = "2.prometheus.yml"
EXPORTER = "3.prometheus_exporter.py"
PROMETHEUS_DIR = "4.bukti monitoring Prometheus"
GRAFANA_DIR = "5.bukti monitoring Grafana"
ALERTING_DIR = "6.bukti alerting Grafana"
INFERENCE = "7.inference.py"
VENDOR = "vendor"
REQUIREMENTS = "requirements.txt"
MISSING_FILE = "MISSING_EVIDENCE.md"
RUN_INFO = "../ci-output/run_info.json"  # relative to MLProject/ (CI passes an absolute path)
GIT_AUTHOR = ("msml export", "msml-export@users.noreply.github.com")
DEFAULT_MODEL_URL = "http://127.0.0.1:5001"
DEFAULT_GATEWAY_URL = "http://127.0.0.1:8000"
DEFAULT_PROMETHEUS_URL = "http://127.0.0.1:9090"
DEFAULT_GRAFANA_URL = "http://127.0.0.1:3000"
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", ".ipynb_checkpoints")
GITIGNORE = "__pycache__/\n.ipynb_checkpoints/\nmlflow.db\nmlartifacts/\nmlruns/\nci-output/\n.venv/\n"


from msml.errors import ExportError  # noqa: E402,F401  (exit code 7; see msml.errors)


def eksperimen_name(student: str) -> str:
    return f"Eksperimen_SML_{student}"


def submission_name(student: str) -> str:
    return f"SMSML_{student}"


def github_url(user: str, repo: str) -> str:
    return f"https://github.com/{user}/{repo}"


def dagshub_url(user: str, repo: str) -> str:
    return f"https://dagshub.com/{user}/{repo}.mlflow"


@dataclass(frozen=True)
class Missing:
    """One evidence file or folder the export could not produce from a running system."""

    path: str  # relative to the export's out dir
    what: str
    command: str


@dataclass
class ExportResult:
    out: Path
    repositories: dict[str, Path]
    submission: Path
    archive: Path
    missing: list[Missing] = field(default_factory=list)
    evidence: list[Path] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


# --- templates and generated text ---------------------------------------------------------------------------

def fill(text: str, values: dict[str, object]) -> str:
    """Replace every `<<key>>` in `text`; an unknown key is an error, not a silent blank."""
    def substitute(match: re.Match) -> str:
        key = match.group(1)
        if key not in values:
            raise KeyError(f"template key <<{key}>> has no value")
        return str(values[key])

    return re.sub(r"<<([\w-]+)>>", substitute, text)


def template(name: str, values: dict[str, object]) -> str:
    return fill((TEMPLATES / name).read_text(), values)


def pinned_actions(root: Path) -> dict[str, str]:
    """{action short name: `owner/name@sha # vX`} from this repository's workflows (one place pins them)."""
    pins = {}
    for path in sorted((root / ".github" / "workflows").glob("*.yml")):
        for match in re.finditer(r"uses:\s*(\S+?/(\S+?))@([0-9a-f]{40})\s*#\s*(\S+)", path.read_text()):
            full, short, sha, version = match.groups()
            pins[short] = f"{full}@{sha} # {version}"
    return pins


def template_values(settings: Settings, root: Path) -> dict[str, object]:
    from msml.project import CI_TRIALS

    return {
        "student": settings.student, "dataset": settings.dataset, "experiment": settings.experiment,
        "model_name": settings.model_name, "image": settings.image, "trials": CI_TRIALS,
        **pinned_actions(root),
    }


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked_versions(root: Path) -> dict[str, tuple[str, str]]:
    """{normalised name: (name, version)} of requirements.lock."""
    locked = {}
    for line in (root / "requirements.lock").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = (part.strip() for part in line.split("==", 1))
            locked[_normalise(name)] = (name, version)
    return locked


def runtime_requirements(root: Path) -> list[str]:
    """`name==version` for the whole runtime dependency closure of pyproject's dependencies (not the dev tools).

    The closure is walked through the installed distributions' metadata (extras followed, markers
    evaluated for this interpreter); every version comes from requirements.lock when it is locked there.
    """
    from importlib.metadata import PackageNotFoundError, distribution

    from packaging.requirements import Requirement

    locked = locked_versions(root)
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    todo = [Requirement(spec.split("#", 1)[0].strip()) for spec in project["dependencies"]]
    seen: set[tuple[str, frozenset]] = set()
    pins: dict[str, str] = {}
    while todo:
        req = todo.pop()
        key = (_normalise(req.name), frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = distribution(req.name)
        except PackageNotFoundError:
            raise ExportError(f"{req.name} is needed at runtime but not installed in this environment") from None
        name, version = locked.get(key[0], (dist.metadata["Name"], dist.version))
        pins[key[0]] = f"{name}=={version}"
        for text in dist.requires or []:
            sub = Requirement(text)
            if sub.marker and not any(sub.marker.evaluate({"extra": extra}) for extra in (req.extras or {""})):
                continue
            todo.append(sub)
    return [pins[k] for k in sorted(pins)]


def requirements_text(pins: list[str], wheel: str) -> str:
    return ("# Generated by `msml export`: msml (the wheel in vendor/) and the exact versions of its runtime\n"
            "# dependencies, from the msml repository's requirements.lock. Install from this folder:\n"
            "#   python -m pip install -r requirements.txt\n"
            + "\n".join(pins) + f"\n./{VENDOR}/{wheel}\n")


def build_wheel(root: Path, dest: Path) -> Path:
    """`pip wheel` of this package, built from a clean copy (no build/ or egg-info left in the repository)."""
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="msml-wheel-") as tmp:
        src = Path(tmp) / "msml"
        src.mkdir()
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(root / name, src / name)
        shutil.copytree(root / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dest), str(src)],
                                capture_output=True, text=True, cwd=tmp)
        if result.returncode != 0:
            raise ExportError(f"building the msml wheel failed:\n{result.stdout}{result.stderr}")
    wheels = sorted(dest.glob("msml-*.whl"))
    if len(wheels) != 1:
        raise ExportError(f"expected one msml wheel in {dest}, found {[w.name for w in wheels]}")
    return wheels[0]


def export_notebook(source: Path, target: Path, settings: Settings) -> None:
    """The experiment notebook, its paths rewritten for the exported layout (raw data one folder up)."""
    text = source.read_text()
    name = settings.dataset
    for old, new in ((f"../data/{name}_raw/", f"../{name}_raw/"),
                     (f"data/{name}_preprocessing/", f"preprocessing/{name}_preprocessing/"),
                     (f"data/{name}_raw/", f"{name}_raw/")):
        text = text.replace(old, new)
    _write(target, text)


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _vendor(wheel: Path, unit: Path, pins: list[str]) -> None:
    (unit / VENDOR).mkdir(parents=True, exist_ok=True)
    shutil.copy2(wheel, unit / VENDOR / wheel.name)
    _write(unit / REQUIREMENTS, requirements_text(pins, wheel.name))


# --- the three units ----------------------------------------------------------------------------------------

def write_eksperimen(settings: Settings, root: Path, repo: Path, wheel: Path, pins: list[str]) -> None:
    name, student = settings.dataset, settings.student
    values = template_values(settings, root)
    shutil.copytree(settings.raw_path.parent, repo / f"{name}_raw", ignore=IGNORE)
    notebooks = sorted((root / "notebooks").glob("Eksperimen_*.ipynb"))
    if not notebooks:
        raise ExportError(f"no notebooks/Eksperimen_*.ipynb in {root}")
    export_notebook(notebooks[0], repo / "preprocessing" / f"Eksperimen_{student}.ipynb", settings)
    _write(repo / "preprocessing" / f"automate_{student}.py", template("automate.py.tmpl", values))
    _copy_processed(settings, repo / "preprocessing" / f"{name}_preprocessing")
    _write(repo / ".github" / "workflows" / "preprocessing.yml", template("preprocessing.yml.tmpl", values))
    _vendor(wheel, repo, pins)
    _write(repo / ".gitignore", GITIGNORE)
    repo_name = eksperimen_name(student)
    _write(repo / "README.md", f"""# {repo_name}

Kriteria 1 of the MSML course project ({student}): the raw {name} data, the experiment notebook and the automated
preprocessing, generated by `msml export` from the msml repository.

| path | what |
|---|---|
| `{name}_raw/` | the raw dataset (never modified) |
| `preprocessing/Eksperimen_{student}.ipynb` | the experiment: dataset, EDA, preprocessing step by step |
| `preprocessing/automate_{student}.py` | the automated preprocessing (`msml.preprocessing`, installed from `vendor/`) |
| `preprocessing/{name}_preprocessing/` | its output, refreshed by the workflow |
| `.github/workflows/preprocessing.yml` | runs `automate_{student}.py` on every change and commits the output back |

```bash
python -m pip install -r requirements.txt          # msml (vendor/) and the pinned dependencies
python preprocessing/automate_{student}.py          # writes preprocessing/{name}_preprocessing/
```

Push: create the empty repository `{repo_name}` on GitHub, then

```bash
git remote add origin {github_url(settings.github_user, repo_name)}.git && git push -u origin main
```
""")


def write_workflow_ci(settings: Settings, root: Path, repo: Path, wheel: Path, pins: list[str]) -> None:
    from msml.project import (CONDA_FILE, DOCKERHUB_FILE, HEADER, MLPROJECT_FILE, PROJECT_DIR, render_conda_env,
                              render_dockerhub_link, render_mlproject)

    def exported(text: str) -> str:  # the repository's "do not edit" header names a file the export leaves behind
        return text.replace(HEADER, "# Generated by `msml export` (msml.project of the msml repository).\n", 1)

    name = settings.dataset
    values = template_values(settings, root)
    project = repo / PROJECT_DIR
    _write(project / MLPROJECT_FILE, exported(render_mlproject(
        settings, data_path=f"{name}_preprocessing", run_info=RUN_INFO,
        train_command="python modelling.py", tune_command="python modelling.py --tune")))
    _write(project / CONDA_FILE, exported(render_conda_env(root, install_self=f"../{VENDOR}/{wheel.name}")))
    _write(project / DOCKERHUB_FILE, render_dockerhub_link(settings))
    _write(project / "modelling.py", template("modelling.py.tmpl", values))
    _copy_processed(settings, project / f"{name}_preprocessing")
    _write(repo / ".github" / "workflows" / "training.yml", template("training.yml.tmpl", values))
    _vendor(wheel, repo, pins)
    _write(repo / ".gitignore", GITIGNORE)
    _write(repo / "README.md", f"""# {WORKFLOW_CI}

Kriteria 3 of the MSML course project ({settings.student}): the MLflow Project and the CI that retrains it and ships
the model as a Docker image ({settings.image}), generated by `msml export` from the msml repository.

| path | what |
|---|---|
| `MLProject/MLproject` | entry points `main` (baseline) and `tune` (Optuna), both `python modelling.py` |
| `MLProject/conda.yaml` | the environment: pinned dependencies and msml from `vendor/` |
| `MLProject/modelling.py` | the training script (`msml.training`, `msml.tuning`) |
| `MLProject/{name}_preprocessing/` | the preprocessed dataset |
| `MLProject/{DOCKERHUB_FILE}` | the Docker Hub link |
| `.github/workflows/training.yml` | `mlflow run MLProject` → artifacts → `mlflow models build-docker` → push |

```bash
python -m pip install -r requirements.txt
mlflow run MLProject -e main --env-manager local --experiment-name {settings.experiment}
mlflow run MLProject -e tune -P trials=2 --env-manager local --experiment-name {settings.experiment}
```

The workflow pushes the image when the repository secrets `DOCKERHUB_USERNAME` and `DOCKERHUB_TOKEN` (a Docker Hub
access token) are set. Push: create the empty repository `{WORKFLOW_CI}` on GitHub, then

```bash
git remote add origin {github_url(settings.github_user, WORKFLOW_CI)}.git && git push -u origin main
```
""")


def write_submission(settings: Settings, root: Path, folder: Path, wheel: Path, pins: list[str]) -> None:
    from msml.monitoring.render import render_files

    values = template_values(settings, root)
    student, user = settings.student, settings.github_user
    _write(folder / f"{eksperimen_name(student)}.txt", github_url(user, eksperimen_name(student)) + "\n")
    _write(folder / f"{WORKFLOW_CI}.txt", github_url(user, WORKFLOW_CI) + "\n")

    model = folder / MEMBANGUN
    _write(model / "modelling.py", template("modelling.py.tmpl", values))
    _write(model / "modelling_tuning.py", template("modelling_tuning.py.tmpl", values))
    _copy_processed(settings, model / f"{settings.dataset}_preprocessing")
    _vendor(wheel, model, pins)
    dagshub = dagshub_url(user, eksperimen_name(student))
    _write(model / "DagsHub.txt", f"""{dagshub}

# Log to this DagsHub tracking server instead of the local sqlite:///mlflow.db (no token in any file):
#   export MLFLOW_TRACKING_URI={dagshub}
#   export MLFLOW_TRACKING_USERNAME={user}
#   export MLFLOW_TRACKING_PASSWORD=<a DagsHub access token>
#   python modelling_tuning.py
""")

    monitoring = folder / MONITORING
    _write(monitoring / PROMETHEUS_YML, render_files()["monitoring/prometheus/prometheus.yml"])
    _write(monitoring / EXPORTER, template("prometheus_exporter.py.tmpl", values))
    _write(monitoring / INFERENCE, template("inference.py.tmpl", values))
    for sub in (PROMETHEUS_DIR, GRAFANA_DIR, ALERTING_DIR):
        (monitoring / sub).mkdir(parents=True, exist_ok=True)


def _copy_processed(settings: Settings, target: Path) -> None:
    source = settings.processed_dir
    if not (source / "report.json").is_file():
        raise ExportError(f"no processed dataset in {source}: run `msml preprocess` first")
    shutil.copytree(source, target, ignore=IGNORE)


# --- evidence from the running system ---------------------------------------------------------------------

def _reachable(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status < 500
    except (urllib.error.URLError, OSError, ValueError):
        return False


def serving_evidence(settings: Settings, target: Path, model_url: str, label: str = "model server") -> Path:
    """POST one real test-split row to `<model_url>/invocations` and render command, request and response to a JPG."""
    from msml.evidence import text_image
    from msml.loadgen import load_test_rows
    from msml.registry import champion_uri
    from msml.serving.model_server import serve_command

    rows, truths = load_test_rows(settings.processed_dir, settings.contract)
    body = {"dataframe_records": [rows[0]]}
    url = f"{model_url.rstrip('/')}/invocations"
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=30) as response:
        status, answer = response.status, json.loads(response.read())
    elapsed_ms = (time.perf_counter() - started) * 1000
    port = model_url.rstrip("/").rsplit(":", 1)[-1]
    command = serve_command(champion_uri(settings.model_name), port=int(port) if port.isdigit() else 5001)
    command[0] = Path(command[0]).name
    tracking = re.sub(r"//[^/@]*@", "//", settings.tracking_uri)  # never print credentials of a remote store
    text = (f"# served by ({label}):\n$ MLFLOW_TRACKING_URI={tracking} {shlex.join(command)}\n\n"
            f"# request (a real row of the held-out test split; true label: {truths[0]}):\n"
            f"$ curl -s -X POST {url} -H 'Content-Type: application/json' -d @request.json\n"
            f"{json.dumps(body, indent=2)}\n\n"
            f"# response: HTTP {status} in {elapsed_ms:.0f} ms, at {time.strftime('%Y-%m-%d %H:%M:%S %Z')}\n"
            f"{json.dumps(answer, indent=2)}\n")
    return text_image(text, target, title=f"Serving {champion_uri(settings.model_name)}: a real request and response")


def collect_evidence(settings: Settings, out: Path, folder: Path, model_url: str, gateway_url: str,
                     prometheus_url: str, notifications: Path, grafana_url: str | None,
                     echo=print) -> tuple[list[Path], list[Missing]]:
    """Take every screenshot the running servers allow; list the rest with the command that makes it."""
    from msml.evidence import MLFLOW_ARTIFACTS, MLFLOW_DASHBOARD, mlflow_evidence, monitoring_evidence

    written: list[Path] = []
    missing: list[Missing] = []
    rel = lambda p: str(p.relative_to(out))  # noqa: E731
    model, monitoring = folder / MEMBANGUN, folder / MONITORING

    try:
        written += mlflow_evidence(settings, model)
    except Exception as exc:  # noqa: BLE001 - any failure means: not produced, say why and how
        echo(f"  MLflow screenshots not taken: {exc}")
        for name in (MLFLOW_DASHBOARD, MLFLOW_ARTIFACTS):
            missing.append(Missing(rel(model / name), "MLflow UI: the experiment's runs / the champion's artifacts",
                                   "make demo   # or: .venv/bin/msml tune  (registers a champion), then: "
                                   ".venv/bin/msml export --evidence"))

    served = None
    for url, label in ((model_url, "mlflow models serve"), (gateway_url, "msml gateway → mlflow models serve")):
        if _reachable(f"{url.rstrip('/')}/ping"):
            try:
                served = serving_evidence(settings, monitoring / SERVING_IMAGE, url, label)
                break
            except (urllib.error.URLError, OSError, ValueError) as exc:
                echo(f"  serving request to {url} failed: {exc}")
    if served:
        written.append(served)
    else:
        missing.append(Missing(rel(monitoring / SERVING_IMAGE), "a real request to the served model and its response",
                               f"make demo   # serves the champion on {model_url}; "
                               "then: .venv/bin/msml export --evidence"))

    prometheus_up = _reachable(f"{prometheus_url.rstrip('/')}/-/ready")
    with tempfile.TemporaryDirectory(prefix="msml-evidence-") as tmp:
        shots: list[Path] = []
        if prometheus_up:
            try:
                shots = monitoring_evidence(tmp, prometheus_url, notifications, grafana_url=grafana_url)
            except (RuntimeError, OSError, subprocess.SubprocessError) as exc:  # e.g. no Chromium
                echo(f"  monitoring screenshots not taken: {exc}")
                prometheus_up = False
        for shot in shots:
            kind, name = shot.parent.name, shot.name
            if kind == "prometheus" and name.startswith("1.monitoring_"):
                target = monitoring / PROMETHEUS_DIR / name
            elif kind == "grafana" and name.startswith("1.monitoring_"):
                target = monitoring / GRAFANA_DIR / name
            elif name.startswith("1.rules_") and kind == ("grafana" if grafana_url else "prometheus"):
                target = monitoring / ALERTING_DIR / name
            elif kind == "notifications":
                target = monitoring / ALERTING_DIR / name
            else:
                continue
            shutil.copy2(shot, target)
            written.append(target)
    if prometheus_up:
        if not any(p.parent.name == ALERTING_DIR and p.name.startswith("2.notifikasi_") for p in written):
            missing.append(Missing(rel(monitoring / ALERTING_DIR) + "/2.notifikasi_<metric>.jpg",
                                   f"alert notifications (none recorded in {notifications})",
                                   "make demo && .venv/bin/msml loadgen --duration 720 --rate 20 --drift-share 1.0 "
                                   "# DataDriftPSI fires after its 10 min; then: .venv/bin/msml export --evidence"))
    else:
        for sub, what in ((PROMETHEUS_DIR, "Prometheus graphs 1.monitoring_<metric>.jpg"),
                          (ALERTING_DIR, "alert rules 1.rules_<metric>.jpg, notifications 2.notifikasi_<metric>.jpg")):
            missing.append(Missing(rel(monitoring / sub) + "/", what, f"make demo   # Prometheus on {prometheus_url}; "
                                   "then: .venv/bin/msml export --evidence"))

    if not grafana_url:
        grafana_command = ("docker compose up -d && make demo && "
                           f".venv/bin/msml export --evidence --grafana {DEFAULT_GRAFANA_URL}   # on a machine with Docker")
        missing.append(Missing(rel(monitoring / GRAFANA_DIR) + "/",
                               "Grafana dashboard panels 1.monitoring_<metric>.jpg (needs a running Grafana)",
                               grafana_command))
        missing.append(Missing(rel(monitoring / ALERTING_DIR) + "/1.rules_<metric>.jpg (Grafana)",
                               "Grafana alert rule pages (needs a running Grafana)", grafana_command))
    return written, missing


def not_taken(out: Path, folder: Path) -> list[Missing]:
    """`--no-evidence`: every evidence item, with the command that produces it."""
    rel = lambda p: str(p.relative_to(out))  # noqa: E731
    command = "make demo && .venv/bin/msml export --evidence"
    model, monitoring = folder / MEMBANGUN, folder / MONITORING
    return [
        Missing(rel(model / "screenshoot_dashboard.jpg"), "MLflow UI: the experiment's runs", command),
        Missing(rel(model / "screenshoot_artifak.jpg"), "MLflow UI: the champion run's artifacts", command),
        Missing(rel(monitoring / SERVING_IMAGE), "a real request to the served model and its response", command),
        Missing(rel(monitoring / PROMETHEUS_DIR) + "/", "Prometheus graphs 1.monitoring_<metric>.jpg", command),
        Missing(rel(monitoring / GRAFANA_DIR) + "/", "Grafana dashboard panels (needs a running Grafana)",
                "docker compose up -d && make demo && "
                f".venv/bin/msml export --evidence --grafana {DEFAULT_GRAFANA_URL}   # on a machine with Docker"),
        Missing(rel(monitoring / ALERTING_DIR) + "/", "alert rules 1.rules_<metric>.jpg, notifications "
                "2.notifikasi_<metric>.jpg", f"{command} [--grafana {DEFAULT_GRAFANA_URL}]"),
    ]


def missing_report(missing: list[Missing]) -> str:
    lines = ["# Evidence not produced by this export", "",
             "Evidence comes only from running servers; these were not running (or not reachable) during the export.",
             "Run the command, then export again: the files land in place. Nothing below is filled with a placeholder.",
             ""]
    for item in missing:
        lines += [f"- `{item.path}` — {item.what}", "  ```", f"  {item.command}", "  ```"]
    return "\n".join(lines) + "\n"


# --- git and zip ----------------------------------------------------------------------------------------------

def git_init(repo: Path, message: str) -> None:
    """`git init -b main` and one commit by "msml export" (set for that commit only, not in the repo's config)."""
    name, email = GIT_AUTHOR
    base = ["git", "-c", f"user.name={name}", "-c", f"user.email={email}", "-c", "commit.gpgsign=false"]
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", message]):
        result = subprocess.run([*base, *args], cwd=repo, capture_output=True, text=True)
        if result.returncode != 0:
            raise ExportError(f"git {args[0]} in {repo} failed: {result.stderr.strip()}")


def zip_folder(folder: Path, archive: Path) -> Path:
    """Zip `folder` (its name as the top entry, empty folders kept), in a stable order."""
    archive.unlink(missing_ok=True)
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.write(folder, folder.name + "/")
        for path in sorted(folder.rglob("*")):
            arcname = path.relative_to(folder.parent).as_posix() + ("/" if path.is_dir() else "")
            zf.write(path, arcname)
    return archive


# --- the whole export -----------------------------------------------------------------------------------------

def export(settings: Settings, out: str | Path, evidence: bool = True, model_url: str = DEFAULT_MODEL_URL,
           gateway_url: str = DEFAULT_GATEWAY_URL, prometheus_url: str = DEFAULT_PROMETHEUS_URL,
           notifications: str | Path | None = None, grafana_url: str | None = None, echo=print) -> ExportResult:
    """Write the three units, the zip and the missing-evidence list under `out` (replacing an earlier export)."""
    root = settings.root
    for needed in ("pyproject.toml", "requirements.lock"):  # the wheel and the pins come from the checkout
        if not (root / needed).is_file():
            raise ExportError(f"{root} has no {needed}: run `msml export` in the msml repository (or set MSML_HOME)")
    out = Path(out).resolve()
    student = settings.student
    eksperimen = out / eksperimen_name(student)
    workflow_ci = out / WORKFLOW_CI
    submission = out / submission_name(student)
    archive = out / f"{submission_name(student)}.zip"
    for path in (eksperimen, workflow_ci, submission):
        if path.exists():
            shutil.rmtree(path)
    for path in (archive, out / MISSING_FILE):
        path.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}

    started = time.perf_counter()
    pins = runtime_requirements(root)
    with tempfile.TemporaryDirectory(prefix="msml-export-") as tmp:
        echo("building the msml wheel (the exported scripts install it)…")  # progress: this takes a while
        wheel = build_wheel(root, Path(tmp))
        seconds["wheel"] = time.perf_counter() - started
        echo(f"built {wheel.name} ({len(pins)} pinned runtime dependencies)")
        started = time.perf_counter()
        write_eksperimen(settings, root, eksperimen, wheel, pins)
        write_workflow_ci(settings, root, workflow_ci, wheel, pins)
        write_submission(settings, root, submission, wheel, pins)
        seconds["write"] = time.perf_counter() - started

    started = time.perf_counter()
    if evidence:
        echo("taking screenshots of the running system (MLflow UI, Prometheus, alerts)…")
        notifications = Path(notifications or settings.run_dir / "monitoring" / "notifications.jsonl")
        taken, missing = collect_evidence(settings, out, submission, model_url, gateway_url, prometheus_url,
                                          notifications, grafana_url, echo=echo)
    else:
        taken, missing = [], not_taken(out, submission)
    seconds["evidence"] = time.perf_counter() - started

    git_init(eksperimen, f"{eksperimen.name}: raw data, experiment notebook, automated preprocessing (msml export)")
    git_init(workflow_ci, f"{WORKFLOW_CI}: MLflow Project and training CI (msml export)")
    zip_folder(submission, archive)
    if missing:
        (out / MISSING_FILE).write_text(missing_report(missing))
    return ExportResult(out, {eksperimen.name: eksperimen, WORKFLOW_CI: workflow_ci}, submission, archive,
                        missing, taken, seconds)
