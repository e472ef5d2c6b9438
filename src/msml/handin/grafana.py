"""`msml evidence grafana`: the Grafana half of Kriteria 4, from Grafana 11.6 in Docker, against a `Stack`: `make
demo`'s (`demo_stack`) or the hand-in's own exporter and Prometheus (`msml handin --grafana`, `grafana_handin`).

Steps (each a function, so the ones before the container are proven where Docker is absent):
1. `docker_cli()`: Docker must be installed and its daemon answering (else one line, non-zero exit); a contact point
   chosen in the environment must have its variables (`msml.handin.contact`).
2. `check_stack()` (make demo): its servers must answer and Grafana's port must be free.
3. `run_command()`: Grafana alone, on the host network, with a copy of the committed provisioning files
   (`grafana_run.write_provisioning`: the chosen contact point added; the hand-in's Prometheus and receiver when the
   stack names them, else the compose host names mapped to 127.0.0.1); not `--rm`: its log is kept.
4. `check_provisioned()`: every rule present and evaluating without error before any traffic (execErrState is
   Error: an unreachable Prometheus stops the run at once with Grafana's words, not after 15 minutes).
5. `alerts_firing()`: the stack's traffic fires DataDriftPSI and LiveAccuracyDrop (drifted rows, feedback
   contradicting every prediction, both held 10 min); the panels are captured then, while the model is up; then
   every model server is stopped while traffic flows (ModelServerDown); all three firing, each rule's page and its
   notification (Grafana's contact-point page beside the payload delivered) are captured (`grafana_capture`).
   HighErrorRate is not one of them: it is inhibited by ModelServerDown, see `inhibited_among`.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from msml.config import DEFAULT_PORTS
from msml.errors import CaptureError
from msml.monitoring.definitions import alert
from msml.monitoring.render import (
    GRAFANA_IMAGE,
    PRODUCTION,
    Ports,
    Targets,
    _duration_seconds,
    notifications_path,
)

# Alerts the loadgen's traffic fires (drifted rows, feedback contradicting every prediction), then the one stopped
# by stopping the model server; none may be inhibited by another (a muted rule never fires while its cause does).
TRAFFIC_ALERTS = ("DataDriftPSI", "LiveAccuracyDrop")
OUTAGE_ALERT = "ModelServerDown"
ALERT_NAMES = (*TRAFFIC_ALERTS, OUTAGE_ALERT)
ALERT_KEYS = tuple(alert(name).key for name in ALERT_NAMES)
CONTAINER = "msml-grafana"
LABEL = "msml.evidence"  # the container we started carries it: only such a container is ever removed
# Polls of Grafana's rules API that may fail in a row (a restart of its HTTP server, a slow answer) before the
# run stops with the cause.
POLL_ERRORS = 5
# Grafana evaluates every `grafana_interval`, the receiver gets the notification after the policy's group_wait:
# a few minutes on top of each `for` cover both, and the drift window filling at 20 req/s (under a minute).
SLACK = 5 * 60.0
FIRE_TIMEOUT = max(_duration_seconds(alert(n).for_) for n in TRAFFIC_ALERTS) + SLACK
OUTAGE_TIMEOUT = _duration_seconds(alert(OUTAGE_ALERT).for_) + SLACK


def inhibited_among(names) -> list[tuple[str, str]]:
    """(alert, cause) pairs where both are in `names`: the alert cannot fire while its cause does (Alertmanager's
    inhibit rule; in Grafana, the `unless` its rule's query carries)."""
    return [(name, cause) for name in names for cause in alert(name).inhibited_by if cause in names]


def estimate_minutes() -> int:
    """Expected minutes on a live stack (derived, not measured here: no Grafana runs in this repository's tests):
    the traffic alerts' `for` (they hold concurrently), the outage alert's, one Grafana evaluation interval and
    group_wait per wait, and a minute for the captures."""
    interval = _duration_seconds(PRODUCTION.grafana_interval) + _duration_seconds(PRODUCTION.group_wait)
    seconds = FIRE_TIMEOUT - SLACK + OUTAGE_TIMEOUT - SLACK + 2 * interval + 60
    return -(-int(seconds) // 60)


class GrafanaError(CaptureError):
    """The Grafana evidence cannot be produced; the message says why, in one line."""


def docker_cli() -> str:
    """The docker CLI, checked to reach a daemon."""
    path = shutil.which("docker")
    if not path:
        raise GrafanaError(
            "Docker is not installed: `msml evidence grafana` runs Grafana 11.6 in Docker "
            "(or run the Workflow-CI repository's grafana-evidence workflow on GitHub)"
        )
    result = subprocess.run(
        [path, "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True, timeout=60
    )
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise GrafanaError(f"Docker is installed but its daemon does not answer (`docker info`: {last})")
    return path


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return response.status < 400
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def stack_urls(ports: Ports = DEFAULT_PORTS) -> dict[str, str]:
    """The readiness URL of each server `make demo` runs and Grafana needs."""
    local = Targets.local(ports)
    return {
        "gateway": f"http://{local.gateway}/ping",
        "model server": f"http://127.0.0.1:{ports.model_server}/ping",
        "Prometheus": f"http://{local.prometheus}/-/ready",
        "webhook receiver": local.receiver_url.rsplit("/", 1)[0] + "/-/ready",
    }


def check_stack(ports: Ports = DEFAULT_PORTS) -> None:
    """Raise GrafanaError unless `make demo`'s servers answer and Grafana's port is free."""
    for name, url in stack_urls(ports).items():
        if not _answers(url):
            raise GrafanaError(f"the {name} of `make demo` does not answer at {url}: run `make demo` first")
    if not _port_free(ports.grafana):
        raise GrafanaError(f"port {ports.grafana} is taken (a Grafana already running?): free it, then run again")


def compose_hosts() -> list[str]:
    """The host names the committed provisioning files point at (`prometheus`, `receiver`), from the compose targets."""
    compose = Targets.compose()
    return sorted(
        {
            urllib.parse.urlsplit(f"http://{compose.prometheus}").hostname,
            urllib.parse.urlsplit(compose.receiver_url).hostname,
        }
    )


def run_command(
    docker: str, root: Path, ports: Ports = DEFAULT_PORTS, provisioning: Path | None = None, extra: list[str] = ()
) -> list[str]:
    """`docker run` of Grafana 11.6 alone, with the repository's provisioning files (or `provisioning`, a copy
    with the chosen contact point), on 127.0.0.1:<grafana>. Not `--rm`: its logs outlive a failed start."""
    grafana = root / "monitoring" / "grafana"
    hosts = [arg for host in compose_hosts() for arg in ("--add-host", f"{host}:127.0.0.1")]
    env = {
        "GF_SERVER_HTTP_ADDR": "127.0.0.1",
        "GF_SERVER_HTTP_PORT": str(ports.grafana),
        "GF_AUTH_ANONYMOUS_ENABLED": "true",
        "GF_AUTH_ANONYMOUS_ORG_ROLE": "Viewer",
        "GF_ANALYTICS_REPORTING_ENABLED": "false",
        "GF_ANALYTICS_CHECK_FOR_UPDATES": "false",
        "GF_NEWS_NEWS_FEED_ENABLED": "false",
    }
    return [
        docker,
        "run",
        "-d",
        "--name",
        CONTAINER,
        "--label",
        f"{LABEL}=1",
        "--network",
        "host",
        *hosts,
        *[arg for k, v in env.items() for arg in ("-e", f"{k}={v}")],
        *extra,
        "-v",
        f"{provisioning or grafana / 'provisioning'}:/etc/grafana/provisioning:ro",
        "-v",
        f"{grafana / 'dashboards'}:/var/lib/grafana/dashboards:ro",
        GRAFANA_IMAGE,
    ]


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def rule_states(grafana_url: str) -> dict[str, str]:
    """{rule title: state} of the Grafana-managed rules (firing / pending / inactive)."""
    data = _get_json(f"{grafana_url}/api/prometheus/grafana/api/v1/rules")
    return {r["name"]: r.get("state", "") for g in data["data"]["groups"] for r in g["rules"]}


TRANSIENT = (urllib.error.URLError, OSError, ValueError, KeyError)  # refused, reset, timeout, half a JSON answer


def _wait(condition, timeout: float, what: str, interval: float = 5.0) -> None:
    """Poll `condition` until true; a transient error is retried, POLL_ERRORS in a row stop the run with it."""
    deadline = time.monotonic() + timeout
    errors = 0
    while time.monotonic() < deadline:
        try:
            if condition():
                return
            errors = 0
        except TRANSIENT as exc:
            errors += 1
            if errors >= POLL_ERRORS:
                raise GrafanaError(f"{what}: Grafana's API failed {errors} times in a row, last: {exc}") from None
        time.sleep(interval)
    raise GrafanaError(f"{what} did not happen within {timeout:.0f} s")


def rule_health(grafana_url: str) -> dict[str, tuple[str, str]]:
    """{rule title: (health, last error)} from Grafana's rules API (health: ok / nodata / error)."""
    data = _get_json(f"{grafana_url}/api/prometheus/grafana/api/v1/rules")
    return {
        r["name"]: (r.get("health", ""), r.get("lastError", "")) for g in data["data"]["groups"] for r in g["rules"]
    }


def check_provisioned(grafana_url: str, names=ALERT_NAMES, timeout: float = 120.0, running=lambda: True) -> None:
    """Every rule in `names` present in Grafana and evaluated without error, before any traffic: a provisioning
    mistake or an unreachable datasource stops the run here, with Grafana's own words (execErrState is Error)."""
    seen: dict[str, tuple[str, str]] = {}

    def ready() -> bool:
        nonlocal seen
        if not running():
            raise GrafanaError("the Grafana container exited while provisioning")
        seen = rule_health(grafana_url)
        broken = {n: err for n, (health, err) in seen.items() if n in names and health == "error"}
        if broken:
            name, err = next(iter(broken.items()))
            raise GrafanaError(f"Grafana rule {name} fails to evaluate: {err or 'error'} (is Prometheus reachable?)")
        return all(seen.get(n, ("",))[0] in ("ok", "nodata") for n in names)

    try:
        _wait(ready, timeout, "every alert rule provisioned and evaluated", interval=2.0)
    except GrafanaError as exc:
        absent = [n for n in names if n not in seen]
        raise GrafanaError(f"{exc}" + (f"; rules absent in Grafana: {', '.join(absent)}" if absent else "")) from None


def replica_pidfiles(run_dir: Path) -> list[Path]:
    """The pid files of `make demo`'s model-server replicas (one per replica, `--replicas N`)."""
    from msml.serving.model_server import replica_name

    found = []
    while (run_dir / f"{replica_name(len(found))}.pid").exists():
        found.append(run_dir / f"{replica_name(len(found))}.pid")
    return found


def stop_replicas(run_dir: Path) -> int:
    """Stop every replica of ours (ModelServerDown needs all of them down); returns how many were ours and stopped."""
    from msml.ops.processes import stop

    return sum(stop(pidfile).state == "ours" for pidfile in replica_pidfiles(run_dir))


@dataclass
class Stack:
    """What the capture drives and where Grafana looks: the traffic that fires the traffic alerts, the model servers
    stopped for the outage (all of them), how to bring them back, the Prometheus and receiver Grafana talks to.
    `prometheus_url` / `receiver_url` None: the committed provisioning's compose host names (mapped to 127.0.0.1)."""

    what: str
    traffic: Callable[[], list[subprocess.Popen]]
    stop_models: Callable[[], tuple[int, int]]  # (stopped, how many there were)
    restore: Callable[[], None]
    notifications: Path
    prometheus_url: str | None = None
    receiver_url: str | None = None


def demo_stack(settings, ports: Ports = DEFAULT_PORTS) -> Stack:
    """`make demo`'s gateway, model-server replicas, Prometheus and receiver (`msml loadgen` sends the traffic)."""
    from msml.ops.demo import start_serving

    replicas = len(replica_pidfiles(settings.run_dir))
    gateway = f"http://127.0.0.1:{ports.gateway}"

    def traffic() -> list[subprocess.Popen]:
        # all rows drifted (their ground truth is unknown), and every scored row gets the label the model did not
        # predict as feedback: the live accuracy drops to 0 while the drift builds up
        argv = [
            str(Path(sys.executable).parent / "msml"),
            "loadgen",
            "--url",
            gateway,
            "--duration",
            str(int(FIRE_TIMEOUT + OUTAGE_TIMEOUT + 600)),
            "--rate",
            "20",
            "--drift-share",
            "1.0",
            "--feedback",
            "--wrong-feedback-share",
            "1.0",
            "--no-progress",
        ]
        return [subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]

    return Stack(
        what=f"make demo's gateway ({gateway}) and {replicas} model server(s)",
        traffic=traffic,
        stop_models=lambda: (stop_replicas(settings.run_dir), replicas),
        restore=lambda: start_serving(settings, ports, replicas=replicas),  # the same model servers, back again
        notifications=notifications_path(settings.run_dir),
    )


@contextmanager
def alerts_firing(grafana_url: str, stack: Stack, echo=print, while_healthy=None):
    """Real traffic fires each of ALERT_NAMES in Grafana and its notification reaches the receiver; the body of the
    `with` runs while they fire (the rule pages show it). `while_healthy()` runs once the traffic alerts fire and
    before the outage (the panels: model up, no gaps). On exit the model servers are back and the traffic stops."""
    from msml.handin.evidence import notifications_by_alert

    def firing(name: str) -> bool:
        return rule_states(grafana_url).get(name) == "firing" and alert(name).key in notifications_by_alert(
            stack.notifications, grafana=True
        )

    muted = inhibited_among(ALERT_NAMES)
    if muted:
        raise GrafanaError(f"{muted[0][0]} cannot fire while {muted[0][1]} does: choose other alerts")
    senders = stack.traffic()
    stopped = 0
    try:
        holds = " and ".join(f"{n} ({alert(n).for_})" for n in TRAFFIC_ALERTS)
        echo(f"drifted traffic with wrong feedback to {stack.what} until {holds} fire")
        for name in TRAFFIC_ALERTS:
            _wait(lambda name=name: firing(name), FIRE_TIMEOUT, f"{name} firing in Grafana and notified")
        if while_healthy is not None:
            while_healthy()
        echo(f"stopping every model server of {stack.what} while traffic flows ({OUTAGE_ALERT})")
        stopped, expected = stack.stop_models()
        if stopped < expected or not expected:
            raise GrafanaError(
                f"only {stopped} of {expected} model servers were ours to stop: {OUTAGE_ALERT} cannot fire"
            )
        _wait(lambda: firing(OUTAGE_ALERT), OUTAGE_TIMEOUT, f"{OUTAGE_ALERT} firing in Grafana and notified")
        # the rule pages must show all three firing at once
        _wait(lambda: all(firing(n) for n in ALERT_NAMES), 60.0, f"{', '.join(ALERT_NAMES)} firing together")
        yield
    finally:
        for sender in senders:
            sender.terminate()
            sender.wait(timeout=30)
        if stopped:
            stack.restore()


def grafana_evidence_complete(panels_dir: Path, alerting_dir: Path) -> bool:
    """True when both Grafana folders hold every image `capture()` writes."""
    from msml.handin.names import grafana_alert_stems, grafana_panel_stems, numbered

    return all((panels_dir / n).is_file() for n in numbered(grafana_panel_stems())) and all(
        (alerting_dir / n).is_file() for n in numbered(grafana_alert_stems(list(ALERT_KEYS)))
    )


def drop_grafana_items(missing_file: Path, folders: list[str]) -> None:
    """Remove the Grafana entries from MISSING_EVIDENCE.md (the file goes when nothing else is listed)."""
    from msml.handin.missing import drop_items

    drop_items(missing_file, folders)


def grafana_evidence(settings, out: Path, ports: Ports = DEFAULT_PORTS, echo=print) -> list[Path]:
    """The whole command against `make demo`'s stack: steps 1-5 of the module docstring (`grafana_run.capture_with`
    runs Grafana, stops it whatever happens and keeps its log in `<run dir>/grafana.log`)."""
    from msml.handin import contact
    from msml.handin.grafana_run import capture_with
    from msml.handin.names import ALERTING_DIR, GRAFANA_DIR, MISSING_FILE, MONITORING, submission_name
    from msml.handin.repos import check_names, zip_folder

    check_names(settings)
    contact.chosen()  # a missing variable, or no Docker: one line before anything else
    docker_cli()
    submission = Path(out).resolve() / submission_name(settings.student)
    if not submission.is_dir():
        raise GrafanaError(f"no {submission}: run `msml export --out {out}` first")
    check_stack(ports)
    monitoring = submission / MONITORING
    written = capture_with(
        settings, demo_stack(settings, ports), monitoring / GRAFANA_DIR, monitoring / ALERTING_DIR, ports, echo=echo
    )
    rel = f"{submission.name}/{MONITORING}/"
    drop_grafana_items(submission.parent / MISSING_FILE, [f"{rel}{GRAFANA_DIR}/", f"{rel}{ALERTING_DIR}/"])
    zip_folder(submission, submission.parent / f"{submission.name}.zip")
    return written
