"""The retraining job that CI runs (`.github/workflows/training.yml`) and `make ci-local` proves here.

Steps, each timed: make sure the experiment exists → `mlflow run MLProject -e <entry>` (the entry
point logs into the run `mlflow run` opened and writes the run-info file) → read the run id from
that file → download the run's artifacts (model included) → write `run_summary.json` (run id,
model URI, metrics, image tag). Then the image, as the workflow builds it: `build_image()` runs
`mlflow models build-docker` and adds the serving-environment layer (`SERVING_ENV`). Here it runs
against podman's Docker API (`msml.ops.containers`, with a stand-in base image); without any engine,
`generate_dockerfile()` writes the Dockerfile that command would build and `check_dockerfile()`
inspects it.

Its length (~400 lines): the job's steps and the image's build and checks share the run summary and the
serving-environment layer; split apart, each half would restate them.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from msml.config import Settings
from msml.errors import PipelineError
from msml.ops.project import CI_CV_FOLDS, CI_TRIALS, DEFAULT_SEED, PROJECT_DIR

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


# The environment the pushed image serves with, added by the build step so no user has to set it.
# Why: MLflow's image starts one gevent worker per CPU and each worker's OpenMP/BLAS pool starts one
# thread per CPU too, so N workers × N spinning threads fight over N cores. Measured on 2 cores, 1-row
# requests at c=8: 39 req/s, p99 2,184 ms as built; 82 req/s, p99 134 ms with OMP_NUM_THREADS=1 (at
# c=32 the image as built fell to 2.2 req/s). The workers stay MLflow's (one per CPU): with one math
# thread each, that uses every core once. The same ENV line is in both training workflows (parity test).
SERVING_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
AS_BUILT_SUFFIX = "-as-built"  # tag suffix of what `mlflow models build-docker` itself produced


class CiError(PipelineError):
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
            path = uri[len(scheme) :]
            if path and not path.startswith("/"):
                return scheme + str((base / path).resolve())
    if "://" not in uri and not uri.startswith("/"):  # a bare local path is a file store
        return str((base / uri).resolve())
    return uri


def project_env(settings: Settings, tracking_uri: str) -> dict[str, str]:
    """The environment of `mlflow run`: venv on PATH, absolute tracking URI, the settings' root."""
    bin_dir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking_uri,
        "MSML_HOME": str(settings.root),
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",  # one tqdm line per file floods CI logs
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
    }
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
    command = [
        str(Path(sys.executable).parent / "mlflow"),
        "run",
        str(project_dir),
        "-e",
        entry,
        "--env-manager",
        env_manager,
        "--experiment-name",
        experiment,
        "--run-name",
        f"mlproject-{entry}",
    ]
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
    command = [
        str(Path(sys.executable).parent / "mlflow"),
        "models",
        "generate-dockerfile",
        "-m",
        model_uri,
        "--env-manager",
        "local",
        "-d",
        str(out),
    ]
    result = subprocess.run(command, env=env)
    if result.returncode != 0:
        raise CiError(f"`mlflow models generate-dockerfile` exited {result.returncode} for {model_uri}")
    return out / "Dockerfile"


def serving_env_dockerfile(base: str) -> str:
    """The layer the build step puts on top of `mlflow models build-docker`'s image (see SERVING_ENV)."""
    return f"FROM {base}\nENV " + " ".join(f"{k}={v}" for k, v in SERVING_ENV.items()) + "\n"


def model_base_and_requirements(model_uri: str, out: Path, tracking_uri: str) -> tuple[str, list[str]]:
    """The FROM image `mlflow models build-docker` will use (MLflow's own choice, from the model's
    python_env.yaml) and what the image's `pip install` steps ask for: mlflow (the Dockerfile's own step),
    the model's build dependencies and requirements.txt, and gunicorn[gevent] (MLflow's server deps).
    In-process: a `mlflow models generate-dockerfile` subprocess costs a minute on a busy machine."""
    import mlflow
    import yaml
    from mlflow.exceptions import MlflowException
    from mlflow.pyfunc.backend import PyFuncBackend
    from mlflow.version import VERSION

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking_uri)
    try:
        path = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(out)))
    except MlflowException as exc:
        raise CiError(f"cannot read the model {model_uri} from {tracking_uri}: {exc.message}") from exc
    finally:
        mlflow.set_tracking_uri(previous)
    base = PyFuncBackend({}, env_manager="local")._get_base_image(str(path), install_java=False)
    env_files = list(path.rglob("python_env.yaml"))
    if not env_files:
        raise CiError(f"no python_env.yaml in {model_uri}: the model was not logged by MLflow")
    python_env = yaml.safe_load(env_files[0].read_text())
    lines = (env_files[0].parent / "requirements.txt").read_text().splitlines()
    return base, [
        f"mlflow=={VERSION}",
        "gunicorn[gevent]",
        *python_env.get("build_dependencies", []),
        *(line.strip() for line in lines if line.strip() and not line.startswith(("#", "-"))),
    ]


@dataclass
class BuiltImage:
    name: str  # the image the workflow pushes: as built + SERVING_ENV
    as_built: str  # `mlflow models build-docker`'s own output
    base: str  # the FROM image
    seconds: dict[str, float] = field(default_factory=dict)


