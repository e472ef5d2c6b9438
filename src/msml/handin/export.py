"""`msml export`: write the course's three repositories and the submission folder from this repository.

```
<out>/Eksperimen_SML_<student>/   git repo: .github/workflows/preprocessing.yml, <dataset>_raw/, preprocessing/{
                                    Eksperimen_<student>.ipynb, automate_<student>.py, <dataset>_preprocessing/}
<out>/Workflow-CI/                git repo: .github/workflows/training.yml, MLProject/{
                                    MLproject, conda.yaml, modelling.py, <dataset>_preprocessing/, DockerHub.txt}
<out>/SMSML_<student>/            Eksperimen_SML_<student>.txt, Workflow-CI.txt, Membangun_model/,
                                  Monitoring dan Logging/
<out>/SMSML_<student>.zip         the submission folder
<out>/MISSING_EVIDENCE.md         what could not be produced here, each with the command that produces it
```

The course's files are standalone scripts that run with the PyPI pins of their folder's `requirements.txt`
(no msml inside): templates in `templates/`, filled at export time from the data contract, the settings
and msml's own metric definitions (the exporter's metrics are generated from `msml.monitoring.metrics`); parity
tests run them against `msml preprocess` / `msml train`. `requirements.txt` holds the exact locked versions of
msml's runtime dependency closure; MLproject and conda.yaml come from `msml.ops.project`, prometheus.yml from
`msml.monitoring.render`, the workflows from templates with this repository's pinned actions.
Evidence images come only from running servers (`msml.handin.evidence`); what is not running is listed.
"""

from __future__ import annotations

import json
import pprint
import re
import shlex
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from msml.config import (
    DECISION_THRESHOLD,
    DEFAULT_PORTS,
    DEFAULT_SEED,
    DEFAULT_TEST_SIZE,
    DEFAULT_TRIALS,
    Settings,
    local_url,
)
from msml.monitoring.render import notifications_path

TEMPLATES = Path(__file__).parent / "templates"
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
REQUIREMENTS = "requirements.txt"
MISSING_FILE = "MISSING_EVIDENCE.md"
RUN_INFO = "../ci-output/run_info.json"  # relative to MLProject/ (CI passes an absolute path)
GIT_AUTHOR = ("msml export", "msml-export@users.noreply.github.com")
DEFAULT_MODEL_URL = local_url(DEFAULT_PORTS.model_server)
DEFAULT_GATEWAY_URL = local_url(DEFAULT_PORTS.gateway)
DEFAULT_PROMETHEUS_URL = local_url(DEFAULT_PORTS.prometheus)
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", ".ipynb_checkpoints")
GITIGNORE = "__pycache__/\n.ipynb_checkpoints/\nmlflow.db\nmlartifacts/\nmlruns/\nci-output/\n.venv/\n"


from msml.errors import ExportError  # noqa: E402  (exit code 7; see msml.errors)


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
    from msml.ops.project import CI_TRIALS

    return {
        "student": settings.student,
        "dataset": settings.dataset,
        "experiment": settings.experiment,
        "model_name": settings.model_name,
        "image": settings.image,
        "trials": CI_TRIALS,
        "seed": DEFAULT_SEED,
        "test_size": DEFAULT_TEST_SIZE,
        "tuning_trials": DEFAULT_TRIALS,
        "threshold": DECISION_THRESHOLD,
        "gateway_port": DEFAULT_PORTS.gateway,
        "model_port": DEFAULT_PORTS.model_server,
        "mlflow_port": DEFAULT_PORTS.mlflow,
        **pinned_actions(root),
    }


def runtime_requirements(root: Path) -> list[str]:
    """`name==version` for the whole runtime dependency closure of pyproject's dependencies (not the dev tools),
    read from the runtime lock `make lock` compiles (requirements/runtime.txt), sorted by name."""
    from msml.ops.project import RUNTIME_LOCK, read_lock

    path = root / RUNTIME_LOCK
    if not path.is_file():
        raise ExportError(f"runtime lock not found: {path} (run `make lock`)")
    return [f"{name}=={version}" for _, (name, version) in sorted(read_lock(path).items())]


