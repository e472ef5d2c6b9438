"""One error family, caught once: every expected failure prints one line on stderr with its documented exit
code (msml.errors), never a traceback; credentials in a URI are masked in all output; --version; help on
every option. Each case runs the real `msml` command."""

from __future__ import annotations

import os
import socket
import subprocess

import pytest
import typer

from msml.cli import app
from tests.conftest import BIN, run_msml
from tests.integration.serving_fixtures import free_port


def _one_line_error(result, code: int, *needles: str) -> str:
    err = result.stderr.strip()
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    for needle in needles:
        assert needle in err, err
    return err


def _ports_env(tmp_path, **held) -> list[str]:
    """Free loopback ports for every server of the demo, as `msml demo` options."""
    names = ("gateway", "model", "mlflow", "prometheus", "alertmanager", "receiver")
    return [arg for name in names for arg in (f"--{name}-port", str(held.get(name) or free_port()))]


def test_bad_data_exit_2(tmp_path):
    result = run_msml("validate", "--raw", str(tmp_path / "missing.csv"))
    _one_line_error(result, 2, "missing.csv")


def test_tracking_server_down_exit_3_and_its_credentials_masked(tmp_path, processed):
    uri = f"http://alice:s3cret-token@127.0.0.1:{free_port()}"  # nothing listens there
    result = run_msml("train", "--data", str(processed), env={"MLFLOW_TRACKING_URI": uri, "MSML_HOME": str(tmp_path)})
    _one_line_error(result, 3, "is not reachable", "http://***@127.0.0.1")
    assert "s3cret" not in result.stdout + result.stderr and "alice" not in result.stdout + result.stderr
    assert "(tracking: http://***@127.0.0.1" in result.stdout  # the command's own progress line, masked too


def test_port_held_by_a_foreign_listener_stops_the_demo_before_training(tmp_path):
    with socket.socket() as holder:  # a listener that is not ours, on the gateway's port
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = run_msml("demo", *_ports_env(tmp_path, gateway=port), env={"MSML_HOME": str(tmp_path)}, timeout=120)
    _one_line_error(result, 4, f"port {port} (gateway) is held by pid {os.getpid()}", "--gateway-port")
    assert "[1/" not in result.stdout  # stopped before step 1: nothing preprocessed, trained or started
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "data").exists()
    assert not list((tmp_path / ".run").glob("*.pid")) if (tmp_path / ".run").exists() else True


def test_missing_system_program_exit_5(tmp_path):
    env = {"MSML_HOME": str(tmp_path), "PATH": "/nonexistent"}  # no prometheus on PATH
    result = run_msml(
        "monitoring",
        "up",
        "--gateway-port",
        str(free_port()),
        "--prometheus-port",
        str(free_port()),
        "--alertmanager-port",
        str(free_port()),
        "--receiver-port",
        str(free_port()),
        env=env,
    )
    _one_line_error(result, 5, "prometheus is installed", "make system")


@pytest.mark.slow
def test_server_that_never_gets_ready_exit_6(tmp_path):
    """MLflow's scoring server exits (no such model): reported in one line with its log, exit 6."""
    env = {"MSML_HOME": str(tmp_path), "MLFLOW_TRACKING_URI": (tmp_path / "mlruns").as_uri()}  # empty store
    result = run_msml(
        "serve",
        "--port",
        str(free_port()),
        "--model-uri",
        "models:/nope@champion",
        "--wait",
        "120",
        env=env,
        timeout=180,
    )
    _one_line_error(result, 6, "exited before answering", "not found", "model-server.log")


def test_export_failure_exit_7(tmp_path):
    result = run_msml(
        "export", "--out", str(tmp_path / "dist"), "--no-evidence", env={"MSML_HOME": str(tmp_path)}, timeout=300
    )
    _one_line_error(result, 7, "has no pyproject.toml")


def test_version():
    result = run_msml("--version")
    assert result.returncode == 0 and result.stdout.startswith("msml 0.1.0 (mlflow 2.19.0, Python 3."), result.stdout


def test_every_option_has_help():
    def walk(command, path: str):
        for param in command.params:
            if param.param_type_name == "option" and not getattr(param, "hidden", False):
                yield path, param
        for name, sub in getattr(command, "commands", {}).items():
            yield from walk(sub, f"{path} {name}")

    missing = [
        f"{path} {param.opts[0]}"
        for path, param in walk(typer.main.get_command(app), "msml")
        if not (param.help or "").strip() and param.opts[0] != "--help"
    ]
    assert not missing, "options without help: " + ", ".join(missing)


def test_an_unexpected_error_shows_a_traceback_without_local_variables():
    code = (
        "import sys\nfrom msml import cli\n"
        "@cli.app.command('boom')\ndef boom():\n    password = 'hunter2-in-a-local'\n    raise ValueError('a bug')\n"
        "sys.argv = ['msml', 'boom']\ncli.main()\n"
    )
    result = subprocess.run(
        [str(BIN / "python"), "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert result.returncode == 1 and "ValueError: a bug" in result.stderr, result.stderr
    assert "hunter2" not in result.stdout + result.stderr
