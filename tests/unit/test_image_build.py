"""The image build step's definitions: the serving-env layer is the same in Python and in both training
workflows, the engine's settings are the ones this host needs, and a missing engine is a clear error."""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path

import pytest
import yaml

from msml.ops.ci import AS_BUILT_SUFFIX, SERVING_ENV, serving_env_dockerfile
from msml.ops.containers import CONTAINERS_CONF, Engine, EngineError, base_image_name, stand_in_dockerfile

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = [ROOT / ".github/workflows/training.yml", ROOT / "src/msml/handin/templates/training.yml.tmpl"]


def docker_step(path: Path) -> str:
    text = path.read_text()
    if path.suffix == ".tmpl":  # the exported workflow, as the export fills it
        from msml.config import load_settings
        from msml.handin.course import template, template_values

        text = template(path.name, template_values(load_settings(root=ROOT), ROOT))
    steps = yaml.safe_load(text)["jobs"]["train"]["steps"]
    runs = [s["run"] for s in steps if "mlflow models build-docker" in s.get("run", "")]
    assert len(runs) == 1, path
    return runs[0]


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_bakes_the_serving_env_into_the_pushed_image(path):
    run = docker_step(path)
    env_line = serving_env_dockerfile("base").splitlines()[1]
    assert env_line in run.splitlines(), f"{path}: the image step must add `{env_line}` (SERVING_ENV)"
    assert f'-n "$IMAGE:$GITHUB_SHA{AS_BUILT_SUFFIX}"' in run
    assert f"FROM $IMAGE:$GITHUB_SHA{AS_BUILT_SUFFIX}" in run.splitlines()
    assert 'docker build -t "$IMAGE:$GITHUB_SHA" -' in run  # the pushed tag is the one with the layer


def test_serving_env_layer():
    assert serving_env_dockerfile("img:1-as-built") == (
        "FROM img:1-as-built\nENV " + " ".join(f"{k}={v}" for k, v in SERVING_ENV.items()) + "\n"
    )
    assert SERVING_ENV["OMP_NUM_THREADS"] == "1"


def test_engine_settings_this_host_needs():
    conf = tomllib.loads(CONTAINERS_CONF)
    assert conf["engine"] == {"runtime": "runc", "cgroup_manager": "cgroupfs"}
    assert conf["containers"] == {"default_ulimits": ["nofile=4096:4096", "nproc=4096:4096"], "netns": "host"}


def test_stand_in_is_named_as_mlflow_asks_and_labelled():
    from mlflow.models.docker_utils import PYTHON_SLIM_BASE_IMAGE

    assert base_image_name("3.11.7") == PYTHON_SLIM_BASE_IMAGE.format(version="3.11.7")
    text = stand_in_dockerfile("root", "3.11.7", "abc")
    assert 'org.msml.stand-in="true"' in text and "STAND-IN" in text and "never to be pushed" in text
    assert "EXTERNALLY-MANAGED" in text and "PIP_NO_INDEX=1" in text


def test_missing_engine_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no podman, runc or docker on it
    with pytest.raises(EngineError, match="podman, runc, docker not installed"):
        Engine(cache=tmp_path).start()


def test_an_engine_that_cannot_start_says_why():
    """The real podman service, pointed at a storage root it cannot create, exits; the error carries its reason."""
    if shutil.which("podman") is None:
        pytest.skip("podman not installed")
    with pytest.raises(EngineError, match=r"podman system service` exited .*no-such-dir"):
        Engine(cache=Path("/proc/no-such-dir")).start()
