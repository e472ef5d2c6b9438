"""The course hand-in: evidence screenshots and the export of the course's repositories and folders."""

from __future__ import annotations

from pathlib import Path

import typer

from msml.cli.app import _fail, _settings, _sigterm_as_interrupt, app
from msml.config import (
    DEFAULT_PORTS,
    local_url,
)
from msml.handin.run import PROFILES

evidence_app = typer.Typer(no_args_is_help=True, help="Screenshots of the running system (headless Chromium).")
app.add_typer(evidence_app, name="evidence")


@evidence_app.command("monitoring")
def evidence_monitoring(
    out: Path = typer.Option(Path("evidence/monitoring"), "--out", help="Directory for the JPG files."),
    prometheus: str = typer.Option(local_url(DEFAULT_PORTS.prometheus), "--prometheus", help="Prometheus URL."),
    notifications: Path | None = typer.Option(
        None, "--notifications", help="Receiver JSON lines (default: .run/monitoring/notifications.jsonl)."
    ),
) -> None:
    """Prometheus graphs per dashboard metric, its rules and alerts pages, Alertmanager's notifications."""
    from msml.handin.evidence import prometheus_evidence
    from msml.monitoring.render import notifications_path

    settings = _settings(None)
    notifications = notifications or notifications_path(settings.run_dir)
    try:
        written = prometheus_evidence(out, prometheus, notifications)
    except FileNotFoundError as exc:  # a file it reads is missing; MsmlErrors reach main
        _fail(str(exc))
    for path in written:
        typer.echo(f"wrote {path}")


@evidence_app.command("grafana")
def evidence_grafana(
    out: Path = typer.Option(Path("dist"), "--out", help="The `msml export --out` directory to complete."),
    student: str | None = typer.Option(None, "--student", help="Student name (default: MSML_STUDENT / config)."),
) -> None:
    """Grafana 11.6 in Docker against `make demo`'s stack: fire 3 alerts, capture panels, rules and notifications."""
    from msml.handin.grafana import grafana_evidence

    settings = _settings(None).with_overrides(student=student)
    written = grafana_evidence(settings, out, echo=typer.echo)
    for path in written:
        typer.echo(f"wrote {path}")


@evidence_app.command("mlflow")
def evidence_mlflow(
    out: Path = typer.Option(Path("evidence/mlflow"), "--out", help="Directory for the JPG files."),
    mlflow_url: str | None = typer.Option(
        None, "--mlflow-url", help="A running MLflow UI over the same store (default: start one on loopback)."
    ),
) -> None:
    """The MLflow UI's runs page and the champion run's artifacts page (screenshoot_dashboard/artifak.jpg)."""
    from mlflow.exceptions import MlflowException

    from msml.handin.evidence import mlflow_evidence

    try:
        written = mlflow_evidence(_settings(None), out, mlflow_url=mlflow_url)
    except FileNotFoundError as exc:  # a file it reads is missing; MsmlErrors reach main
        _fail(str(exc))
    except MlflowException as exc:
        _fail(f"{exc.message} (train and tune first: `msml tune` registers a champion)")
    for path in written:
        typer.echo(f"wrote {path}")


# --- the course's repositories and submission folder -----------------------------------------------------------