def requirements_text(pins: list[str]) -> str:
    return (
        "# Generated by `msml export`: the exact versions of msml's runtime dependencies (from the msml\n"
        "# repository's lock); the course files here need nothing else. Install from this folder:\n"
        "#   python -m pip install -r requirements.txt\n" + "\n".join(pins) + "\n"
    )


def _literal(value: object) -> str:
    """Python source for a constant written into a course file (readable, one item per line when long)."""
    if not isinstance(value, dict):
        return pprint.pformat(value, width=110, sort_dicts=False, compact=True)
    lines = ["{"]
    for key, item in value.items():
        head = f"    {key!r}: "
        text = pprint.pformat(item, width=114 - len(head), sort_dicts=False, compact=True)
        lines.append(head + text.replace("\n", "\n" + " " * len(head)) + ",")
    return "\n".join([*lines, "}"])


_SIGNATURE_TYPES = {"int": "long", "float": "double", "category": "string"}


def metric_definitions(measured: tuple[str, ...]) -> str:
    """prometheus_client definitions of the gateway's metrics (`msml.monitoring.metrics.GatewayMetrics`), as source.

    `measured` names the GatewayMetrics attributes the standalone exporter updates; each becomes an upper-case
    constant with the gateway's exact name, help, labels and buckets, so a rename there flows into the exporter.
    """
    from prometheus_client import Counter, Gauge, Histogram, Info

    from msml.monitoring.metrics import GatewayMetrics

    metrics = GatewayMetrics()
    lines = []
    for attr in measured:
        metric = getattr(metrics, attr, None)
        if metric is None:
            raise ExportError(f"msml.monitoring.metrics.GatewayMetrics has no metric {attr!r}: update {EXPORTER}")
        kind = next(k for k in (Counter, Histogram, Gauge, Info) if isinstance(metric, k)).__name__
        args = [repr(metric._name), repr(metric._documentation)]
        if metric._labelnames:
            args.append(repr(list(metric._labelnames)))
        if kind == "Histogram":
            args.append(f"buckets={tuple(b for b in metric._upper_bounds if b != float('inf'))!r}")
        head = f"{attr.upper()} = {kind}("
        lines.append(head + f",\n{' ' * len(head)}".join([*args, "registry=REGISTRY"]) + ")")
    return "\n".join(lines)


# The GatewayMetrics the standalone exporter measures from its own requests (drift and live accuracy need the
# gateway's training reference and feedback store: they stay in `msml gateway`).
EXPORTER_METRICS = (
    "requests",
    "request_seconds",
    "model_request_seconds",
    "model_errors",
    "in_flight",
    "batch_rows",
    "validation_failures",
    "rows_scored",
    "predictions",
    "probability",
    "feature_missing",
    "model_up",
    "model_info",
)


def course_values(settings: Settings, root: Path) -> dict[str, object]:
    """Template values of the standalone course files: the contract and settings as Python constants."""
    from msml.data.contract import DEFAULT_MAX_INVALID_SHARE
    from msml.data.preprocessing import MISSING_CATEGORY

    contract = settings.contract
    columns = {}
    for col in contract.columns:
        spec: dict[str, object] = {"type": col.type}
        if col.nullable:
            spec["nullable"] = True
        if col.values:
            spec["values"] = list(col.values)
        if col.min is not None:
            spec["min"] = col.min
        if col.max is not None:
            spec["max"] = col.max
        columns[col.name] = spec
    values = template_values(settings, root)
    values.update(
        {
            "dataset_literal": repr(contract.name),
            "target_literal": repr(contract.target),
            "labels_literal": repr((contract.negative, contract.positive)),
            "positive_literal": repr(contract.positive),
            "markers_literal": repr(contract.missing_markers),
            "markers": ", ".join(contract.missing_markers),
            "columns_literal": _literal(columns),
            "features_literal": _literal(contract.features),
            "categorical_literal": _literal(contract.categorical_features),
            "signature_literal": _literal({c.name: (_SIGNATURE_TYPES[c.type], c.nullable) for c in contract.columns}),
            "max_invalid_share": repr(DEFAULT_MAX_INVALID_SHARE),
            "max_invalid_pct": f"{DEFAULT_MAX_INVALID_SHARE * 100:g}",
            "missing_category": MISSING_CATEGORY,
            "metric_definitions": metric_definitions(EXPORTER_METRICS),
        }
    )
    values["training_common"] = template("training_common.py.tmpl", values)
    return values


