"""Collect: served predictions joined with their ground truth into a versioned snapshot in the raw file's format.

Each snapshot takes the labelled predictions made in its window: from the previous snapshot's end (the first:
from the beginning) to `now - horizon`. Only predictions older than the label-delay horizon are taken: a younger one
may still get its label, and taking only the labelled part of the recent rows would favour the quickly labelled.
A label that comes after its prediction's window was collected stays in the store, not in a snapshot.

The joined rows pass the same contract checks as raw ingestion (`Contract.validate`: bad rows quarantined with their
reason, the run refused above `max_invalid_share`), and the valid ones are written as `<out>/<version>/<dataset>.csv`
in the raw file's own layout (quoted header, `, ` separated, the contract's missing marker), oldest first, beside
`quarantine.csv` and `manifest.json` (version, window, row counts, sha256 of the CSV). The same store and window give
the same bytes. The folder is written aside and renamed into place: a reader sees a whole snapshot or none.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from msml.data.contract import DEFAULT_MAX_INVALID_SHARE, Contract, DataError
from msml.data.preprocessing import file_sha256
from msml.loop.store import open_store

SNAPSHOT_MANIFEST = "manifest.json"
SNAPSHOT_QUARANTINE = "quarantine.csv"
REQUEST_ID = "request_id"  # the quarantine file's first column: which prediction each bad row came from
# Seconds a prediction must be old before it is collected: the label delay allowed. An hour suits the demo and
# the loadgen's immediate feedback; a deployment whose labels take days sets `--horizon` to match.
DEFAULT_HORIZON = 3600.0
VERSION_PREFIX = "v"


@dataclass(frozen=True)
class Snapshot:
    path: Path  # the snapshot's CSV (raw format: the contract's features and target)
    manifest: dict[str, Any]  # version, window, rows, quarantined, sha256, ...

    @property
    def directory(self) -> Path:
        return self.path.parent

    @property
    def version(self) -> str:
        return self.manifest["version"]

    @property
    def sha256(self) -> str:
        return self.manifest["sha256"]


def snapshots(out_dir: str | Path) -> list[Snapshot]:
    """The finished snapshots under `out_dir`, oldest version first (folders without a manifest are skipped: a
    snapshot is finished once its manifest is in place)."""
    out_dir = Path(out_dir)
    found = []
    for manifest_path in sorted(out_dir.glob(f"{VERSION_PREFIX}*/{SNAPSHOT_MANIFEST}")):
        manifest = json.loads(manifest_path.read_text())
        found.append(Snapshot(manifest_path.parent / manifest["file"], manifest))
    return found


def _raw_value(value: Any, marker: str) -> str:
    """One cell as the raw file writes it: the missing marker, a number, or text (quoted when it needs it)."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return marker
    text = str(value)
    if any(ch in text for ch in ',"\n\r'):
        return '"' + text.replace('"', '""') + '"'
    return text


def write_raw_csv(df: pd.DataFrame, path: Path, contract: Contract) -> None:
    """Write rows in the raw file's layout: quoted header, `, ` between values, the contract's missing marker."""
    marker = contract.missing_markers[0] if contract.missing_markers else ""
    lines = [",".join(f'"{c}"' for c in df.columns)]
    lines += [", ".join(_raw_value(v, marker) for v in row) for row in df.itertuples(index=False, name=None)]
    path.write_text("\n".join(lines) + "\n")


def joined_frame(pairs, contract: Contract) -> tuple[pd.DataFrame, list[str]]:
    """The joined rows as `Contract.read_csv` gives a raw file (text, stripped, missing as NaN), and their ids."""
    columns = [*contract.features, contract.target]
    records = []
    for prediction, label in pairs:
        row = prediction.row
        records.append([row.get(f) for f in contract.features] + [label.label])
    df = pd.DataFrame(records, columns=columns, dtype=object)
    missing = ("", *contract.missing_markers)
    # text as the raw reader has it: a number as its digits, a marker or None as missing
    df = df.map(lambda v: np.nan if v is None else (t if (t := str(v).strip()) not in missing else np.nan))
    return df, [p.request_id for p, _ in pairs]


def collect(
    store_url: str,
    out_dir: str | Path,
    contract: Contract,
    horizon: float = DEFAULT_HORIZON,
    now: float | None = None,
    max_invalid_share: float = DEFAULT_MAX_INVALID_SHARE,
) -> Snapshot | None:
    """Write the next snapshot under `out_dir` from the store at `store_url`: labelled predictions made from the
    last snapshot's window end to `now - horizon`. Returns it, or None when that window holds no labelled
    prediction (nothing written). DataError when more than `max_invalid_share` of the joined rows fail the
    contract (nothing written: a data-quality problem is for a person, not for training)."""
    out_dir = Path(out_dir)
    now = time.time() if now is None else now
    end = now - horizon
    previous = snapshots(out_dir)
    start = previous[-1].manifest["window"]["end"] if previous else None
    if start is not None and end <= start:
        return None
    store = open_store(store_url)
    try:
        pairs = store.labelled_predictions(before=end, since=start)
    finally:
        store.close()
    if not pairs:
        return None
    df, ids = joined_frame(pairs, contract)
    result = contract.validate(df, max_invalid_share=max_invalid_share)
    valid = df.loc[result.valid.index]  # the text as served, not the typed frame: the raw file's own spelling
    quarantine = result.quarantine.copy()
    quarantine.insert(0, REQUEST_ID, [ids[i] for i in quarantine.index])
    version = f"{VERSION_PREFIX}{len(previous) + 1:04d}"
    file_name = f"{contract.name}.csv"
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".{version}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    write_raw_csv(valid, tmp / file_name, contract)
    quarantine.to_csv(tmp / SNAPSHOT_QUARANTINE, index=False, lineterminator="\n")
    times = [p.time for p, _ in pairs]
    delays = [label.time - p.time for p, label in pairs]
    other_contract = sum(p.contract_hash != contract.fingerprint for p, _ in pairs)
    manifest = {
        "version": version,
        "dataset": contract.name,
        "contract": contract.fingerprint,
        "file": file_name,
        "sha256": file_sha256(tmp / file_name),
        "window": {"start": start, "end": end, "horizon": horizon},
        "first_prediction": min(times),
        "last_prediction": max(times),
        "rows_joined": len(pairs),
        "rows": len(valid),
        "rows_quarantined": len(quarantine),
        "rows_other_contract": other_contract,
        "label_delay_seconds": {"median": float(np.median(delays)), "max": float(max(delays))},
        "class_balance": {k: int(v) for k, v in valid[contract.target].value_counts().sort_index().items()},
        "models": sorted({f"{p.model_name}/{p.model_version}" for p, _ in pairs}),
    }
    (tmp / SNAPSHOT_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    try:
        os.replace(tmp, out_dir / version)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DataError(f"{out_dir / version} was written by another collect meanwhile; run collect again") from None
    return Snapshot(out_dir / version / file_name, manifest)