@app.command()
def export(
    out: Path = typer.Option(Path("dist"), "--out", help="Directory for the repositories, folder and zip."),
    student: str | None = typer.Option(None, "--student", help="Student name (default: MSML_STUDENT / config)."),
    github_user: str | None = typer.Option(None, "--github-user", help="GitHub user of the repository links."),
    dockerhub_user: str | None = typer.Option(None, "--dockerhub-user", help="Docker Hub user of the image."),
    evidence: bool = typer.Option(
        True,
        "--evidence/--no-evidence",
        help="Then run the hand-in as the student would (`msml handin`, free ports) so that every image is made by "
        "the exported files; --no-evidence lists the images as missing, with the command that makes them.",
    ),
    profile: str = typer.Option("full", "--profile", help="With --evidence: `msml handin`'s profile (full, quick)."),
    author: str | None = typer.Option(
        None, "--author", help="'Name <email>' of the exported commits (default: your `git config user.name/email`)."
    ),
) -> None:
    """Write Eksperimen_SML_<student>/, Workflow-CI/ (git repositories), SMSML_<student>/, its zip and SUBMIT.md."""
    from msml.handin.export import export as run
    from msml.handin.missing import still_missing
    from msml.handin.names import MISSING_FILE, SUBMIT_FILE

    settings = _settings(None).with_overrides(student=student, github_user=github_user, dockerhub_user=dockerhub_user)
    if evidence and profile not in PROFILES:
        _fail(f"--profile {profile!r}: choose one of {', '.join(PROFILES)}")
    # the running demo's screenshots never go in: a reviewer rejects images the handed-in files did not make
    result = run(settings, out, author=author)
    for name, path in result.repositories.items():
        typer.echo(
            f"repository {path}  (push: cd '{path}' && git remote add origin "
            f"https://github.com/{settings.github_user}/{name}.git && git push -u origin main)"
        )
    typer.echo(f"submission {result.submission}\nzip        {result.archive}")
    typer.echo(f"next steps {result.out / SUBMIT_FILE}  (accounts, secrets, pushes in order, re-zip, upload)")
    missing = result.missing
    if evidence:
        # free ports: after `make demo` its gateway holds the exporter's port (8000) that 2.prometheus.yml names
        handin = _run_handin(settings, out, None, profile, free_ports=True, grafana=False)
        # what is left once the run has made its images (it dropped the same entries from MISSING_EVIDENCE.md)
        missing = still_missing(missing, [p.relative_to(result.out).as_posix() for p in handin.images])
    if missing:
        typer.echo(f"\nnot produced ({len(missing)}; listed in {result.out / MISSING_FILE}):")
        for item in missing:
            typer.echo(f"  {item.path}: {item.what}\n      {item.command}")
    typer.echo("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in result.seconds.items()))


@app.command()
def handin(
    out: Path = typer.Option(Path("dist"), "--out", help="The `msml export --out` directory: its images are replaced."),
    workspace: Path | None = typer.Option(
        None, "--workspace", help="Scratch directory (the student's home is <it>/home; default: a new temporary one)."
    ),
    profile: str = typer.Option(
        "full", "--profile", help="full: the traffic outlasts the alerts' 10 min; quick: short phases (the tests')."
    ),
    free_ports: bool = typer.Option(
        False, "--free-ports", help="Free ports instead of the files' own (2.prometheus.yml's targets moved in a copy)."
    ),
    grafana: bool = typer.Option(
        False, "--grafana", help="Then Grafana 11.6 in Docker against the same exporter and Prometheus (folders 5, 6)."
    ),
    student: str | None = typer.Option(None, "--student", help="Student name (default: MSML_STUDENT / config)."),
) -> None:
    """Run the exported hand-in as the student would (fresh venvs, its own files) and take every image from it."""
    if profile not in PROFILES:
        _fail(f"--profile {profile!r}: choose one of {', '.join(PROFILES)}")
    settings = _settings(None).with_overrides(student=student)
    _run_handin(settings, out, workspace, profile, free_ports=free_ports, grafana=grafana)


def _run_handin(settings, out: Path, workspace: Path | None, profile: str, free_ports: bool, grafana: bool):
    """The hand-in workspace run (msml.handin.run), printing and returning what it made; a failure names the
    workspace's logs."""
    import tempfile

    from msml.errors import MsmlError
    from msml.handin.run import handin as run

    _sigterm_as_interrupt()  # a stopped run still stops every server it started (its `finally` blocks run)
    scratch = Path(workspace or tempfile.mkdtemp(prefix="msml-handin-")).resolve()
    (scratch / "home").mkdir(parents=True, exist_ok=True)
    try:
        result = run(
            settings, out, scratch / "home", PROFILES[profile], free_ports=free_ports, grafana=grafana, echo=typer.echo
        )
    except MsmlError as exc:  # its own exit code, and where to look
        _fail(f"{exc} (workspace and logs: {scratch})", code=exc.exit_code)
    for path in result.images:
        typer.echo(f"image     {path}")
    typer.echo(f"manifest  {result.manifest}")
    typer.echo("seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in result.seconds.items()))
    return result
