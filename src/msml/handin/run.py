"""`msml handin`: the hand-in runs itself, and every image in it is of its own files' processes.

From an `msml export --out DIR`, in a scratch home (`~` in every recorded command and image):
1. each folder gets a fresh venv from its own requirements.txt (the three installs run side by side);
2. `automate_<student>.py` (its output must equal the dataset the hand-in carries) -> `modelling.py` ->
   `modelling_tuning.py` (local store next to them, `Profile.trials` trials);
3. the model those runs produced (the top-level run with the best test ROC AUC) is served with `mlflow models serve`
   in a real terminal (`msml.handin.terminal`), and a request typed there is `1.bukti_serving.jpg`;
4. `3.prometheus_exporter.py` in front of it, Prometheus from the folder's own `2.prometheus.yml` and the rule files
   beside it, and `7.inference.py` sends the traffic in phases (`Profile.stages`): normal, drifted, invalid, then
   drifted and wrong feedback together; meanwhile the MLflow UI (`mlflow ui` over the runs' store) gives
   `screenshoot_dashboard.jpg` and `screenshoot_artifak.jpg`;
5. a Prometheus graph per dashboard panel whose metrics the exporter exports, its time range fitted to the
   traffic, then the rules and alerts pages, into `4.bukti monitoring Prometheus/`;
6. `evidence.json` beside the evidence (`msml.handin.manifest`), and the images copied into the export (zip refreshed).
"""

from __future__ import annotations

import json
import shutil
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from msml.errors import ExportError
from msml.handin.names import (
    EXPORTER,
    INFERENCE,
    MEMBANGUN,
    MISSING_FILE,
    MONITORING,
    PROMETHEUS_DIR,
    PROMETHEUS_YML,
)
from msml.handin.workspace import Workspace


@dataclass(frozen=True)
class Profile:
    """How long the hand-in runs: `quick` for the test suite, `full` for graphs a reviewer reads (alerts firing).

    `stages`: (7.inference.py phases run side by side, seconds each). The last stage sends drifted rows and wrong
    feedback together: the exporter's drift window holds the most recent rows and its accuracy the most recent
    feedback, so only traffic that keeps both up lets DataDriftPSI and LiveAccuracyDrop fire at the same time (each
    holds 10 min) and the rules page show both.
    """

    name: str
    trials: int
    cv_folds: int
    max_iter: int
    stages: tuple[tuple[tuple[str, ...], int], ...]
    require_firing: bool  # wait for the alerts' `for` to pass before the capture (else: pending is enough)


PHASES = ("normal", "drifted", "invalid", "wrong-feedback")
PROFILES = {
    # ~30 s a stage: two 15 s scrapes each, enough for a rate; the drift and accuracy alerts turn pending
    "quick": Profile(
        "quick",
        trials=2,
        cv_folds=2,
        max_iter=50,
        stages=((("normal",), 40), (("drifted",), 30), (("invalid",), 20), (("drifted", "wrong-feedback"), 40)),
        require_firing=False,
    ),
    # the last stage outlasts the alerts' 10 min `for` (and one evaluation), so both fire before the capture
    "full": Profile(
        "full",
        trials=10,
        cv_folds=3,
        max_iter=300,
        stages=((("normal",), 240), (("drifted",), 180), (("invalid",), 120), (("drifted", "wrong-feedback"), 690)),
        require_firing=True,
    ),
}


@dataclass
class Servers:
    """Where the hand-in's servers listen (the exporter's port is the one 2.prometheus.yml scrapes)."""

    model: int
    exporter: int
    prometheus: int
    mlflow_ui: int


@dataclass
class HandinResult:
    workspace: Workspace
    manifest: Path
    images: list[Path] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


def _get_json(url: str, timeout: float = 10) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def side_by_side(calls: list) -> list:
    """Run the callables in threads at once (each mostly waits on a subprocess); their results, or the first error."""
    results: list = [None] * len(calls)
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            results[i] = calls[i]()
        except BaseException as exc:  # the caller's thread re-raises it
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def make_venvs(ws: Workspace, echo=print) -> None:
    """The three folders' venvs, installed side by side (each from its own requirements.txt)."""
    folders = [ws.eksperimen, ws.model_dir, ws.monitoring_dir]
    side_by_side([lambda f=f: ws.make_venv(f) for f in folders])
    echo("  venvs: " + ", ".join(ws.shown(f / ".venv") for f in folders))


