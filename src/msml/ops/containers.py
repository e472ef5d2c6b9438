"""A Docker-compatible container engine on a machine without Docker, and the stand-in base image it needs.

`Engine` starts Debian's podman as a Docker API server (`podman system service`) on a private socket, with
the settings this host needs, and stops exactly the process it started. With `DOCKER_HOST` pointing at
that socket, the docker CLI, the docker SDK and `mlflow models build-docker` run unchanged.

Settings (each was needed on this host; see issue #16):
- runtime runc: crun fails on the host's hybrid cgroup layout; cgroup_manager cgroupfs: no systemd here;
- default_ulimits nofile/nproc 4096: podman's defaults (from the host's hard limits) are refused;
- netns host: containers serve on the host's ports, no CNI bridge needed;
- storage driver overlay under our own --root/--runroot in the cache dir: `vfs` copies every layer
  (~21 GB for one model build); overlay works natively here.

`ensure_base_image` builds the image MLflow's Dockerfile starts FROM (`python:<version>-slim`) when Docker
Hub is out of reach: a Debian bookworm root from Debian packages (mmdebstrap) plus a wheelhouse the
host's pip downloaded, so `pip install` inside the build resolves offline. It is a STAND-IN, labelled so,
cached per machine (CI runs a clean clone on the same machine) and never pushed. On GitHub the real
base image is pulled; nothing there uses this module.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from msml.errors import PipelineError

CONTAINERS_CONF = """\
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"

[containers]
default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]
netns = "host"
"""
STORAGE_DRIVER = "overlay"
DEBIAN_SUITE = "bookworm"
DEBIAN_PYTHON = "3.11"  # bookworm's python3: the wheels must fit it, whatever Python the host runs
# python-is-python3: MLflow's Dockerfile and container entrypoint call `python`, the slim images' name for it.
DEBIAN_PACKAGES = ("python3", "python3-pip", "python3-venv", "ca-certificates", "python-is-python3")
STAND_IN_LABEL = "org.msml.stand-in"
WHEELS_LABEL = "org.msml.wheelhouse"
LOG_PREFIX = "[stand-in base image]"  # every log line about the stand-in says what it is


class EngineError(PipelineError):
    """The container engine could not start or a container command failed; the message says which."""


def cache_dir() -> Path:
    """Per-machine cache outside any clone: $MSML_CACHE, else $XDG_CACHE_HOME/msml, else ~/.cache/msml."""
    if os.environ.get("MSML_CACHE"):
        return Path(os.environ["MSML_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "msml"


def missing_tools(tools: Iterable[str] = ("podman", "runc", "docker")) -> list[str]:
    return [t for t in tools if shutil.which(t) is None]


@dataclass
class Engine:
    """`podman system service` on a private socket; storage under `cache/containers` (shared by runs, so
    the stand-in base image survives), socket and config in a fresh temp dir. `Engine.attach(host)`
    instead talks to a podman service someone else started (e.g. `msml engine`) and never stops it."""

    cache: Path = field(default_factory=cache_dir)
    log: Callable[[str], None] = print
    host: str | None = None  # unix://<socket> once started or attached
    proc: subprocess.Popen | None = None
    workdir: Path | None = None

    @classmethod
    def attach(cls, host: str, log: Callable[[str], None] = print) -> Engine:
        return cls(log=log, host=host)

    @property
    def docker_host(self) -> str:
        assert self.host is not None, "engine not started"
        return self.host

    def podman_args(self) -> list[str]:
        store = self.cache / "containers"
        return [
            "podman",
            "--root",
            str(store / "root"),
            "--runroot",
            str(store / "runroot"),
            "--storage-driver",
            STORAGE_DRIVER,
        ]

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """Environment for docker / mlflow commands that talk to this engine."""
        env = dict(os.environ if base is None else base)
        env["DOCKER_HOST"] = self.docker_host
        if self.workdir is not None:
            env["CONTAINERS_CONF"] = str(self.workdir / "containers.conf")
        env["DOCKER_BUILDKIT"] = "0"  # podman's API serves the classic build endpoint, not BuildKit
        return env

    def start(self, timeout: float = 30.0) -> Engine:
        missing = missing_tools()
        if missing:
            raise EngineError(
                f"cannot start the container engine: {', '.join(missing)} not installed "
                "(run scripts/install-system-deps.sh)"
            )
        self.workdir = Path(tempfile.mkdtemp(prefix="msml-podman-"))
        (self.workdir / "containers.conf").write_text(CONTAINERS_CONF)
        self.host = f"unix://{self.workdir / 'podman.sock'}"
        log_path = self.workdir / "service.log"
        command = [*self.podman_args(), "system", "service", "--time=0", self.docker_host]
        with open(log_path, "ab") as out:
            self.proc = subprocess.Popen(
                command,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env(),
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                code, tail = self.proc.returncode, log_path.read_text(errors="replace")[-2000:].strip()
                self.stop()
                raise EngineError(f"`podman system service` exited {code}: {tail}")
            if (self.workdir / "podman.sock").exists() and self.docker(
                "version", "--format", "{{.Server.Version}}", check=False, quiet=True
            ).returncode == 0:
                self.log(f"[engine] podman API on {self.docker_host} (storage {self.cache / 'containers'})")
                return self
            time.sleep(0.2)
        self.stop()
        raise EngineError(f"`podman system service` did not answer on {self.host} within {timeout:.0f} s")

    def stop(self) -> None:
        """Stop the service this object started (its process group) and remove its temp dir."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait(timeout=5)
        self.proc = None
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = self.host = None

    def __enter__(self) -> Engine:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def docker(
        self, *args: str, check: bool = True, quiet: bool = False, input: bytes | None = None, cwd: Path | None = None
    ) -> subprocess.CompletedProcess:
        """The docker CLI against this engine (what CI's own steps run)."""
        result = subprocess.run(
            ["docker", *args],
            env=self.env(),
            input=input,
            cwd=cwd,
            capture_output=quiet,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
        if check and result.returncode != 0:
            raise EngineError(f"`docker {' '.join(args)}` exited {result.returncode}")
        return result

    def image_env(self, image: str) -> dict[str, str]:
        result = self.docker("image", "inspect", "--format", "{{json .Config.Env}}", image, quiet=True)
        return dict(item.split("=", 1) for item in json.loads(result.stdout or b"[]") or [])

    def is_podman(self) -> bool:
        result = self.docker("version", "--format", "{{json .Server.Components}}", check=False, quiet=True)
        return result.returncode == 0 and b"Podman" in result.stdout

    def image_labels(self, image: str) -> dict[str, str] | None:
        """The image's labels, or None when the engine has no such image."""
        result = self.docker("image", "inspect", "--format", "{{json .Config.Labels}}", image, check=False, quiet=True)
        if result.returncode != 0:
            return None
        return json.loads(result.stdout or b"null") or {}


# --- the stand-in base image ---------------------------------------------------------------------------------


def base_image_name(python_version: str) -> str:
    """What MLflow's generated Dockerfile asks for (mlflow.models.docker_utils.PYTHON_SLIM_BASE_IMAGE)."""
    return f"python:{python_version}-slim"


def rootfs_tar(cache: Path, log: Callable[[str], None] = print) -> Path:
    """The Debian root file system (built once per machine with mmdebstrap, ~2–3 min; then cached)."""
    out = cache / "base" / f"{DEBIAN_SUITE}-python-rootfs.tar"
    if out.is_file():
        return out
    if shutil.which("mmdebstrap") is None:
        raise EngineError("mmdebstrap is not installed (run scripts/install-system-deps.sh)")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".partial.tar")
    log(f"{LOG_PREFIX} mmdebstrap {DEBIAN_SUITE} with {', '.join(DEBIAN_PACKAGES)} → {out}")
    result = subprocess.run(
        [
            "mmdebstrap",
            "--variant=minbase",
            "--format=tar",
            f"--include={','.join(DEBIAN_PACKAGES)}",
            DEBIAN_SUITE,
            str(partial),
        ],
        stdin=subprocess.DEVNULL,
    )
    if result.returncode != 0:
        partial.unlink(missing_ok=True)
        raise EngineError(f"mmdebstrap exited {result.returncode} building the stand-in root file system")
    partial.rename(out)  # only a complete tar is ever reused
    return out


