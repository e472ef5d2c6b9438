"""Prometheus, Alertmanager and the webhook receiver as plain processes on 127.0.0.1 (no systemd, no Docker).

`start()` renders the configs for the given ports and timing into `<run_dir>/monitoring/`, starts whatever
is not already running (pid files in `run_dir`), and waits until each answers `/-/ready`; `stop()` stops
exactly the processes its pid files name. Both are idempotent: `make demo` / `make down` and the tests use them.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sys
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from msml.config import DEFAULT_PORTS
from msml.errors import MissingProgramError, ServerError
from msml.monitoring.receiver import TOKEN_ENV
from msml.monitoring.render import (
    ALERTS_FILE,
    PRODUCTION,
    RECORDING_FILE,
    Ports,
    Targets,
    Timing,
    _yaml,
    alerting_rules,
    alertmanager_config,
    notifications_path,
    prometheus_config,
    recording_rules,
)
from msml.ops.processes import PidFile, check_port, read_pid, start_background, wait_ready
from msml.ops.processes import stop as stop_pidfile

COMPONENTS = ("prometheus", "alertmanager", "receiver")
TOKEN_FILE = "receiver.token"  # beside alertmanager.yml, 0600: the secret is never in a config file


@dataclass(frozen=True)
class Stack:
    run_dir: Path
    ports: Ports

    @property
    def workdir(self) -> Path:
        return self.run_dir / "monitoring"

    @property
    def prometheus_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.prometheus}"

    @property
    def alertmanager_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.alertmanager}"

    @property
    def receiver_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.receiver}"

    @property
    def notifications(self) -> Path:
        return notifications_path(self.run_dir)

    def pidfile(self, component: str) -> Path:
        return self.run_dir / f"{component}.pid"

    def log(self, component: str) -> Path:
        return self.run_dir / f"{component}.log"

    def urls(self) -> dict[str, str]:
        return {
            "prometheus": self.prometheus_url,
            "alertmanager": self.alertmanager_url,
            "receiver": f"{self.receiver_url}/alerts",
        }


def binary(*names: str) -> str:
    """The first of `names` on PATH (Debian calls Alertmanager `prometheus-alertmanager`)."""
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    raise MissingProgramError(
        f"none of {', '.join(names)} is installed (run `make system`, which runs scripts/install-system-deps.sh)"
    )


# The CLI option that moves each component's port (named in the "port busy" message).
PORT_OPTIONS = {"prometheus": "--prometheus-port", "alertmanager": "--alertmanager-port", "receiver": "--receiver-port"}


def port_of(ports: Ports, component: str) -> int:
    return getattr(ports, component)


def check_ports(run_dir: str | Path, ports: Ports = DEFAULT_PORTS) -> None:
    """PortBusyError unless each component's port is free or held by the component we already run."""
    for name, option in PORT_OPTIONS.items():
        if read_pid(Path(run_dir) / f"{name}.pid") is None:
            check_port(port_of(ports, name), name, option)


def write_configs(stack: Stack, timing: Timing = PRODUCTION) -> dict[str, Path]:
    """Render prometheus.yml (absolute rule paths), the rule files and alertmanager.yml into the stack's workdir."""
    work = stack.workdir
    (work / "rules").mkdir(parents=True, exist_ok=True)
    targets = Targets.local(stack.ports)
    paths = {
        "recording": work / "rules" / RECORDING_FILE,
        "alerts": work / "rules" / ALERTS_FILE,
        "prometheus": work / "prometheus.yml",
        "alertmanager": work / "alertmanager.yml",
    }
    paths["recording"].write_text(_yaml(recording_rules()))
    paths["alerts"].write_text(_yaml(alerting_rules(timing)))
    paths["prometheus"].write_text(
        _yaml(prometheus_config(targets, timing, rule_files=[str(paths["recording"]), str(paths["alerts"])]))
    )
    paths["token"] = work / TOKEN_FILE
    paths["alertmanager"].write_text(_yaml(alertmanager_config(targets, timing, token_file=str(paths["token"]))))
    return paths


def receiver_token(stack: Stack, env: Mapping[str, str] | None = None) -> str:
    """The bearer token Alertmanager sends the receiver's /trigger: MSML_RECEIVER_TOKEN, else the one this stack
    already uses (a running receiver keeps its token), else a new random one; written (0600) where
    alertmanager.yml's `credentials_file` points."""
    env = os.environ if env is None else env
    path = stack.workdir / TOKEN_FILE
    token = env.get(TOKEN_ENV) or (path.read_text().strip() if path.exists() else "") or secrets.token_urlsafe(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token)
    return token