def build_image(
    model_uri: str,
    name: str,
    env: dict[str, str],
    progress: Callable[[str], None] = print,
    prepare_base: Callable[[str, list[str]], None] | None = None,
) -> BuiltImage:
    """Build the model's image as .github/workflows/training.yml does: `mlflow models build-docker
    --env-manager local`, then the SERVING_ENV layer, both through the Docker engine `env` names.

    `prepare_base(base, requirements)` runs first when given (here: the stand-in base image).
    """
    seconds: dict[str, float] = {}
    as_built = name + AS_BUILT_SUFFIX
    mlflow = str(Path(sys.executable).parent / "mlflow")
    with tempfile.TemporaryDirectory(prefix="msml-model-") as tmp:
        started = time.perf_counter()
        base, requirements = model_base_and_requirements(model_uri, Path(tmp), env["MLFLOW_TRACKING_URI"])
        seconds["inspect"] = time.perf_counter() - started
    if prepare_base is not None:
        started = time.perf_counter()
        prepare_base(base, requirements)
        seconds["base_image"] = time.perf_counter() - started
    command = [mlflow, "models", "build-docker", "-m", model_uri, "-n", as_built, "--env-manager", "local"]
    progress(f"[image] {' '.join(command)}")
    started = time.perf_counter()
    result = subprocess.run(command, env=env, stdin=subprocess.DEVNULL)
    seconds["build_docker"] = time.perf_counter() - started
    if result.returncode != 0:
        raise CiError(f"`mlflow models build-docker` exited {result.returncode} for {model_uri}")
    layer = serving_env_dockerfile(as_built)
    progress(f"[image] docker build -t {name} - <<EOF\n{layer}EOF")
    started = time.perf_counter()
    result = subprocess.run(["docker", "build", "-t", name, "-"], input=layer.encode(), env=env)
    seconds["serving_env"] = time.perf_counter() - started
    if result.returncode != 0:
        raise CiError(f"`docker build` of the serving-environment layer exited {result.returncode}")
    progress(f"[image] {name} built from {base} in {sum(seconds.values()):.0f} s")
    return BuiltImage(name=name, as_built=as_built, base=base, seconds=seconds)


def build_image_here(
    model_uri: str, name: str, env: dict[str, str], engine=None, progress: Callable[[str], None] = print
) -> BuiltImage:
    """`build_image` on this machine: through the Docker engine in DOCKER_HOST if set, else through podman
    (`engine`, a started msml.ops.containers.Engine) with the stand-in base image."""
    if engine is None:
        return build_image(model_uri, name, env, progress)
    from msml.ops.containers import LOG_PREFIX, ensure_base_image

    def stand_in(base: str, requirements: list[str]) -> None:
        if not base.startswith("python:"):
            raise CiError(f"MLflow chose {base} as the base image; only python:<version>-slim has a stand-in here")
        version = base.split(":", 1)[1].removesuffix("-slim")
        ensure_base_image(engine, version, requirements, log=progress)
        progress(f"{LOG_PREFIX} building FROM {base}: the stand-in, not Docker Hub's image")

    return build_image(model_uri, name, engine.env(env), progress, prepare_base=stand_in)


def build_image_with_engine(
    model_uri: str, name: str, env: dict[str, str], progress: Callable[[str], None] = print
) -> BuiltImage:
    """`build_image_here` with the engine chosen: the engine in DOCKER_HOST (podman's gets the stand-in
    base), else Docker's socket if present, else podman started for this build and stopped after (the
    images stay in its storage: `msml engine` serves them)."""
    from msml.ops.containers import Engine

    if env.get("DOCKER_HOST"):
        attached = Engine.attach(env["DOCKER_HOST"], log=progress)
        return build_image_here(
            model_uri, name, env, engine=attached if attached.is_podman() else None, progress=progress
        )
    if Path("/var/run/docker.sock").exists():
        return build_image_here(model_uri, name, env, progress=progress)
    with Engine(log=progress) as engine:
        return build_image_here(model_uri, name, env, engine=engine, progress=progress)


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
    if not entry or ("_serve" not in entry.group(1) and "serve" not in entry.group(1)):
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
    image: bool = False,
) -> CiResult:
    """Train through the MLflow Project, collect what the run produced, and generate its Dockerfile or
    (`image=True`) build its image as the workflow does (`build_image_with_engine`)."""
    from msml.tracking.client import setup_tracking

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

    command = mlflow_run_command(
        project_dir,
        entry,
        settings.experiment,
        run_info,
        settings.processed_dir.resolve(),
        seed=seed,
        trials=trials,
        cv_folds=cv_folds,
        env_manager=env_manager,
    )
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
        run_id=info["run_id"],
        model_uri=f"runs:/{info['run_id']}/model",
        experiment_id=info["experiment_id"],
        experiment=settings.experiment,
        entry_point=entry,
        metrics=info["metrics"],
        image=f"{settings.image}:{image_tag}",
        artifacts=artifacts,
        seconds=seconds,
    )
    if dockerfile:
        started = time.perf_counter()
        path = generate_dockerfile(summary.model_uri, out / DOCKER_DIR, env)
        seconds["generate_dockerfile"] = time.perf_counter() - started
        problems = check_dockerfile(path)
        if problems:
            raise CiError(f"generated {path} is not a serving image: " + "; ".join(problems))
        progress(f"[ci] {path} checked ({seconds['generate_dockerfile']:.1f} s)")
    if image:
        built = build_image_with_engine(summary.model_uri, summary.image, env, progress)
        seconds |= {f"image_{k}": v for k, v in built.seconds.items()}
    summary.write(out / SUMMARY_FILE)
    progress(f"[ci] summary {out / SUMMARY_FILE}; seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items()))
    return summary