def course_files(settings: Settings, root: Path) -> dict[str, str]:
    """{course file name: text} of every standalone course script."""
    values = course_values(settings, root)
    return {
        f"automate_{settings.student}.py": template("automate.py.tmpl", values),
        "modelling.py": template("modelling.py.tmpl", values),
        "modelling_tuning.py": template("modelling_tuning.py.tmpl", values),
        EXPORTER: template("prometheus_exporter.py.tmpl", values),
        INFERENCE: template("inference.py.tmpl", values),
    }


def notebook_files(settings: Settings, root: Path) -> dict[str, str]:
    """{path relative to the repository: text} of the automation the repository's notebook runs in its last section
    (`notebooks/automate_<student>.py`, committed next to the notebook as in the exported `preprocessing/`)."""
    name = f"automate_{settings.student}.py"
    return {f"notebooks/{name}": course_files(settings, root)[name]}


def export_notebook(source: Path, target: Path, settings: Settings) -> None:
    """The experiment notebook, its paths rewritten for the exported layout (raw data one folder up)."""
    text = source.read_text()
    name = settings.dataset
    written_for = source.stem.removeprefix("Eksperimen_")  # the repository's student; the export's may differ
    text = text.replace(f"automate_{written_for}", f"automate_{settings.student}")
    for old, new in (
        (f"../data/{name}_raw/", f"../{name}_raw/"),
        (f"data/{name}_preprocessing/", f"preprocessing/{name}_preprocessing/"),
        (f"data/{name}_raw/", f"{name}_raw/"),
    ):
        text = text.replace(old, new)
    _write(target, text)


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _requirements(unit: Path, pins: list[str]) -> None:
    _write(unit / REQUIREMENTS, requirements_text(pins))


# --- the three units ----------------------------------------------------------------------------------------


def write_eksperimen(settings: Settings, root: Path, repo: Path, pins: list[str]) -> None:
    name, student = settings.dataset, settings.student
    values = template_values(settings, root)
    course = course_files(settings, root)
    _copy_raw(settings, repo / f"{name}_raw")
    notebooks = sorted((root / "notebooks").glob("Eksperimen_*.ipynb"))
    if not notebooks:
        raise ExportError(f"no notebooks/Eksperimen_*.ipynb in {root}")
    export_notebook(notebooks[0], repo / "preprocessing" / f"Eksperimen_{student}.ipynb", settings)
    _write(repo / "preprocessing" / f"automate_{student}.py", course[f"automate_{student}.py"])
    _copy_processed(settings, repo / "preprocessing" / f"{name}_preprocessing")
    _write(repo / ".github" / "workflows" / "preprocessing.yml", template("preprocessing.yml.tmpl", values))
    _requirements(repo, pins)
    _write(repo / ".gitignore", GITIGNORE)
    repo_name = eksperimen_name(student)
    _write(
        repo / "README.md",
        f"""# {repo_name}

Kriteria 1 of the MSML course project ({student}): the raw {name} data, the experiment notebook and the automated
preprocessing, generated by `msml export` from the msml repository.

| path | what |
|---|---|
| `{name}_raw/` | the raw dataset (never modified) |
| `preprocessing/Eksperimen_{student}.ipynb` | the experiment: dataset, EDA, preprocessing step by step |
| `preprocessing/automate_{student}.py` | the notebook's steps as functions (pandas, scikit-learn), same bytes |
| `preprocessing/{name}_preprocessing/` | its output, refreshed by the workflow |
| `.github/workflows/preprocessing.yml` | runs `automate_{student}.py` on every change and commits the output back |

```bash
python -m pip install -r requirements.txt          # the pinned dependencies (PyPI only)
python preprocessing/automate_{student}.py          # writes preprocessing/{name}_preprocessing/
```

Push: create the empty repository `{repo_name}` on GitHub, then

```bash
git remote add origin {github_url(settings.github_user, repo_name)}.git && git push -u origin main
```
""",
    )