def download_wheels(requirements: list[str], wheelhouse: Path, log: Callable[[str], None] = print) -> None:
    """The host's pip fetches what the image's `pip install` steps will ask for (containers cannot reach the
    package index here). Cumulative: the wheelhouse keeps earlier wheels, so one base serves several models."""
    wheelhouse.mkdir(parents=True, exist_ok=True)
    log(f"{LOG_PREFIX} pip download {len(requirements)} requirements → {wheelhouse}")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--only-binary=:all:",
            "--python-version",
            DEBIAN_PYTHON,
            "-d",
            str(wheelhouse),
            *requirements,
        ],
        stdin=subprocess.DEVNULL,
    )
    if result.returncode != 0:
        raise EngineError(f"pip download exited {result.returncode} for {' '.join(requirements)}")


def requirements_digest(requirements: list[str]) -> str:
    return hashlib.sha256("\n".join(sorted(set(requirements))).encode()).hexdigest()[:16]


def ensure_base_image(
    engine: Engine, python_version: str, requirements: list[str], log: Callable[[str], None] = print
) -> str:
    """Make `python:<version>-slim` exist in the engine's storage as a stand-in with `requirements` offline.

    Reused when the cached image was built for the same requirement set; otherwise only the wheelhouse
    layer is rebuilt (the Debian root is cached as a tar). Returns the image name.
    """
    name = base_image_name(python_version)
    root_image = f"localhost/msml-stand-in-root:{DEBIAN_SUITE}"
    # the recipe is part of the key: changing it rebuilds the cached image
    digest = requirements_digest([*requirements, stand_in_dockerfile(root_image, python_version, "")])
    labels = engine.image_labels(name)
    if labels is not None and STAND_IN_LABEL not in labels:
        log(f"[engine] {name} is a real image (no {STAND_IN_LABEL} label): using it")
        return name
    if labels is not None and labels.get(WHEELS_LABEL) == digest:
        log(f"{LOG_PREFIX} {name} (cached, wheelhouse {digest}): Debian {DEBIAN_SUITE}'s python3, not python.org's")
        return name

    started = time.perf_counter()
    tar = rootfs_tar(engine.cache, log)
    if engine.image_labels(root_image) is None:
        log(f"{LOG_PREFIX} docker import {tar} → {root_image}")
        engine.docker("import", "--change", 'CMD ["python3"]', str(tar), root_image)
    with tempfile.TemporaryDirectory(prefix="msml-base-") as tmp:
        context = Path(tmp)
        download_wheels(requirements, cache_wheelhouse := engine.cache / "wheelhouse", log)
        shutil.copytree(cache_wheelhouse, context / "wheelhouse")
        (context / "requirements.txt").write_text("\n".join(requirements) + "\n")
        (context / "Dockerfile").write_text(stand_in_dockerfile(root_image, python_version, digest))
        log(f"{LOG_PREFIX} building {name} from {root_image} + wheelhouse ({digest})")
        engine.docker("build", "-t", name, str(context))
    engine.docker("image", "prune", "-f", check=False, quiet=True)  # the stand-in it replaced, if any
    log(
        f"{LOG_PREFIX} {name} ready in {time.perf_counter() - started:.0f} s: a stand-in for the Docker Hub image, "
        "never pushed"
    )
    return name


