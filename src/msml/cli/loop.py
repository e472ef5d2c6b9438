"""The closed loop's commands: `msml collect` (served rows + labels → a training snapshot), `msml loop status`,
`msml retrain` (collect, tune, gate, promote, roll out) and `msml rollback`."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from msml.cli.app import ContractOpt, MaxInvalidOpt, _fail, _settings, app

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


@app.command()
def retrain(
    reason: str = typer.Option(..., "--reason", help="What asked for it: the alert's name (tagged on the runs)."),
    fingerprint: str = typer.Option("", "--fingerprint", help="The alert's fingerprint (tagged on the runs)."),
    trials: int = typer.Option(None, "--trials", min=1, max=500, help="Optuna trials (default: the loop's)."),
    horizon: float = typer.Option(
        None, "--horizon", min=0, help="Seconds a prediction must be old to be collected (default: collect's)."
    ),
    rollout: bool = typer.Option(
        True, "--rollout/--no-rollout", help="After a promotion, restart the model servers and tell the gateway."
    ),
    result: Path | None = typer.Option(None, "--result", help="Write the outcome and its figures to this JSON file."),
    contract: Path | None = ContractOpt,
) -> None:
    """Retrain, gate against @champion, and on a pass promote (the old champion kept as @previous) and roll out."""
    from msml.loop.retrain import DEFAULT_LOOP_TRIALS
    from msml.loop.retrain import retrain as run
    from msml.loop.trigger import Busy

    settings = _settings(contract)
    try:
        out = run(
            settings,
            reason,
            fingerprint,
            trials=trials or DEFAULT_LOOP_TRIALS,
            horizon=horizon,
            roll_out=rollout,
            progress=typer.echo,
        )
    except Busy as exc:
        _fail(f"{exc}: one retraining at a time", code=4)
    if result is not None:
        out.write(result)
    typer.echo(f"{out.outcome}: {out.gate_summary}")
    typer.echo(f"      @champion v{out.champion_before} -> v{out.champion_after}; seconds {out.seconds}")


@app.command()
def rollback(contract: Path | None = ContractOpt) -> None:
    """Give @champion back to @previous (the champion a gated promotion replaced), then roll out."""
    from msml.loop.rollout import roll_out
    from msml.tracking.client import setup_tracking
    from msml.tracking.registry import rollback as run

    settings = _settings(contract)
    setup_tracking(settings)
    bad, restored = run(settings.model_name)
    typer.echo(f"@champion of {settings.model_name}: v{bad} -> v{restored} (v{bad} tagged promotion=rejected)")
    done = roll_out(settings.run_dir, settings.tracking_uri, progress=typer.echo)
    typer.echo(f"      gateway told: {done['gateway_told']}")