def write_workflow_ci(settings: Settings, root: Path, repo: Path, pins: list[str]) -> None:
    from msml.ops.project import (
        CONDA_FILE,
        DOCKERHUB_FILE,
        HEADER,
        MLPROJECT_FILE,
        PROJECT_DIR,
        render_conda_env,
        render_dockerhub_link,
        render_mlproject,
    )

    def exported(text: str) -> str:  # the repository's "do not edit" header names a file the export leaves behind
        return text.replace(HEADER, "# Generated by `msml export` (msml.ops.project of the msml repository).\n", 1)

    name = settings.dataset
    values = template_values(settings, root)
    project = repo / PROJECT_DIR
    _write(
        project / MLPROJECT_FILE,
        exported(
            render_mlproject(
                settings,
                data_path=f"{name}_preprocessing",
                run_info=RUN_INFO,
                train_command="python modelling.py",
                tune_command="python modelling_tuning.py",
            )
        ),
    )
    _write(project / CONDA_FILE, exported(render_conda_env(root, install_self=None)))
    _write(project / DOCKERHUB_FILE, render_dockerhub_link(settings))
    course = course_files(settings, root)
    _write(project / "modelling.py", course["modelling.py"])
    _write(project / "modelling_tuning.py", course["modelling_tuning.py"])
    _copy_processed(settings, project / f"{name}_preprocessing")
    _write(repo / ".github" / "workflows" / "training.yml", template("training.yml.tmpl", values))
    _requirements(repo, pins)
    _write(repo / ".gitignore", GITIGNORE)
    _write(
        repo / "README.md",
        f"""# {WORKFLOW_CI}

Kriteria 3 of the MSML course project ({settings.student}): the MLflow Project and the CI that retrains it and ships
the model as a Docker image ({settings.image}), generated by `msml export` from the msml repository.

| path | what |
|---|---|
| `MLProject/MLproject` | entry points `main` (`python modelling.py`) and `tune` (`python modelling_tuning.py`) |
| `MLProject/conda.yaml` | the environment: the pinned dependencies |
| `MLProject/modelling.py` | the baseline: scikit-learn with `mlflow.sklearn.autolog()` |
| `MLProject/modelling_tuning.py` | Optuna search, manual logging (`log_params` / `log_metrics` / `log_artifact`) |
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
""",
    )


def write_submission(settings: Settings, root: Path, folder: Path, pins: list[str]) -> None:
    from msml.monitoring.render import render_files

    student, user = settings.student, settings.github_user
    _write(folder / f"{eksperimen_name(student)}.txt", github_url(user, eksperimen_name(student)) + "\n")
    _write(folder / f"{WORKFLOW_CI}.txt", github_url(user, WORKFLOW_CI) + "\n")

    course = course_files(settings, root)
    model = folder / MEMBANGUN
    _write(model / "modelling.py", course["modelling.py"])
    _write(model / "modelling_tuning.py", course["modelling_tuning.py"])
    _copy_processed(settings, model / f"{settings.dataset}_preprocessing")
    _requirements(model, pins)
    dagshub = dagshub_url(user, eksperimen_name(student))
    _write(
        model / "DagsHub.txt",
        f"""{dagshub}

# Log to this DagsHub tracking server instead of the local sqlite:///mlflow.db (no token in any file):
#   export MLFLOW_TRACKING_URI={dagshub}
#   export MLFLOW_TRACKING_USERNAME={user}
#   export MLFLOW_TRACKING_PASSWORD=<a DagsHub access token>
#   python modelling_tuning.py
""",
    )

    monitoring = folder / MONITORING
    _write(monitoring / PROMETHEUS_YML, render_files()["monitoring/prometheus/prometheus.yml"])
    _write(monitoring / EXPORTER, course[EXPORTER])
    _write(monitoring / INFERENCE, course[INFERENCE])
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
    if card.is_file():
        shutil.copy2(card, target / card.name)


# --- evidence from the running system ---------------------------------------------------------------------


