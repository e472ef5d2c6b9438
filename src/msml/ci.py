"""The retraining job that CI runs (`.github/workflows/training.yml`) and `make ci-local` proves here.

Steps, each timed: make sure the experiment exists → `mlflow run MLProject -e <entry>` (the entry
point logs into the run `mlflow run` opened and writes the run-info file) → read the run id from
that file → download the run's artifacts (model included) → write `run_summary.json` (run id,
model URI, metrics, image tag). GitHub then builds and pushes the image with
`mlflow models build-docker`; without a Docker engine (here) `generate_dockerfile()` writes the
Dockerfile that command would build, and `check_dockerfile()` inspects it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from msml.config import Settings
from msml.contract import DataError
from msml.project import CI_CV_FOLDS, CI_TRIALS, DEFAULT_SEED, PROJECT_DIR

ENTRY_POINTS = ("main", "tune")
RUN_INFO_FILE = "run_info.json"
SUMMARY_FILE = "run_summary.json"
ARTIFACTS_DIR = "artifacts"
DOCKER_DIR = "docker"
# Names that must never appear in an image's build context.
SECRET_PATTERNS = re.compile(
    r"(DOCKERHUB_TOKEN|DOCKERHUB_PASSWORD|MLFLOW_TRACKING_PASSWORD|MLFLOW_TRACKING_TOKEN|GITHUB_TOKEN|"
    r"AWS_SECRET_ACCESS_KEY|password\s*=|token\s*=)",
    re.IGNORECASE,
)


class CiError(DataError):
    """A CI step failed; the message names the step (the tool's own output is above it in the log)."""


@dataclass
class CiResult:
    run_id: str
    model_uri: str
    experiment_id: str
    experiment: str
    entry_point: str
    metrics: dict[str, float]
    image: str
    artifacts: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2, sort_keys=True) + "\n")


def absolute_tracking_uri(uri: str, base: Path) -> str:
    """`mlflow run` starts the entry point in MLProject/: a relative SQLite or file store must be made absolute."""
    for scheme in ("sqlite:///", "file:"):
        if uri.startswith(scheme):
            path = uri[len(scheme):]
            if path and not path.startswith("/"):
                return scheme + str((base / path).resolve())
    if "://" not in uri and not uri.startswith("/"):  # a bare local path is a file store
        return str((base / uri).resolve())
    return uri


def project_env(settings: Settings, tracking_uri: str) -> dict[str, str]:
    """The environment of `mlflow run`: venv on PATH, absolute tracking URI, the settings' root."""
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "MSML_HOME": str(settings.root),
           "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",  # one tqdm line per file floods CI logs
           "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    for name in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID"):  # never inherit another run's
        env.pop(name, None)
    return env


def mlflow_run_command(
    project_dir: Path,
    entry: str,
    experiment: str,
    run_info: Path,
    data: Path,
    seed: int = DEFAULT_SEED,
    trials: int = CI_TRIALS,
    cv_folds: int = CI_CV_FOLDS,
    env_manager: str = "local",
) -> list[str]:
    params = {"data_path": str(data), "seed": seed, "experiment_name": experiment, "run_info": str(run_info)}
    if entry == "tune":
        params |= {"trials": trials, "cv_folds": cv_folds}
    command = [str(Path(sys.executable).parent / "mlflow"), "run", str(project_dir), "-e", entry,
               "--env-manager", env_manager, "--experiment-name", experiment, "--run-name", f"mlproject-{entry}"]
    for key, value in params.items():
        command += ["-P", f"{key}={value}"]
    return command


def read_run_info(path: Path) -> dict:
    """The run id and model URI the entry point wrote: the one source for the next steps (never `ls -t mlruns`)."""
    if not path.is_file():
        raise CiError(f"the entry point wrote no run-info file at {path}")
    info = json.loads(path.read_text())
    missing = [k for k in ("run_id", "model_uri", "experiment_id") if not info.get(k)]
    if missing:
        raise CiError(f"run-info file {path} lacks {', '.join(missing)}")
    return info


def collect_artifacts(run_id: str, out: Path) -> list[str]:
    """Download every artifact of the run (model, evaluation, drift reference) into `out`."""
    import mlflow

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    mlflow.artifacts.download_artifacts(run_id=run_id, dst_path=str(out))
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())


def generate_dockerfile(model_uri: str, out: Path, env: dict[str, str]) -> Path:
    """What `mlflow models build-docker -m <uri> --env-manager local` would build, as a build context."""
    command = [str(Path(sys.executable).parent / "mlflow"), "models", "generate-dockerfile", "-m", model_uri,
               "--env-manager", "local", "-d", str(out)]
    result = subprocess.run(command, env=env)
    if result.returncode != 0:
        raise CiError(f"`mlflow models generate-dockerfile` exited {result.returncode} for {model_uri}")
    return out / "Dockerfile"