def train(ws: Workspace, settings, profile: Profile, echo=print) -> str:
    """automate -> modelling -> modelling_tuning; returns the run id of the model to serve."""
    import mlflow

    dataset = f"{settings.dataset}_preprocessing"
    automate = f"preprocessing/automate_{settings.student}.py"
    ws.run(ws.eksperimen, [str(ws.python(ws.eksperimen)), automate], f"automate_{settings.student}.py")
    made, carried = ws.eksperimen / "preprocessing" / dataset, ws.model_dir / dataset
    different = [
        p.name for p in sorted(made.iterdir()) if p.is_file() and p.read_bytes() != (carried / p.name).read_bytes()
    ]
    if different:
        raise ExportError(f"automate_{settings.student}.py wrote {', '.join(different)} unlike {MEMBANGUN}/{dataset}/")
    echo(f"  {automate}: {dataset}/ equal to the one {MEMBANGUN}/ carries")
    python = str(ws.python(ws.model_dir))
    ws.run(ws.model_dir, [python, "modelling.py"], "modelling.py")
    tuning = [
        "--n-trials",
        str(profile.trials),
        "--cv-folds",
        str(profile.cv_folds),
        "--max-iter",
        str(profile.max_iter),
    ]
    ws.run(ws.model_dir, [python, "modelling_tuning.py", *tuning], "modelling_tuning.py")
    client = mlflow.MlflowClient(f"sqlite:///{ws.model_dir / 'mlflow.db'}")
    runs = [
        r
        for e in client.search_experiments()
        for r in client.search_runs([e.experiment_id])
        if "mlflow.parentRunId" not in r.data.tags and "test_roc_auc" in r.data.metrics
    ]
    if not runs:
        raise ExportError("modelling.py and modelling_tuning.py logged no run with test_roc_auc")
    failed = [r.info.run_name for r in client.search_runs([runs[0].info.experiment_id]) if r.info.status == "FAILED"]
    if failed:
        raise ExportError(f"runs ended FAILED (a reviewer sees red runs): {', '.join(failed)}")
    best = max(runs, key=lambda r: r.data.metrics["test_roc_auc"])
    echo(f"  serving run {best.info.run_name} (test ROC AUC {best.data.metrics['test_roc_auc']:.4f})")
    return best.info.run_id


def prometheus_config(ws: Workspace, servers: Servers | None) -> Path:
    """The folder's own 2.prometheus.yml, checked: its rule files are beside it; the exporter is scraped.

    `servers` given (free ports, e.g. under test): a copy beside it with only the target ports moved, recorded as such.
    """
    import yaml

    path = ws.monitoring_dir / PROMETHEUS_YML
    config = yaml.safe_load(path.read_text())
    absent = [r for r in config.get("rule_files") or [] if not list(ws.monitoring_dir.glob(r))]
    if absent:
        raise ExportError(f"{PROMETHEUS_YML} loads {', '.join(absent)}, which is not beside it in {MONITORING}/")
    if servers is None:
        return path
    moved = yaml.safe_load(path.read_text())
    for job in moved["scrape_configs"]:
        for static in job.get("static_configs", []):
            static["targets"] = [_moved(t, servers) for t in static["targets"]]
    copy = ws.monitoring_dir / "2.prometheus.free-ports.yml"
    copy.write_text(yaml.safe_dump(moved, sort_keys=False))
    return copy


def _moved(target: str, servers: Servers) -> str:
    """host:port of the file -> the free port of the same server (the exporter, Prometheus itself)."""
    from msml.config import DEFAULT_PORTS

    host, port = target.rsplit(":", 1)
    mapping = {DEFAULT_PORTS.gateway: servers.exporter, DEFAULT_PORTS.prometheus: servers.prometheus}
    return f"{host}:{mapping.get(int(port), int(port))}"


def file_ports(ws: Workspace) -> Servers:
    """The ports a student's run uses: the exporter where 2.prometheus.yml scrapes it, the rest the defaults."""
    from msml.config import DEFAULT_PORTS

    return Servers(DEFAULT_PORTS.model_server, DEFAULT_PORTS.gateway, DEFAULT_PORTS.prometheus, DEFAULT_PORTS.mlflow)


def free_servers() -> Servers:
    import socket

    ports = []
    for _ in range(4):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    return Servers(*ports)


def run_traffic(ws: Workspace, profile: Profile, exporter_url: str, phases: list[dict], echo=print) -> None:
    """`7.inference.py` once per phase of each stage (a stage's phases side by side); each phase's start, end and
    command are appended to `phases`."""
    python = str(ws.python(ws.monitoring_dir))
    for stage, (names, seconds) in enumerate(profile.stages, start=1):
        calls = [
            lambda name=name, seconds=seconds: ws.run(
                ws.monitoring_dir,
                [python, INFERENCE, "--url", exporter_url, "--phases", name, "--duration", str(seconds)],
                f"7.inference.py {name}",
                timeout=seconds + 120,
            )
            for name in names
        ]
        steps = side_by_side(calls)
        for name, step in zip(names, steps, strict=True):
            phases.append(
                {
                    "phase": name,
                    "stage": stage,
                    "start": step.started,
                    "end": step.started + step.seconds,
                    "command": step.command,
                    "cwd": step.cwd,
                }
            )
        echo(f"  traffic {' + '.join(names)}: {max(step.seconds for step in steps):.0f} s")