def _reachable(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status < 500
    except (urllib.error.URLError, OSError, ValueError):
        return False


def serving_evidence(settings: Settings, target: Path, model_url: str, label: str = "model server") -> Path:
    """POST one real test-split row to `<model_url>/invocations` and render command, request and response to a JPG."""
    from msml.handin.evidence import text_image
    from msml.ops.loadgen import load_test_rows
    from msml.serving.model_server import serve_command
    from msml.tracking.registry import champion_uri

    rows, truths = load_test_rows(settings.processed_dir, settings.contract)
    body = {"dataframe_records": [rows[0]]}
    url = f"{model_url.rstrip('/')}/invocations"
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST", headers={"Content-Type": "application/json"}
    )
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=30) as response:
        status, answer = response.status, json.loads(response.read())
    elapsed_ms = (time.perf_counter() - started) * 1000
    port = model_url.rstrip("/").rsplit(":", 1)[-1]
    command = serve_command(
        champion_uri(settings.model_name), port=int(port) if port.isdigit() else DEFAULT_PORTS.model_server
    )
    command[0] = Path(command[0]).name
    tracking = re.sub(r"//[^/@]*@", "//", settings.tracking_uri)  # never print credentials of a remote store
    text = (
        f"# served by ({label}):\n$ MLFLOW_TRACKING_URI={tracking} {shlex.join(command)}\n\n"
        f"# request (a real row of the held-out test split; true label: {truths[0]}):\n"
        f"$ curl -s -X POST {url} -H 'Content-Type: application/json' -d @request.json\n"
        f"{json.dumps(body, indent=2)}\n\n"
        f"# response: HTTP {status} in {elapsed_ms:.0f} ms, at {time.strftime('%Y-%m-%d %H:%M:%S %Z')}\n"
        f"{json.dumps(answer, indent=2)}\n"
    )
    return text_image(text, target, title=f"Serving {champion_uri(settings.model_name)}: a real request and response")


def grafana_command(out: Path) -> str:
    """The one command that fills the two Grafana folders (Grafana 11.6 in Docker against `make demo`'s stack)."""
    return f"make demo && .venv/bin/msml evidence grafana --out {shlex.quote(str(out))}   # on a machine with Docker"


def grafana_missing(out: Path, folder: Path) -> list[Missing]:
    """The Grafana half of Kriteria 4: only a running Grafana produces it (`msml evidence grafana`)."""
    from msml.handin.evidence import grafana_panel_stems
    from msml.handin.grafana import ALERT_KEYS

    rel = lambda p: str(p.relative_to(out))  # noqa: E731
    monitoring = folder / MONITORING
    command = grafana_command(out)
    return [
        Missing(
            rel(monitoring / GRAFANA_DIR) + "/",
            f"Grafana dashboard panels, one per metric ({len(grafana_panel_stems())}: "
            "1.monitoring_<metric>.jpg, 2. ...)",
            command,
        ),
        Missing(
            rel(monitoring / ALERTING_DIR) + "/",
            f"Grafana-managed alert rules and their notifications ({', '.join(ALERT_KEYS)}: "
            "1.rules_<metric>.jpg, 2.notifikasi_<metric>.jpg, 3. ...)",
            command,
        ),
    ]