def check_dockerfile(dockerfile: Path) -> list[str]:
    """Problems with a generated model image (empty list: fine).

    A slim Python base (what `--env-manager local` gives), the model copied in, an entrypoint that
    starts MLflow's scoring server, and no credential anywhere in the build context.
    """
    if not dockerfile.is_file():
        return [f"no Dockerfile at {dockerfile}"]
    text = dockerfile.read_text()
    problems = []
    base = re.search(r"^FROM\s+(\S+)", text, re.MULTILINE)
    if not base or not re.fullmatch(r"python:3\.\d+(\.\d+)?-slim\S*", base.group(1)):
        problems.append(f"base image is not a slim Python: {base.group(1) if base else 'no FROM'}")
    if not re.search(r"^COPY\s+model_dir/\S*\s+/opt/ml/model", text, re.MULTILINE):
        problems.append("the model is not copied into /opt/ml/model")
    if not (dockerfile.parent / "model_dir").is_dir() or not list((dockerfile.parent / "model_dir").rglob("MLmodel")):
        problems.append("the build context has no model_dir/…/MLmodel")
    entry = re.search(r"^ENTRYPOINT\s+(.+)$", text, re.MULTILINE)
    if not entry or "_serve" not in entry.group(1) and "serve" not in entry.group(1):
        problems.append(f"the entrypoint does not serve the model: {entry.group(1) if entry else 'none'}")
    for path in dockerfile.parent.rglob("*"):
        if path.is_file() and path.suffix not in (".pkl", ".joblib", ".whl", ".gz"):
            found = SECRET_PATTERNS.search(path.read_text(errors="ignore"))
            if found:
                problems.append(f"{path.relative_to(dockerfile.parent)} mentions {found.group(0)!r}")
    secrets = [v for k, v in os.environ.items() if re.search(r"TOKEN|PASSWORD|SECRET", k) and len(v) >= 8]
    for path in dockerfile.parent.rglob("*"):
        if path.is_file() and any(v in path.read_text(errors="ignore") for v in secrets):
            problems.append(f"{path.relative_to(dockerfile.parent)} contains the value of a secret variable")
    return problems


def run_ci(
    settings: Settings,
    out: Path,
    entry: str = "tune",
    trials: int = CI_TRIALS,
    cv_folds: int = CI_CV_FOLDS,
    seed: int = DEFAULT_SEED,
    image_tag: str = "latest",
    dockerfile: bool = True,
    env_manager: str = "local",
    project_dir: Path | None = None,
    progress=print,
) -> CiResult:
    """Train through the MLflow Project, collect what the run produced, and (here) generate its Dockerfile."""
    from msml.tracking import setup_tracking

    if entry not in ENTRY_POINTS:
        raise CiError(f"unknown entry point {entry!r}; choose one of {', '.join(ENTRY_POINTS)}")
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    project_dir = Path(project_dir or settings.root / PROJECT_DIR).resolve()
    if not (project_dir / "MLproject").is_file():
        raise CiError(f"no MLproject file in {project_dir} (run `msml project render` in the repository root)")
    tracking_uri = absolute_tracking_uri(settings.tracking_uri, Path.cwd())
    settings = settings.with_overrides(tracking_uri=tracking_uri)
    env = project_env(settings, tracking_uri)
    seconds: dict[str, float] = {}
    run_info = out / RUN_INFO_FILE
    run_info.unlink(missing_ok=True)  # a stale file from an earlier run must not pass for this one

    started = time.perf_counter()
    # created here with the settings' artifact root; `mlflow run` would pick its own default
    setup_tracking(settings)
    seconds["setup"] = time.perf_counter() - started

    command = mlflow_run_command(project_dir, entry, settings.experiment, run_info, settings.processed_dir.resolve(),
                                 seed=seed, trials=trials, cv_folds=cv_folds, env_manager=env_manager)
    progress(f"[ci] {' '.join(command)}")
    started = time.perf_counter()
    result = subprocess.run(command, env=env)
    seconds["mlflow_run"] = time.perf_counter() - started
    if result.returncode != 0:
        raise CiError(f"`mlflow run -e {entry}` exited {result.returncode}: the entry point's error is above")
    info = read_run_info(run_info)
    progress(f"[ci] run {info['run_id']} → {info['model_uri']} ({seconds['mlflow_run']:.1f} s)")

    started = time.perf_counter()
    artifacts = collect_artifacts(info["run_id"], out / ARTIFACTS_DIR)
    seconds["collect_artifacts"] = time.perf_counter() - started
    progress(f"[ci] {len(artifacts)} artifact files in {out / ARTIFACTS_DIR}")

    summary = CiResult(
        run_id=info["run_id"], model_uri=f"runs:/{info['run_id']}/model", experiment_id=info["experiment_id"],
        experiment=settings.experiment, entry_point=entry, metrics=info["metrics"],
        image=f"{settings.image}:{image_tag}", artifacts=artifacts, seconds=seconds,
    )
    if dockerfile:
        started = time.perf_counter()
        path = generate_dockerfile(summary.model_uri, out / DOCKER_DIR, env)
        seconds["generate_dockerfile"] = time.perf_counter() - started
        problems = check_dockerfile(path)
        if problems:
            raise CiError(f"generated {path} is not a serving image: " + "; ".join(problems))
        progress(f"[ci] {path} checked ({seconds['generate_dockerfile']:.1f} s)")
    summary.write(out / SUMMARY_FILE)
    progress(f"[ci] summary {out / SUMMARY_FILE}; seconds: "
             + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items()))
    return summary