def handin(
    settings, out: Path, home: Path, profile: Profile, free_ports: bool = False, grafana: bool = False, echo=print
) -> HandinResult:
    """The whole run (module docstring); every server it starts is stopped when it ends, whatever happens.
    `grafana`: then Grafana in Docker against the same exporter and Prometheus (`msml.handin.grafana_handin`)."""
    from msml.handin import capture, manifest
    from msml.handin.missing import drop_items
    from msml.handin.repos import zip_folder

    out = Path(out).resolve()
    if grafana:  # no Docker, or a contact point without its variables: one line before minutes of work
        from msml.handin import contact
        from msml.handin.grafana import docker_cli

        docker_cli()
        contact.chosen()
    ws = Workspace(home, settings.student, home.parent / "logs")
    ws.copy_from(out)
    seconds: dict[str, float] = {}
    began = time.perf_counter()
    servers = free_servers() if free_ports else file_ports(ws)
    if not free_ports:
        from msml.ops.processes import check_port

        for name in ("model", "exporter", "prometheus", "mlflow_ui"):
            check_port(getattr(servers, name), name, "--free-ports")
    images: list[dict] = []
    try:
        echo(f"hand-in workspace {ws.shown(ws.submission)} (profile {profile.name})")
        make_venvs(ws, echo)
        seconds["venvs"] = time.perf_counter() - began
        t = time.perf_counter()
        run_id = train(ws, settings, profile, echo)
        seconds["training"] = time.perf_counter() - t
        t = time.perf_counter()
        config_path = prometheus_config(ws, servers if free_ports else None)
        with capture.serving_terminal(ws, settings, run_id, servers.model, images) as (term, pane):
            exporter_url = f"http://127.0.0.1:{servers.exporter}"
            model_url = f"http://127.0.0.1:{servers.model}"
            python = str(ws.python(ws.monitoring_dir))
            ws.start(
                ws.monitoring_dir,
                [python, EXPORTER, "--port", str(servers.exporter), "--model-url", model_url],
                "3.prometheus_exporter.py",
                f"{exporter_url}/metrics",
            )
            if not shutil.which("prometheus"):
                from msml.errors import MissingProgramError

                raise MissingProgramError("prometheus is not installed (run scripts/install-system-deps.sh)")
            prom_url = f"http://127.0.0.1:{servers.prometheus}"
            ws.start(
                ws.monitoring_dir,
                [
                    "prometheus",
                    f"--config.file={config_path.name}",
                    "--storage.tsdb.path=data",
                    f"--web.listen-address=127.0.0.1:{servers.prometheus}",
                ],
                "prometheus",
                f"{prom_url}/-/ready",
            )
            phases: list[dict] = []
            # the MLflow UI pages are taken while the traffic runs (separate processes, and minutes saved)
            _, pages = side_by_side(
                [
                    lambda: run_traffic(ws, profile, exporter_url, phases, echo),
                    lambda: capture.mlflow_pages(ws, servers, run_id),
                ]
            )
            images += pages
            seconds["serving and traffic"] = time.perf_counter() - t
            t = time.perf_counter()
            entries, skipped = capture.prometheus_pages(ws, prom_url, exporter_url, phases, profile)
            images += entries
            scrape = manifest.exporter_scrape(exporter_url, ws.home.parent / "exporter-metrics.txt")
            targets = _get_json(f"{prom_url}/api/v1/targets")["data"]["activeTargets"]
            grafana_rules = manifest.grafana_rule_series(prom_url)
            if grafana:
                from msml.handin import grafana_handin
                from msml.monitoring.definitions import PANELS

                drawn = [p.key for p in PANELS if p.key not in skipped]
                images += grafana_handin.capture(ws, settings, term, pane, exporter_url, prom_url, drawn, echo)
            seconds["prometheus evidence"] = time.perf_counter() - t
    finally:
        ws.close()
    seconds["total"] = time.perf_counter() - began
    manifest_path = manifest.write(
        ws, images, phases, scrape, targets, config_path, profile, seconds, skipped, grafana_rules
    )
    written = _copy_back(ws, out, images, manifest_path)
    # each image's own path: its folder would also cover the entries beside it (the serving image's folder holds
    # the Grafana folders, which this run does not make without --grafana)
    drop_items(out / MISSING_FILE, [f"{ws.submission.name}/{i['file']}" for i in images])
    zip_folder(out / ws.submission.name, out / f"{ws.submission.name}.zip")
    return HandinResult(ws, out / ws.submission.name / manifest_path.name, written, seconds)


def _copy_back(ws: Workspace, out: Path, images: list[dict], manifest_path: Path) -> list[Path]:
    """The images and the manifest into the export's submission folder (old Prometheus images removed first)."""
    target = out / ws.submission.name
    for stale in (target / MONITORING / PROMETHEUS_DIR).glob("*.jpg"):
        stale.unlink()
    written = []
    for image in images:
        source = ws.submission / image["file"]
        dest = target / image["file"]
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, dest)
        written.append(dest)
    shutil.copy2(manifest_path, target / manifest_path.name)
    return written