def collect_evidence(
    settings: Settings,
    out: Path,
    folder: Path,
    model_url: str,
    gateway_url: str,
    prometheus_url: str,
    notifications: Path,
    echo=print,
) -> tuple[list[Path], list[Missing]]:
    """Take every screenshot the running servers allow; list the rest with the command that makes it.

    Prometheus pages go to `4.bukti monitoring Prometheus/` only; the Grafana folders are filled by
    `msml evidence grafana` (a running Grafana), so they are always listed here.
    """
    from msml.handin.evidence import (
        MLFLOW_ARTIFACTS,
        MLFLOW_DASHBOARD,
        CaptureError,
        mlflow_evidence,
        prometheus_evidence,
    )

    written: list[Path] = []
    missing: list[Missing] = []
    rel = lambda p: str(p.relative_to(out))  # noqa: E731
    model, monitoring = folder / MEMBANGUN, folder / MONITORING
    again = f".venv/bin/msml export --out {shlex.quote(str(out))}"

    try:
        written += mlflow_evidence(settings, model)
    except Exception as exc:
        echo(f"  MLflow screenshots not taken: {exc}")
        for name in (MLFLOW_DASHBOARD, MLFLOW_ARTIFACTS):
            missing.append(
                Missing(
                    rel(model / name),
                    "MLflow UI: the experiment's runs / the champion's artifacts",
                    f"make demo && {again}",
                )
            )

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
        missing.append(
            Missing(
                rel(monitoring / SERVING_IMAGE),
                "a real request to the served model and its response",
                f"make demo && {again}   # make demo serves the champion on {model_url}",
            )
        )

    prometheus_dir = monitoring / PROMETHEUS_DIR
    taken: list[Path] = []
    if _reachable(f"{prometheus_url.rstrip('/')}/-/ready"):
        try:
            taken = prometheus_evidence(prometheus_dir, prometheus_url, notifications)
        except (CaptureError, OSError) as exc:
            echo(f"  Prometheus screenshots not taken: {exc}")
            for stale in prometheus_dir.glob("*.jpg"):  # a half-numbered folder would mislead
                stale.unlink()
            taken = []
    written += taken
    if not taken:
        missing.append(
            Missing(
                rel(prometheus_dir) + "/",
                "Prometheus graphs 1.monitoring_<metric>.jpg ..., its rules and alerts pages, "
                "Alertmanager notifications",
                f"make demo && {again}   # Prometheus on {prometheus_url}",
            )
        )
    return written, missing + grafana_missing(out, folder)


def not_taken(out: Path, folder: Path) -> list[Missing]:
    """`--no-evidence`: every evidence item, with the command that produces it."""
    rel = lambda p: str(p.relative_to(out))  # noqa: E731
    command = f"make demo && .venv/bin/msml export --out {shlex.quote(str(out))}"
    model, monitoring = folder / MEMBANGUN, folder / MONITORING
    return [
        Missing(rel(model / "screenshoot_dashboard.jpg"), "MLflow UI: the experiment's runs", command),
        Missing(rel(model / "screenshoot_artifak.jpg"), "MLflow UI: the champion run's artifacts", command),
        Missing(rel(monitoring / SERVING_IMAGE), "a real request to the served model and its response", command),
        Missing(
            rel(monitoring / PROMETHEUS_DIR) + "/",
            "Prometheus graphs 1.monitoring_<metric>.jpg ..., its rules and alerts pages, Alertmanager notifications",
            command,
        ),
        *grafana_missing(out, folder),
    ]


def missing_report(missing: list[Missing]) -> str:
    lines = [
        "# Evidence not produced by this export",
        "",
        "Evidence comes only from running servers; these were not running (or not reachable) during the export.",
        "Run the command: the files land in place (and the zip is refreshed). Nothing below is a placeholder.",
        "",
    ]
    for item in missing:
        lines += [f"- `{item.path}` — {item.what}", "  ```", f"  {item.command}", "  ```"]
    return "\n".join(lines) + "\n"


# --- names, git and zip ---------------------------------------------------------------------------------------

NAME = re.compile(r"[A-Za-z0-9_-]+")


def check_names(settings: Settings) -> None:
    """Student and user names become folder, repository and image names: letters, digits, `-` and `_` only."""
    for option, value in (
        ("--student", settings.student),
        ("--github-user", settings.github_user),
        ("--dockerhub-user", settings.dockerhub_user),
    ):
        if not NAME.fullmatch(value or ""):
            raise ExportError(f"{option} {value!r} is not a valid name: use only letters, digits, '-' and '_'")


