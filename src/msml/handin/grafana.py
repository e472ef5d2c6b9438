"""`msml evidence grafana`: the Grafana half of Kriteria 4, from Grafana 11.6 in Docker against `make demo`'s stack.

Steps (each a function, so the ones before the container are proven where Docker is absent):
1. `docker_cli()`: Docker must be installed and its daemon answering (else one line, non-zero exit).
2. `check_stack()`: the stack `make demo` runs must answer (gateway, model server, Prometheus, webhook receiver) and
   Grafana's port must be free. Nothing else is started: no second model server, no compose file.
3. `run_command()`: Grafana alone, on the host network, with the committed provisioning files
   (`monitoring/grafana/`, rendered from the definitions) mounted read-only; the compose host names those files use
   (`prometheus`, `receiver`) are mapped to 127.0.0.1, where `make demo` serves the same ports.
4. `alerts_firing()`: real traffic through the gateway fires `ALERT_NAMES`: fully drifted rows whose feedback
   contradicts every prediction (DataDriftPSI and LiveAccuracyDrop, both held for 10 min), then the demo's model
   server stopped while traffic flows (ModelServerDown); the gateway keeps its drift and accuracy gauges, so all three
   fire together. Each rule must be firing in Grafana and its notification recorded by the receiver. (HighErrorRate
   is not one of them: it is inhibited by ModelServerDown, see `inhibited_among`.)
5. `capture()`, while they fire: one image per dashboard panel into `5.bukti monitoring Grafana/`; each alert's
   rule page and its notification into `6.bukti alerting Grafana/`, numbered as the course writes them. Then the
   model server is restarted, Grafana stopped and the zip refreshed.
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
from contextlib import contextmanager
from pathlib import Path

from msml.config import DEFAULT_PORTS
from msml.errors import CaptureError
from msml.monitoring.definitions import alert
from msml.monitoring.render import (
    DASHBOARD_UID,
    GRAFANA_IMAGE,
    PRODUCTION,
    Ports,
    Targets,
    _duration_seconds,
    grafana_rule_uid,
    notifications_path,
    panel_ids,
)

# Alerts the loadgen's traffic fires (drifted rows, feedback contradicting every prediction), then the one stopped
# by stopping the model server; none may be inhibited by another (a muted rule never fires while its cause does).
TRAFFIC_ALERTS = ("DataDriftPSI", "LiveAccuracyDrop")
OUTAGE_ALERT = "ModelServerDown"
ALERT_NAMES = (*TRAFFIC_ALERTS, OUTAGE_ALERT)
ALERT_KEYS = tuple(alert(name).key for name in ALERT_NAMES)
CONTAINER = "msml-grafana"
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


def run_command(docker: str, root: Path, ports: Ports = DEFAULT_PORTS) -> list[str]:
    """`docker run` of Grafana 11.6 alone, with the repository's provisioning files, on 127.0.0.1:<grafana>."""
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
        "--rm",
        "--name",
        CONTAINER,
        "--network",
        "host",
        *hosts,
        *[arg for k, v in env.items() for arg in ("-e", f"{k}={v}")],
        "-v",
        f"{grafana / 'provisioning'}:/etc/grafana/provisioning:ro",
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


def _wait(condition, timeout: float, what: str, interval: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval)
    raise GrafanaError(f"{what} did not happen within {timeout:.0f} s")


