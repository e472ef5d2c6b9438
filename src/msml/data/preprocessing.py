"""Automated preprocessing: load → validate → clean → split → fit transformer on train → write.

Each step is a small function taking its inputs as arguments, so the notebook, the CLI, the
course's `automate_<name>.py` and the tests all call the same code.

With feedback snapshots (`msml collect`: served rows with their ground truth, in the raw file's format) the raw
file is split exactly as without them, so the test split stays the same rows; the snapshots' rows, oldest first,
minus any that repeat a raw row, go to train, except the newest `test_size` share of them, held out as the
out-of-time window (`out_of_time_clean.csv`) on which a candidate and the champion are compared.

Its length (~400 lines) is the pipeline's steps side by side, each a few lines; the notebook and the course's
automate script mirror them in this order, so they stay in one module.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import psutil
import pyarrow as pa
import pyarrow.csv as pa_csv
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

from msml.config import DEFAULT_SEED, DEFAULT_TEST_SIZE
from msml.data.contract import DEFAULT_MAX_INVALID_SHARE, Contract, DataError

MISSING_CATEGORY = "missing"

# File names inside the processed directory (one definition; readers use these).
# Train-ready files are gzipped: one-hot columns make them ~11 MB as plain CSV.
TRAIN_FILE = "train.csv.gz"
TEST_FILE = "test.csv.gz"
TRAIN_CLEAN_FILE = "train_clean.csv"
TEST_CLEAN_FILE = "test_clean.csv"
TRANSFORMER_FILE = "transformer.joblib"
REPORT_FILE = "report.json"
QUARANTINE_FILE = "quarantine.csv"
# Everything `preprocess` writes, and all an export copies of the folder.
OUTPUT_FILES = (
    TRAIN_FILE,
    TEST_FILE,
    TRAIN_CLEAN_FILE,
    TEST_CLEAN_FILE,
    TRANSFORMER_FILE,
    REPORT_FILE,
    QUARANTINE_FILE,
)
# Written only when feedback snapshots are given: the newest feedback rows, in raw form (not in train).
OUT_OF_TIME_FILE = "out_of_time_clean.csv"
# file → sha256 of every other file: written last, checked by every reader (a half-written or
# edited dataset is refused, not trained on)
MANIFEST_FILE = "manifest.json"


def load_raw(path: str | Path, contract: Contract) -> pd.DataFrame:
    """Read the raw CSV as the contract describes it (strings, stripped, markers → NaN)."""
    return contract.read_csv(path)


def clean(df: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Drop exact duplicate rows. Returns the frame (index reset) and how many were dropped."""
    deduped = df.drop_duplicates(keep="first")
    return deduped.reset_index(drop=True), len(df) - len(deduped)