def commands(stack: Stack, paths: dict[str, Path], timing: Timing = PRODUCTION) -> dict[str, list[str]]:
    p, work = stack.ports, stack.workdir
    return {
        "prometheus": [
            binary("prometheus"),
            f"--config.file={paths['prometheus']}",
            f"--storage.tsdb.path={work / 'prometheus-data'}",
            "--storage.tsdb.retention.time=2d",
            f"--web.listen-address=127.0.0.1:{p.prometheus}",
            f"--web.external-url={stack.prometheus_url}/",
            f"--rules.alert.resend-delay={timing.resend_delay}",
        ],
        "alertmanager": [
            binary("alertmanager", "prometheus-alertmanager"),
            f"--config.file={paths['alertmanager']}",
            f"--storage.path={work / 'alertmanager-data'}",
            f"--web.listen-address=127.0.0.1:{p.alertmanager}",
            f"--web.external-url={stack.alertmanager_url}/",
            "--cluster.listen-address=",
        ],
        "receiver": receiver_command(p.receiver, stack.notifications),
    }


def receiver_command(port: int, out: Path) -> list[str]:
    """The webhook receiver (`msml monitoring receiver`) on 127.0.0.1:`port`, notifications appended to `out`."""
    receiver = [sys.executable, "-m", "msml.cli", "monitoring", "receiver"]
    return [*receiver, "--host", "127.0.0.1", "--port", str(port), "--out", str(out)]


def start(
    run_dir: str | Path,
    ports: Ports = DEFAULT_PORTS,
    timing: Timing = PRODUCTION,
    timeout: float = 60.0,
    receiver_env: Mapping[str, str] | None = None,
) -> Stack:
    """Start the receiver, Alertmanager and Prometheus (those not already running); wait until all are ready.
    `receiver_env`: extra environment of the receiver (the loop's MSML_LOOP_* settings, msml.loop.trigger)."""
    stack = Stack(Path(run_dir), ports)
    check_ports(run_dir, ports)
    paths = write_configs(stack, timing)
    token = receiver_token(stack)
    cmds = commands(stack, paths, timing)
    ready = {
        "prometheus": f"{stack.prometheus_url}/-/ready",
        "alertmanager": f"{stack.alertmanager_url}/-/ready",
        "receiver": f"{stack.receiver_url}/-/ready",
    }
    started = []
    try:
        for name in ("receiver", "alertmanager", "prometheus"):  # receivers first: nothing is sent into the void
            if read_pid(stack.pidfile(name)) is None:
                env = {**os.environ, **(receiver_env or {}), TOKEN_ENV: token} if name == "receiver" else None
                start_background(cmds[name], stack.pidfile(name), stack.log(name), env=env)
                started.append(name)
        for name in ("receiver", "alertmanager", "prometheus"):
            pidfile = stack.pidfile(name)
            wait_ready(
                ready[name], timeout, alive=lambda pidfile=pidfile: read_pid(pidfile) is not None, log=stack.log(name)
            )
    except BaseException:
        for name in started:  # only what this call started
            stop_pidfile(stack.pidfile(name))
        raise
    return stack


def stop_report(run_dir: str | Path) -> dict[str, PidFile]:
    """Stop the stack's processes its pid files in `run_dir` still name; what each pid file held, in stop order."""
    run_dir = Path(run_dir)
    return {name: stop_pidfile(run_dir / f"{name}.pid") for name in ("prometheus", "alertmanager", "receiver")}


def stop(run_dir: str | Path) -> list[str]:
    """Stop the stack's processes named by the pid files in `run_dir`; returns the names of those stopped."""
    return [name for name, found in stop_report(run_dir).items() if found.state == "ours"]


def running(run_dir: str | Path) -> dict[str, int | None]:
    run_dir = Path(run_dir)
    return {name: read_pid(run_dir / f"{name}.pid") for name in COMPONENTS}


def target_health(prometheus_url: str) -> dict[str, str]:
    """{job: health} of every active scrape target, from Prometheus's own API."""
    with urllib.request.urlopen(f"{prometheus_url}/api/v1/targets?state=active", timeout=5) as resp:
        targets = json.loads(resp.read())["data"]["activeTargets"]
    return {t["labels"]["job"]: t["health"] for t in targets}


def wait_targets_up(prometheus_url: str, timeout: float = 60.0) -> dict[str, str]:
    """Block until Prometheus has scraped every target successfully; ServerError naming those still down."""
    deadline = time.monotonic() + timeout
    health: dict[str, str] = {}
    while time.monotonic() < deadline:
        try:
            health = target_health(prometheus_url)
        except (OSError, ValueError, KeyError):
            health = {}
        if health and all(h == "up" for h in health.values()):
            return health
        time.sleep(1.0)
    down = ", ".join(f"{job} ({h})" for job, h in health.items() if h != "up") or "no answer from Prometheus"
    raise ServerError(f"Prometheus targets not up after {timeout:.0f} s: {down} ({prometheus_url}/targets)")
