"""Collect: served predictions joined with their ground truth into a versioned snapshot in the raw file's format.

Only predictions older than the label-delay horizon are taken (a younger one may still get its label; taking it
unlabelled would bias the snapshot towards quickly labelled rows). The joined rows pass the same contract checks
as raw ingestion, bad ones are quarantined with their reason, and the rest are written as
`<feedback dir>/<version>/<dataset>.csv` with a manifest (row counts, quarantined, time window, sha256).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

SNAPSHOT_MANIFEST = "manifest.json"
DEFAULT_HORIZON = 3600.0  # seconds a prediction must be old before it is collected (the label delay allowed)


@dataclass(frozen=True)
class Snapshot:
    path: Path  # the snapshot's CSV (raw format: the contract's features and target)
    manifest: dict[str, Any]  # version, rows, quarantined, window (first/last prediction time), sha256, ...

    @property
    def directory(self) -> Path:
        return self.path.parent

    @property
    def sha256(self) -> str:
        return self.manifest["sha256"]


def collect(store_url: str, out_dir: str | Path, contract, horizon: float = DEFAULT_HORIZON, now: float | None = None):
    """Join the store's predictions older than `horizon` seconds with their labels, validate, write a snapshot
    under `out_dir`; returns the Snapshot (being filled in on branch loop-store)."""
    raise NotImplementedError("collect is being written on branch loop-store")
