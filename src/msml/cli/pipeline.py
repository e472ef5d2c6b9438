"""Pipeline commands: validate, preprocess, train, tune, register."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from msml.cli.app import ContractOpt, ExperimentOpt, MaxInvalidOpt, OutOpt, RawOpt, RunInfoOpt, SeedOpt, _settings, app
from msml.config import (
    DEFAULT_HEARTBEAT_SECONDS,
    DEFAULT_TEST_SIZE,
    DEFAULT_TIME_BUDGET,
    DEFAULT_TRIALS,
    GRACE_BEATS,
    Settings,
)
from msml.errors import TrackingError


@app.command()
def validate(
    raw: Path | None = RawOpt,
    contract: Path | None = ContractOpt,
    max_invalid_share: float = MaxInvalidOpt,
) -> None:
    """Validate a raw CSV against the contract; print the counts and the quarantined rows' reasons."""
    settings = _settings(contract)
    raw = raw or settings.raw_path
    df = settings.contract.read_csv(raw)
    result = settings.contract.validate(df, max_invalid_share=max_invalid_share)
    typer.echo(f"{raw}: {len(df)} rows, {len(result.valid)} valid, {len(result.quarantine)} quarantined")
    for index, reason in result.quarantine["reason"].head(20).items():
        typer.echo(f"  row {index + 2}: {reason}")  # +2: 1-based, after the header line


@app.command()
def preprocess(
    raw: Path | None = RawOpt,
    contract: Path | None = ContractOpt,
    out: Path | None = OutOpt,
    seed: int = SeedOpt,
    test_size: float = typer.Option(
        DEFAULT_TEST_SIZE, "--test-size", min=0.05, max=0.5, help="Share of rows held out as the test split."
    ),
    max_invalid_share: float = MaxInvalidOpt,
    feedback: bool = typer.Option(
        True,
        "--feedback/--no-feedback",
        help="Add the `msml collect` snapshots (data/<dataset>_feedback/) to train, their newest rows held out.",
    ),
) -> None:
    """Load → validate → clean → split → fit the transformer on train → write the processed dataset."""
    from msml.data.preprocessing import preprocess as run
    from msml.loop.collect import snapshots

    settings = _settings(contract)
    out = out or settings.processed_dir
    report, timings = run(
        raw or settings.raw_path,
        out,
        settings.contract,
        seed=seed,
        test_size=test_size,
        max_invalid_share=max_invalid_share,
        feedback=[s.path for s in snapshots(settings.feedback_dir)] if feedback else (),
    )
    summary = {k: v for k, v in report.items() if k not in ("features_in", "features_out")}
    summary["features_out"] = len(report["features_out"])
    typer.echo(json.dumps(summary, indent=2))
    typer.echo("seconds per step: " + ", ".join(f"{k} {v:.2f}" for k, v in timings.items()))
    typer.echo(f"processed dataset written to {out}")


@app.command()
def train(
    contract: Path | None = ContractOpt,
    data: Path | None = typer.Option(None, "--data", help="Processed directory (default from settings)."),
    seed: int = SeedOpt,
    experiment: str | None = ExperimentOpt,
    run_info: Path | None = RunInfoOpt,
) -> None:
    """Baseline: LogisticRegression on the preprocessed data with MLflow autolog (the course's modelling.py)."""
    from msml.training.train import train_baseline

    settings = _settings(contract).with_overrides(processed_dir=data, experiment=experiment)
    typer.echo(f"training the baseline on {settings.processed_dir} (tracking: {settings.tracking_uri})")
    summary = train_baseline(settings, seed=seed, run_info=run_info)
    _print_summary(summary)


@app.command()
def tune(
    contract: Path | None = ContractOpt,
    data: Path | None = typer.Option(None, "--data", help="Processed directory (default from settings)."),
    n_trials: int = typer.Option(DEFAULT_TRIALS, "--n-trials", min=1, help="Optuna trials."),
    cv_folds: int = typer.Option(3, "--cv-folds", min=2, help="Stratified CV folds on the train split."),
    seed: int = SeedOpt,
    experiment: str | None = ExperimentOpt,
    run_info: Path | None = RunInfoOpt,
    register: bool = typer.Option(True, "--register/--no-register", help="Register and gate-promote the model."),
    time_budget: float = typer.Option(
        DEFAULT_TIME_BUDGET, "--time-budget", min=0, help="Stop starting trials after this many seconds (0: no cap)."
    ),
    storage: str | None = typer.Option(
        None,
        "--storage",
        help="Optuna RDB URL (postgresql://… shares the study between processes and machines; default: in memory).",
    ),
    study: str | None = typer.Option(None, "--study", help="Optuna study name; an existing one is joined."),
    workers: int = typer.Option(1, "--workers", min=1, help="Tuning worker processes (above 1: postgresql storage)."),
    join: bool = typer.Option(False, "--join", help="Only join --study (wait for its creator), never create it."),
    heartbeat: int = typer.Option(
        DEFAULT_HEARTBEAT_SECONDS,
        "--heartbeat",
        min=1,
        help="Seconds between a running trial's heartbeats (postgresql storage; the creator's value holds for every "
        f"worker): a trial silent for {GRACE_BEATS} beats is failed and retried by another worker.",
    ),
) -> None:
    """Optuna search with manual logging (the course's modelling_tuning.py); registers and promotes."""
    from msml.training.tuning import tune as run

    settings = _settings(contract).with_overrides(processed_dir=data, experiment=experiment)
    typer.echo(f"tuning with {n_trials} trials, {cv_folds}-fold CV (tracking: {settings.tracking_uri})")
    summary = run(
        settings,
        n_trials=n_trials,
        seed=seed,
        cv_folds=cv_folds,
        run_info=run_info,
        progress=typer.echo,
        time_budget=time_budget or None,
        storage=storage,
        study_name=study,
        workers=workers,
        join=join,
        heartbeat_seconds=heartbeat,
    )
    if summary is None:  # joined a study another `msml tune` created: that one refits and registers
        return
    _print_summary(summary)
    if register:
        _register(settings, summary.model_uri, summary.run_id)


@app.command()
def register(
    run_id: str = typer.Argument(..., help="Run whose logged model to register."),
    contract: Path | None = ContractOpt,
) -> None:
    """Register a run's model and promote it to @champion when it beats the current champion."""
    from msml.tracking.client import setup_tracking
    from msml.training.train import MODEL_ARTIFACT

    settings = _settings(contract)
    setup_tracking(settings)
    _register(settings, f"runs:/{run_id}/{MODEL_ARTIFACT}", run_id)


def _register(settings: Settings, model_uri: str, run_id: str) -> None:
    from mlflow.exceptions import MlflowException

    from msml.tracking.registry import register_and_promote

    try:
        promotion = register_and_promote(model_uri, settings.model_name, run_id)
    except MlflowException as exc:
        raise TrackingError(f"registry: {exc.message}") from None
    state = "promoted to @champion" if promotion.promoted else "registered, not promoted"
    typer.echo(f"{promotion.uri}: {state} ({promotion.reason})")


def _print_summary(summary) -> None:
    shown = {k: round(v, 4) for k, v in sorted(summary.metrics.items()) if k.startswith(("test_", "training_"))}
    typer.echo(json.dumps({"run_id": summary.run_id, "model_uri": summary.model_uri, "metrics": shown}, indent=2))