def clear_worktree(repo: Path) -> None:
    """Remove everything in `repo` but its `.git`: a re-export writes the files anew on top of the history."""
    if not repo.exists():
        return
    for path in repo.iterdir():
        if path.name == ".git":
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def git_commit(repo: Path, message: str) -> bool:
    """Commit the export on `main` by "msml export" (set for that commit only, not in the repo's config).

    A new folder gets `git init -b main` and its first commit; an existing clone (a re-export) gets a commit on
    top of its history, so pushing it fast-forwards. Returns False when nothing changed (no empty commit).
    """
    name, email = GIT_AUTHOR
    base = ["git", "-c", f"user.name={name}", "-c", f"user.email={email}", "-c", "commit.gpgsign=false"]

    def git(*args: str) -> str:
        result = subprocess.run([*base, *args], cwd=repo, capture_output=True, text=True)
        if result.returncode != 0:
            raise ExportError(f"git {args[0]} in {repo} failed: {result.stderr.strip()}")
        return result.stdout

    if not (repo / ".git").exists():
        git("init", "-q", "-b", "main")
    git("add", "-A")
    if not git("status", "--porcelain").strip():
        return False
    git("commit", "-q", "-m", message)
    return True


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


def export(
    settings: Settings,
    out: str | Path,
    evidence: bool = True,
    model_url: str = DEFAULT_MODEL_URL,
    gateway_url: str = DEFAULT_GATEWAY_URL,
    prometheus_url: str = DEFAULT_PROMETHEUS_URL,
    notifications: str | Path | None = None,
    echo=print,
) -> ExportResult:
    """Write the three units, the zip and the missing-evidence list under `out` (replacing an earlier export)."""
    root = settings.root
    check_names(settings)
    for needed in ("pyproject.toml", "requirements/runtime.txt"):  # the pins come from the checkout
        if not (root / needed).is_file():
            raise ExportError(f"{root} has no {needed}: run `msml export` in the msml repository (or set MSML_HOME)")
    out = Path(out).resolve()
    student = settings.student
    eksperimen = out / eksperimen_name(student)
    workflow_ci = out / WORKFLOW_CI
    submission = out / submission_name(student)
    archive = out / f"{submission_name(student)}.zip"
    for repo in (eksperimen, workflow_ci):
        clear_worktree(repo)
    kept = tempfile.TemporaryDirectory(prefix="msml-export-grafana-")
    grafana_dirs = [submission / MONITORING / sub for sub in (GRAFANA_DIR, ALERTING_DIR)]
    for i, sub in enumerate(grafana_dirs):  # `msml evidence grafana` made these: an export does not undo it
        if sub.is_dir():
            shutil.copytree(sub, Path(kept.name) / str(i))
    if submission.exists():
        shutil.rmtree(submission)
    for path in (archive, out / MISSING_FILE):
        path.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}

    started = time.perf_counter()
    pins = runtime_requirements(root)
    echo(f"{len(pins)} pinned runtime dependencies")
    write_eksperimen(settings, root, eksperimen, pins)
    write_workflow_ci(settings, root, workflow_ci, pins)
    write_submission(settings, root, submission, pins)
    seconds["write"] = time.perf_counter() - started

    with kept:
        for i, sub in enumerate(grafana_dirs):
            if (Path(kept.name) / str(i)).is_dir():
                shutil.copytree(Path(kept.name) / str(i), sub, dirs_exist_ok=True)

    started = time.perf_counter()
    if evidence:
        echo("taking screenshots of the running system (MLflow UI, Prometheus, alerts)…")
        notifications = Path(notifications or notifications_path(settings.run_dir))
        taken, missing = collect_evidence(
            settings, out, submission, model_url, gateway_url, prometheus_url, notifications, echo=echo
        )
    else:
        taken, missing = [], not_taken(out, submission)
    from msml.handin.grafana import grafana_evidence_complete

    if grafana_evidence_complete(submission / MONITORING / GRAFANA_DIR, submission / MONITORING / ALERTING_DIR):
        missing = [m for m in missing if m not in grafana_missing(out, submission)]
    seconds["evidence"] = time.perf_counter() - started

    git_commit(eksperimen, f"{eksperimen.name}: raw data, experiment notebook, automated preprocessing (msml export)")
    git_commit(workflow_ci, f"{WORKFLOW_CI}: MLflow Project and training CI (msml export)")
    zip_folder(submission, archive)
    if missing:
        (out / MISSING_FILE).write_text(missing_report(missing))
    return ExportResult(
        out, {eksperimen.name: eksperimen, WORKFLOW_CI: workflow_ci}, submission, archive, missing, taken, seconds
    )
