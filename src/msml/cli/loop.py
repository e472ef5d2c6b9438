"""The closed loop's commands: `msml collect` (served rows + labels → a training snapshot) and `msml loop status`."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from msml.cli.app import ContractOpt, MaxInvalidOpt, _settings, app

loop_app = typer.Typer(no_args_is_help=True, help="The closed loop: its store, state and decisions.")
app.add_typer(loop_app, name="loop")

StoreOpt = typer.Option(None, "--store", help="Loop store URL (default: MSML_LOOP_STORE, else .run/loop.db).")


@app.command()
def collect(
    contract: Path | None = ContractOpt,
    store: str | None = StoreOpt,
    out: Path | None = typer.Option(None, "--out", help="Snapshot folder (default: data/<dataset>_feedback)."),
    horizon: float = typer.Option(
        None, "--horizon", min=0, help="Seconds a prediction must be old to be collected (its labels' delay)."
    ),
    max_invalid_share: float = MaxInvalidOpt,
) -> None:
    """Join served predictions with their labels into a versioned, validated snapshot in the raw file's format."""
    from msml.loop.collect import DEFAULT_HORIZON
    from msml.loop.collect import collect as run

    settings = _settings(contract)
    snapshot = run(
        store or settings.loop_store,
        out or settings.feedback_dir,
        settings.contract,
        horizon=DEFAULT_HORIZON if horizon is None else horizon,
        max_invalid_share=max_invalid_share,
    )
    if snapshot is None:
        typer.echo("nothing to collect: no labelled prediction older than the horizon since the last snapshot")
        return
    typer.echo(json.dumps({"snapshot": str(snapshot.path), **snapshot.manifest}, indent=2))


@loop_app.command("status")
def status(
    store: str | None = StoreOpt,
    last: int = typer.Option(10, "--last", min=1, max=1000, help="How many of the latest decisions to show."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (for machines) instead of tables."),
) -> None:
    """The loop's state: predictions logged, labels received, the latest retrain decisions."""
    from msml.loop.status import render_status, status_of

    settings = _settings(None)
    state = status_of(store or settings.loop_store, last=last)
    typer.echo(json.dumps(state, indent=2) if as_json else render_status(state))
