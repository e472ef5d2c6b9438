"""The `msml` command: one sub-command per pipeline stage. It only wires options to the modules."""

from __future__ import annotations

import json
import sys
from functools import wraps
from pathlib import Path
from typing import Optional

import typer

from msml.config import Settings, load_settings
from msml.contract import DEFAULT_MAX_INVALID_SHARE, DataError

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)

ContractOpt = typer.Option(None, "--contract", help="Dataset contract YAML (default: the Adult contract).")
RawOpt = typer.Option(None, "--raw", help="Raw CSV (default: data/<dataset>_raw/<dataset>.csv).")
OutOpt = typer.Option(None, "--out", help="Processed directory (default: data/<dataset>_preprocessing).")
SeedOpt = typer.Option(42, "--seed", help="Random seed for the split (and everything seeded).")
MaxInvalidOpt = typer.Option(
    DEFAULT_MAX_INVALID_SHARE, "--max-invalid-share", help="Fail when more than this share of rows is invalid."
)


def _fail(message: str, code: int = 2) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def handles_errors(func):
    """Known failures become one clear line on stderr and a non-zero exit, not a traceback."""

    @wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except DataError as exc:
            _fail(str(exc))

    return wrapper


def _settings(contract: Optional[Path]) -> Settings:
    try:
        return load_settings(contract_path=contract)
    except DataError as exc:
        _fail(str(exc))


@app.command()
@handles_errors
def validate(
    raw: Optional[Path] = RawOpt,
    contract: Optional[Path] = ContractOpt,
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
@handles_errors
def preprocess(
    raw: Optional[Path] = RawOpt,
    contract: Optional[Path] = ContractOpt,
    out: Optional[Path] = OutOpt,
    seed: int = SeedOpt,
    test_size: float = typer.Option(0.2, "--test-size", min=0.05, max=0.5),
    max_invalid_share: float = MaxInvalidOpt,
) -> None:
    """Load → validate → clean → split → fit the transformer on train → write the processed dataset."""
    from msml.preprocessing import preprocess as run

    settings = _settings(contract)
    out = out or settings.processed_dir
    report, timings = run(
        raw or settings.raw_path, out, settings.contract, seed=seed, test_size=test_size,
        max_invalid_share=max_invalid_share,
    )
    summary = {k: v for k, v in report.items() if k not in ("features_in", "features_out")}
    summary["features_out"] = len(report["features_out"])
    typer.echo(json.dumps(summary, indent=2))
    typer.echo("seconds per step: " + ", ".join(f"{k} {v:.2f}" for k, v in timings.items()))
    typer.echo(f"processed dataset written to {out}")


@app.command()
@handles_errors
def demo(contract: Optional[Path] = ContractOpt) -> None:
    """The main job on embedded defaults: validate and preprocess the committed raw data."""
    from msml.preprocessing import preprocess as run

    settings = _settings(contract)
    typer.echo(f"[1/1] preprocessing {settings.raw_path}")
    report, timings = run(settings.raw_path, settings.processed_dir, settings.contract)
    typer.echo(
        f"  {report['rows_in']} rows in, {report['rows_quarantined']} quarantined, "
        f"{report['duplicates_removed']} duplicates removed, {report['train_rows']} train / "
        f"{report['test_rows']} test rows, {len(report['features_out'])} features "
        f"({sum(timings.values()):.2f} s)"
    )
    typer.echo(f"  processed dataset: {settings.processed_dir} (report: {settings.processed_dir / 'report.json'})")


def main() -> None:
    app(prog_name="msml")


if __name__ == "__main__":
    sys.exit(main())
