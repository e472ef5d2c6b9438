"""The `msml` application object and what every command module shares: common options, the failure helper,
the root callback, and `main`, the one place expected failures become an exit code.

Expected failures (`msml.errors.MsmlError`) are caught once, in `main`: one line on stderr and the
error's exit code (0 ok, 1 check failed, 2 bad input, 3 tracking/registry, 4 port busy, 5 program
missing, 6 server not ready, 7 export). Anything else is a bug: a traceback, without local variables.
Credentials in any URI printed by this process are masked.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from msml.config import (
    DEFAULT_PORTS,
    DEFAULT_SEED,
    Settings,
    load_settings,
)
from msml.data.contract import DEFAULT_MAX_INVALID_SHARE
from msml.errors import MaskingStream, MsmlError, mask

# show_locals=False: a traceback's local variables can hold a tracking password or token
app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="The `msml` command: one sub-command per pipeline stage.",
    pretty_exceptions_show_locals=False,
)

ContractOpt = typer.Option(None, "--contract", help="Dataset contract YAML (default: the Adult contract).")
RawOpt = typer.Option(None, "--raw", help="Raw CSV (default: data/<dataset>_raw/<dataset>.csv).")
OutOpt = typer.Option(None, "--out", help="Processed directory (default: data/<dataset>_preprocessing).")
SeedOpt = typer.Option(DEFAULT_SEED, "--seed", help="Random seed for the split (and everything seeded).")
MaxInvalidOpt = typer.Option(
    DEFAULT_MAX_INVALID_SHARE, "--max-invalid-share", help="Fail when more than this share of rows is invalid."
)


def _fail(message: str, code: int = 2) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"msml {version('msml')} (mlflow {version('mlflow')}, Python {sys.version.split()[0]})")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False,
        "--version",
        callback=_version,
        is_eager=True,
        help="Print the versions of msml, MLflow and Python, then exit.",
    ),
) -> None:
    pass


def _settings(contract: Path | None) -> Settings:
    return load_settings(contract_path=contract)


RunInfoOpt = typer.Option(None, "--run-info", help="Write the run id, model URI and metrics to this JSON file.")
ExperimentOpt = typer.Option(None, "--experiment", help="MLflow experiment name (default from settings).")

ReplicasOpt = typer.Option(
    1, "--replicas", min=1, max=64, help="Model servers to start, on consecutive ports from the model-server port."
)

# the monitoring stack's ports (`msml demo`, `msml monitoring up`); a busy port's message names these flags
# (monitoring.stack.PORT_OPTIONS)
PrometheusPortOpt = typer.Option(DEFAULT_PORTS.prometheus, "--prometheus-port", help="Port of Prometheus.")
AlertmanagerPortOpt = typer.Option(DEFAULT_PORTS.alertmanager, "--alertmanager-port", help="Port of Alertmanager.")
ReceiverPortOpt = typer.Option(DEFAULT_PORTS.receiver, "--receiver-port", help="Port of the alert webhook receiver.")

# --- Kriteria 3: the MLflow Project and the CI retraining job --------------------------------------------------

RootOpt = typer.Option(None, "--root", help="Repository root to write under (default: MSML_HOME/cwd).")
CheckOpt = typer.Option(False, "--check", help="Write nothing; exit 1 when a committed file is stale.")


def _render(files: dict[str, str], root: Path, check: bool, what: str, command: str) -> None:
    """Write generated files, or with `check` list the stale ones and exit 1 when there are any."""
    from msml.generated import stale, write

    if not check:
        for path in write(root, files):
            typer.echo(f"wrote {path}")
        return
    out_of_date = stale(root, files)
    for rel in out_of_date:
        typer.echo(f"stale: {rel}")
    if out_of_date:
        _fail(f"{what} files differ from their definitions; run `{command}`", code=1)
    typer.echo(f"{len(files)} {what} files are current")


def _sigterm_as_interrupt() -> None:
    import signal

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def _replica_ports(port: int, replicas: int) -> list[int]:
    from msml.serving.model_server import replica_ports

    try:
        return replica_ports(port, replicas)
    except ValueError as exc:
        _fail(str(exc))


def _one_line(text: str, limit: int = 1000) -> str:
    flat = " | ".join(line.strip() for line in text.strip().splitlines() if line.strip())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def main() -> None:
    # every line this process prints passes the credential mask (MLflow's own "View run at <uri>" too)
    sys.stdout, sys.stderr = MaskingStream(sys.stdout), MaskingStream(sys.stderr)
    try:
        app(prog_name="msml")
    except MsmlError as exc:  # the one place expected failures are caught
        typer.secho(f"error: {_one_line(mask(str(exc)))}", fg=typer.colors.RED, err=True)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    sys.exit(main())