def stratified_split(
    df: pd.DataFrame, contract: Contract, test_size: float = DEFAULT_TEST_SIZE, seed: int = DEFAULT_SEED
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Seeded train/test split, stratified on the target."""
    train, test = train_test_split(df, test_size=test_size, stratify=df[contract.target], random_state=seed)
    return train.reset_index(drop=True), test.reset_index(drop=True)


def build_transformer(contract: Contract) -> Pipeline:
    """The unfitted feature transformer: impute + scale numerics, impute + one-hot categories.

    The first step maps None to NaN so rows arriving as JSON (null) are treated exactly like the
    raw file's missing markers. Only sklearn and pandas callables are used, so the pickled model
    needs no msml code to load.
    """
    numeric = Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())])
    categorical = Pipeline(
        [
            ("impute", SimpleImputer(strategy="constant", fill_value=MISSING_CATEGORY)),
            ("onehot", OneHotEncoder(handle_unknown="ignore", sparse_output=False, dtype=np.float64)),
        ]
    )
    columns = ColumnTransformer(
        [("num", numeric, contract.numeric_features), ("cat", categorical, contract.categorical_features)],
        verbose_feature_names_out=False,
    )
    missing_to_nan = FunctionTransformer(pd.DataFrame.where, kw_args={"cond": pd.notna, "other": np.nan})
    return Pipeline([("missing_to_nan", missing_to_nan), ("columns", columns)]).set_output(transform="pandas")


def transform(transformer: Pipeline, df: pd.DataFrame, contract: Contract) -> pd.DataFrame:
    """Apply a fitted transformer; the result is train-ready features plus a 0/1 target."""
    features = transformer.transform(df[contract.features])
    features[contract.target] = encode_target(df[contract.target], contract)
    return features


def encode_target(labels: pd.Series, contract: Contract) -> np.ndarray:
    return (labels == contract.positive).astype(np.int64).to_numpy()


@dataclass
class Splits:
    """Train-ready features and targets."""

    X_train: pd.DataFrame
    X_test: pd.DataFrame
    y_train: pd.Series
    y_test: pd.Series


def write_manifest(directory: Path) -> dict[str, str]:
    """Record the sha256 of every file in `directory` (except the manifest itself) in its manifest."""
    manifest = {p.name: file_sha256(p) for p in sorted(directory.iterdir()) if p.is_file() and p.name != MANIFEST_FILE}
    (directory / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def verify_manifest(processed_dir: str | Path, names: tuple[str, ...]) -> None:
    """DataError unless each of `names` is in the directory's manifest with the same sha256."""
    processed_dir = Path(processed_dir)
    for name in names:  # a missing file first: the most common mistake is a wrong --data
        if not (processed_dir / name).is_file():
            raise DataError(f"processed file not found: {processed_dir / name} (run `msml preprocess` first)")
    try:
        manifest = json.loads((processed_dir / MANIFEST_FILE).read_text())
    except FileNotFoundError:
        raise DataError(
            f"{processed_dir} has no {MANIFEST_FILE}: it was not written by `msml preprocess` "
            "(or was interrupted); run `msml preprocess`"
        ) from None
    except ValueError:
        raise DataError(f"{processed_dir / MANIFEST_FILE} is not valid JSON; run `msml preprocess`") from None
    for name in names:
        path = processed_dir / name
        if manifest.get(name) != file_sha256(path):
            raise DataError(
                f"processed file {path} does not match {MANIFEST_FILE} (changed or half-written); run `msml preprocess`"
            )


def load_training_data(processed_dir: str | Path, contract: Contract) -> Splits:
    """Read the train-ready files, check them against the manifest and the contract, return X/y splits."""
    processed_dir = Path(processed_dir)
    verify_manifest(processed_dir, (TRAIN_FILE, TEST_FILE))
    frames = []
    for name in (TRAIN_FILE, TEST_FILE):
        path = processed_dir / name
        df = pd.read_csv(path, float_precision="round_trip")  # exactly the values written
        feature_names = [c for c in df.columns if c != contract.target]
        if contract.target not in df.columns:
            raise DataError(f"processed file {path} has no target column {contract.target!r}")
        try:
            df = contract.processed_schema(feature_names).validate(df)
        except Exception as exc:  # pandera raises several error types; all mean the same here
            raise DataError(f"processed file {path} fails the contract: {exc}") from None
        frames.append(df)
    train, test = frames
    if list(train.columns) != list(test.columns):
        raise DataError(f"processed train and test files in {processed_dir} have different columns")
    return Splits(
        X_train=train.drop(columns=contract.target),
        X_test=test.drop(columns=contract.target),
        y_train=train[contract.target],
        y_test=test[contract.target],
    )


def load_clean_splits(processed_dir: str | Path, contract: Contract) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The cleaned train/test rows in the contract's raw form (what the served model accepts)."""
    processed_dir = Path(processed_dir)
    verify_manifest(processed_dir, (TRAIN_CLEAN_FILE, TEST_CLEAN_FILE))
    frames = []
    for name in (TRAIN_CLEAN_FILE, TEST_CLEAN_FILE):
        path = processed_dir / name
        df = pd.read_csv(
            path, dtype={c: str for c in contract.categorical_features}, keep_default_na=False, na_values=[""]
        )
        frames.append(contract.raw_schema.validate(df)[[*contract.features, contract.target]])
    return frames[0], frames[1]


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@contextmanager
def _timed(timings: dict[str, float], step: str):
    start = time.perf_counter()
    yield
    timings[step] = round(time.perf_counter() - start, 4)


def _write_csv(df: pd.DataFrame, path: Path) -> None:
    """Write fast and deterministically (pyarrow's CSV writer; gzip without a timestamp)."""
    # 0/1 columns written as integers: smaller, and exact
    binary = [c for c in df.columns if df[c].dtype == np.float64 and df[c].isin((0.0, 1.0)).all()]
    table = pa.Table.from_pandas(df.astype({c: np.uint8 for c in binary}), preserve_index=False)
    buffer = io.BytesIO()
    pa_csv.write_csv(table, buffer, pa_csv.WriteOptions(quoting_style="needed"))
    data = buffer.getvalue()
    if path.suffix == ".gz":
        data = gzip.compress(data, compresslevel=6, mtime=0)
    path.write_bytes(data)


def _replace_dir(new: Path, out: Path) -> None:
    """Put the finished directory `new` at `out`: two renames on the same file system, so a reader sees
    the old dataset or the new one, never a mix (a crash between them leaves the old one at `.old-*`,
    which the next run puts back)."""
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        os.replace(out, old)
    os.replace(new, out)
    shutil.rmtree(old, ignore_errors=True)


def _refuse_foreign_files(out: Path) -> None:
    """The folder is replaced as a whole: refuse one that holds files preprocessing did not write."""
    ours = (*OUTPUT_FILES, OUT_OF_TIME_FILE, MANIFEST_FILE)
    foreign = sorted(p.name for p in out.iterdir() if p.name not in ours) if out.is_dir() else []
    if foreign:
        raise DataError(
            f"{out} holds files `msml preprocess` did not write ({', '.join(foreign[:5])}); "
            "choose an empty folder with --out"
        )


def _recover(out: Path) -> None:
    """Undo what a killed run left: put back a dataset moved aside, drop unfinished temp folders."""
    for leftover in sorted(out.parent.glob(f".{out.name}.*-*")):
        pid = leftover.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and psutil.pid_exists(int(pid)):
            continue  # another preprocess is writing right now
        if ".old-" in leftover.name and not out.exists():
            os.replace(leftover, out)
        else:
            shutil.rmtree(leftover, ignore_errors=True)


@dataclass
class Feedback:
    """Feedback rows split for training: `train` (to add to the train split), `out_of_time` (the newest, held out),
    their quarantined rows, the snapshots read, and the rows dropped as repeats of raw (or earlier feedback) rows."""

    train: pd.DataFrame
    out_of_time: pd.DataFrame
    quarantine: pd.DataFrame
    snapshots: list[dict]
    duplicates: int


def load_feedback(
    snapshots: list[Path],
    raw_rows: pd.DataFrame,
    contract: Contract,
    holdout_share: float = DEFAULT_TEST_SIZE,
    max_invalid_share: float = DEFAULT_MAX_INVALID_SHARE,
) -> Feedback:
    """Read and validate the snapshots (oldest first), drop rows that repeat a raw row (`raw_rows`: the cleaned raw
    file, train and test: a repeat of a test row must not reach training) or an earlier feedback row, and hold the
    newest `holdout_share` (at least one row) out as the out-of-time window."""
    frames, quarantines, used = [], [], []
    for path in snapshots:
        path = Path(path)
        result = contract.validate(contract.read_csv(path), max_invalid_share=max_invalid_share)
        frames.append(result.valid)
        quarantines.append(result.quarantine)
        used.append(
            {
                "version": path.parent.name,
                "file": str(path),
                "sha256": file_sha256(path),
                "rows": len(result.valid),
                "rows_quarantined": len(result.quarantine),
            }
        )
    feedback = pd.concat(frames, ignore_index=True)
    repeats = pd.concat([raw_rows, feedback], ignore_index=True).duplicated(keep="first").to_numpy()[len(raw_rows) :]
    kept = feedback[~repeats].reset_index(drop=True)
    held = int(np.ceil(len(kept) * holdout_share)) if len(kept) else 0
    return Feedback(
        train=kept.iloc[: len(kept) - held].reset_index(drop=True),
        out_of_time=kept.iloc[len(kept) - held :].reset_index(drop=True),
        quarantine=pd.concat(quarantines, ignore_index=True),
        snapshots=used,
        duplicates=int(repeats.sum()),
    )


def load_out_of_time(processed_dir: str | Path, contract: Contract) -> pd.DataFrame | None:
    """The out-of-time window in the contract's raw form (None when the dataset was built without feedback)."""
    processed_dir = Path(processed_dir)
    if not (processed_dir / OUT_OF_TIME_FILE).is_file():
        return None
    verify_manifest(processed_dir, (OUT_OF_TIME_FILE,))
    df = pd.read_csv(
        processed_dir / OUT_OF_TIME_FILE,
        dtype={c: str for c in contract.categorical_features},
        keep_default_na=False,
        na_values=[""],
    )
    return contract.raw_schema.validate(df)[[*contract.features, contract.target]]


def preprocess(
    raw: str | Path,
    out: str | Path,
    contract: Contract,
    seed: int = DEFAULT_SEED,
    test_size: float = DEFAULT_TEST_SIZE,
    max_invalid_share: float = DEFAULT_MAX_INVALID_SHARE,
    feedback: list[Path] | tuple[Path, ...] = (),
) -> tuple[dict, dict[str, float]]:
    """Run every step and write the processed directory; `feedback`: snapshot CSVs (`msml collect`), oldest first.

    Returns the report (also written as report.json) and the seconds each step took.
    Same input and seed give byte-identical files. Everything is written into a temporary folder next
    to `out` and renamed into place with its manifest, so an interrupted run leaves the previous dataset.
    """
    out = Path(out)
    timings: dict[str, float] = {}
    with _timed(timings, "load"):
        df = load_raw(raw, contract)
    with _timed(timings, "validate"):
        result = contract.validate(df, max_invalid_share=max_invalid_share)
    with _timed(timings, "clean"):
        cleaned, duplicates = clean(result.valid)
    with _timed(timings, "split"):
        train, test = stratified_split(cleaned, contract, test_size=test_size, seed=seed)
    fb = None
    if feedback:
        with _timed(timings, "feedback"):
            fb = load_feedback(list(feedback), cleaned, contract, test_size, max_invalid_share)
            train = pd.concat([train, fb.train], ignore_index=True)
    quarantine = result.quarantine if fb is None else pd.concat([result.quarantine, fb.quarantine], ignore_index=True)
    with _timed(timings, "fit_transform"):
        transformer = build_transformer(contract).fit(train[contract.features])
        train_ready = transform(transformer, train, contract)
        test_ready = transform(transformer, test, contract)
    with _timed(timings, "write"):
        out.parent.mkdir(parents=True, exist_ok=True)
        _recover(out)
        _refuse_foreign_files(out)
        tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        _write_csv(train_ready, tmp / TRAIN_FILE)
        _write_csv(test_ready, tmp / TEST_FILE)
        _write_csv(train, tmp / TRAIN_CLEAN_FILE)
        _write_csv(test, tmp / TEST_CLEAN_FILE)
        _write_csv(quarantine, tmp / QUARANTINE_FILE)
        if fb is not None:
            _write_csv(fb.out_of_time, tmp / OUT_OF_TIME_FILE)
        joblib.dump(transformer, tmp / TRANSFORMER_FILE)
        report = {
            "contract": contract.name,
            "raw_file": Path(raw).name,
            "raw_sha256": file_sha256(raw),
            "seed": seed,
            "test_size": test_size,
            "rows_in": len(df),
            "rows_quarantined": len(result.quarantine),
            "duplicates_removed": duplicates,
            "rows_out": len(cleaned),
            "train_rows": len(train),
            "test_rows": len(test),
            "missing_values": {c: int(n) for c, n in cleaned[contract.features].isna().sum().items() if n},
            "class_balance": {
                split: {label: int(n) for label, n in frame[contract.target].value_counts().sort_index().items()}
                for split, frame in (("train", train), ("test", test))
            },
            "features_in": contract.features,
            "features_out": [c for c in train_ready.columns if c != contract.target],
        }
        if fb is not None:  # only then: a dataset built from the raw file alone reports exactly what it did
            report["feedback"] = {
                "snapshots": fb.snapshots,
                "rows_quarantined": len(fb.quarantine),
                "duplicates_removed": fb.duplicates,
                "train_rows": len(fb.train),
                "out_of_time_rows": len(fb.out_of_time),
                "out_of_time_class_balance": {
                    label: int(n) for label, n in fb.out_of_time[contract.target].value_counts().sort_index().items()
                },
            }
        (tmp / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
        write_manifest(tmp)
        _replace_dir(tmp, out)
    return report, timings