def stand_in_dockerfile(root_image: str, python_version: str, digest: str) -> str:
    return f"""\
FROM {root_image}
LABEL {STAND_IN_LABEL}="true" \\
      {WHEELS_LABEL}="{digest}" \\
      org.opencontainers.image.description="STAND-IN for python:{python_version}-slim: Debian {DEBIAN_SUITE} \
python3 + an offline wheelhouse; built by msml for local tests, never to be pushed"
# Debian marks its python as externally managed; the official slim image (which this stands in for) does not.
RUN rm -f /usr/lib/python3*/EXTERNALLY-MANAGED
COPY wheelhouse /wheelhouse
# pip inside the build resolves from the wheelhouse only: the package index is out of reach from containers.
ENV PIP_NO_INDEX=1 PIP_FIND_LINKS=/wheelhouse PIP_DISABLE_PIP_VERSION_CHECK=1
# Pre-installed, once per machine, exactly what the model image's pip steps install (mlflow, the model's
# requirements, gunicorn[gevent]): those steps still run, find them satisfied, and the model build drops
# from minutes of unpacking wheels into overlay layers to seconds. The set is read from the same model files.
# Likewise nginx, which the model Dockerfile's first step apt-installs.
RUN apt-get -y update && apt-get install -y --no-install-recommends nginx && rm -rf /var/lib/apt/lists/*
COPY requirements.txt /tmp/msml-requirements.txt
RUN pip install -r /tmp/msml-requirements.txt && rm /tmp/msml-requirements.txt
"""


def run_model_image(engine: Engine, image: str, name: str, port: int, extra_env: dict[str, str] | None = None) -> str:
    """Start the model image detached on the host network, serving on 127.0.0.1:`port`.

    With host networking MLflow's fixed ports (nginx on 8080, gunicorn on 8000) would collide with
    whatever else runs here, so nginx is switched off (MLflow's DISABLE_NGINX) and gunicorn binds the given
    port, keeping the image's own GUNICORN_CMD_ARGS (gevent workers, timeout). Returns the container name.
    """
    gunicorn = engine.image_env(image).get("GUNICORN_CMD_ARGS", "")
    env = {
        "DISABLE_NGINX": "true",
        "GUNICORN_CMD_ARGS": f"{gunicorn} --bind 127.0.0.1:{port}".strip(),
        **(extra_env or {}),
    }
    args = ["run", "-d", "--name", name, "--network", "host"]
    for key, value in env.items():
        args += ["-e", f"{key}={value}"]
    engine.docker(*args, image, quiet=True)
    return name


def remove_container(engine: Engine, name: str) -> None:
    engine.docker("rm", "-f", name, check=False, quiet=True)


def container_logs(engine: Engine, name: str, tail: int = 40) -> str:
    result = engine.docker("logs", "--tail", str(tail), name, check=False, quiet=True)
    return (result.stdout + result.stderr).decode(errors="replace")


def remove_images(engine: Engine, images: Iterable[str], log: Callable[[str], None] = print) -> None:
    """Remove images we built (never the cached stand-in base); dangling layers they left go too."""
    for image in images:
        if engine.image_labels(image) is not None:
            engine.docker("image", "rm", "-f", image, check=False, quiet=True)
            log(f"[engine] removed {image}")
    engine.docker("image", "prune", "-f", check=False, quiet=True)