@contextmanager
def alerts_firing(settings, grafana_url: str, notifications: Path, ports: Ports = DEFAULT_PORTS, echo=print):
    """Real traffic fires each of ALERT_NAMES in Grafana and its notification reaches the receiver; the body of the
    `with` runs while they fire (the rule pages show it). On exit the model server is back and the traffic stops."""
    from msml.handin.evidence import notifications_by_alert
    from msml.ops.demo import start_serving
    from msml.ops.processes import stop

    def firing(name: str) -> bool:
        return rule_states(grafana_url).get(name) == "firing" and alert(name).key in notifications_by_alert(
            notifications, grafana=True
        )

    muted = inhibited_among(ALERT_NAMES)
    if muted:
        raise GrafanaError(f"{muted[0][0]} cannot fire while {muted[0][1]} does: choose other alerts")
    gateway = f"http://127.0.0.1:{ports.gateway}"
    # all rows drifted (their ground truth is unknown), and every scored row gets the label the model did not
    # predict as feedback: the live accuracy drops to 0 while the drift builds up
    loadgen = subprocess.Popen(
        [
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
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    stopped = False
    try:
        holds = " and ".join(f"{n} ({alert(n).for_})" for n in TRAFFIC_ALERTS)
        echo(f"drifted traffic with wrong feedback to {gateway} until {holds} fire")
        for name in TRAFFIC_ALERTS:
            _wait(lambda name=name: firing(name), FIRE_TIMEOUT, f"{name} firing in Grafana and notified")
        echo(f"stopping the demo's model server while traffic flows ({OUTAGE_ALERT})")
        stopped = stop(settings.run_dir / "model-server.pid")
        _wait(lambda: firing(OUTAGE_ALERT), OUTAGE_TIMEOUT, f"{OUTAGE_ALERT} firing in Grafana and notified")
        # the rule pages must show all three firing at once
        _wait(lambda: all(firing(n) for n in ALERT_NAMES), 60.0, f"{', '.join(ALERT_NAMES)} firing together")
        yield
    finally:
        loadgen.terminate()
        loadgen.wait(timeout=30)
        if stopped:
            start_serving(settings, ports)  # the same single model server, back again


# Ready once the panel drew its data (uPlot canvas for graphs and heatmaps, a value for stats) and stopped loading.
PANEL_READY = (
    "() => { if (document.querySelector('[aria-label=\"Panel loading bar\"]')) return false;"
    " const body = document.body.innerText; if (body.includes('No data')) return false;"
    " return !!document.querySelector('canvas, [data-testid=\"data-testid panel content\"] span'); }"
)


def capture(grafana_url: str, panels_dir: Path, alerting_dir: Path, notifications: Path) -> list[Path]:
    """Panels into `panels_dir`, rule pages and notifications into `alerting_dir` (numbered as the course does)."""
    from msml.handin.evidence import (
        Browser,
        _text_ready,
        grafana_alert_stems,
        grafana_panel_stems,
        notifications_by_alert,
        numbered,
        text_image,
    )
    from msml.monitoring.definitions import PANELS

    ids = panel_ids()
    written = []
    texts = notifications_by_alert(notifications, grafana=True)
    with Browser(timeout=90) as browser:
        for panel, name in zip(PANELS, numbered(grafana_panel_stems()), strict=True):
            url = f"{grafana_url}/d-solo/{DASHBOARD_UID}?orgId=1&panelId={ids[panel.key]}&from=now-30m&to=now"
            written.append(browser.capture(url, panels_dir / name, PANEL_READY, f"Grafana panel {panel.key}"))
        names = iter(numbered(grafana_alert_stems(list(ALERT_KEYS))))
        for name in ALERT_NAMES:
            a = alert(name)
            written.append(
                browser.capture(
                    f"{grafana_url}/alerting/grafana/{grafana_rule_uid(a)}/view",
                    alerting_dir / next(names),
                    _text_ready([a.name, "Firing"]),
                    f"Grafana rule {a.name}",
                )
            )
            written.append(
                text_image(
                    texts[a.key],
                    alerting_dir / next(names),
                    title=f"Grafana webhook notifications received for {a.name}",
                )
            )
    return written


def grafana_evidence_complete(panels_dir: Path, alerting_dir: Path) -> bool:
    """True when both Grafana folders hold every image `capture()` writes."""
    from msml.handin.names import grafana_alert_stems, grafana_panel_stems, numbered

    return all((panels_dir / n).is_file() for n in numbered(grafana_panel_stems())) and all(
        (alerting_dir / n).is_file() for n in numbered(grafana_alert_stems(list(ALERT_KEYS)))
    )


def drop_grafana_items(missing_file: Path, folders: list[str]) -> None:
    """Remove the Grafana entries from MISSING_EVIDENCE.md (the file goes when nothing else is listed)."""
    if not missing_file.is_file():
        return
    head, *items = missing_file.read_text().split("\n- `")
    kept = [item for item in items if not any(item.startswith(folder) for folder in folders)]
    if kept:
        missing_file.write_text("\n- `".join([head, *kept]))
    else:
        missing_file.unlink()


def grafana_evidence(settings, out: Path, ports: Ports = DEFAULT_PORTS, echo=print) -> list[Path]:
    """The whole command: steps 1-5 of the module docstring; the container is stopped whatever happens."""
    from msml.handin.names import ALERTING_DIR, GRAFANA_DIR, MISSING_FILE, MONITORING, submission_name
    from msml.handin.repos import check_names, zip_folder
    from msml.ops.processes import wait_ready

    check_names(settings)
    docker = docker_cli()
    submission = Path(out).resolve() / submission_name(settings.student)
    if not submission.is_dir():
        raise GrafanaError(f"no {submission}: run `msml export --out {out}` first")
    check_stack(ports)
    notifications = notifications_path(settings.run_dir)
    grafana_url = f"http://127.0.0.1:{ports.grafana}"
    result = subprocess.run(run_command(docker, settings.root, ports), capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise GrafanaError(f"`docker run {GRAFANA_IMAGE}` failed: {(result.stderr.strip().splitlines() or [''])[-1]}")
    try:
        wait_ready(f"{grafana_url}/api/health", timeout=180)
        echo(
            f"Grafana {GRAFANA_IMAGE} ready on {grafana_url}; firing {', '.join(ALERT_NAMES)} takes "
            f"~{estimate_minutes()} min"
        )
        monitoring = submission / MONITORING
        panels_dir, alerting_dir = monitoring / GRAFANA_DIR, monitoring / ALERTING_DIR
        with alerts_firing(settings, grafana_url, notifications, ports, echo=echo):
            for folder in (panels_dir, alerting_dir):
                for stale in folder.glob("*.jpg"):
                    stale.unlink()
            written = capture(grafana_url, panels_dir, alerting_dir, notifications)
    finally:
        subprocess.run([docker, "stop", CONTAINER], capture_output=True, timeout=120)
    rel = f"{submission.name}/{MONITORING}/"
    drop_grafana_items(submission.parent / MISSING_FILE, [rel + GRAFANA_DIR, rel + ALERTING_DIR])
    zip_folder(submission, submission.parent / f"{submission.name}.zip")
    return written
