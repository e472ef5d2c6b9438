"""automate_YudhaElfransyah.py — Kriteria 1: turn the raw adult data into a train-ready dataset.

The steps of Eksperimen_YudhaElfransyah.ipynb, one function each, with pandas and scikit-learn only:
  1. load_raw         read ../adult_raw/adult.csv as text, strip spaces, missing markers ? -> NaN
  2. validate         type, range and category of every value (COLUMNS below); bad rows go to quarantine.csv with
                      their reason (never dropped silently); fails when more than 5 % of the rows are bad
  3. clean            drop exact duplicate rows
  4. split            stratified train/test split (seeded) — BEFORE anything is fitted
  5. fit_transformer  on the train split only: numerics median-imputed + standardised, categories imputed with
                      "missing" + one-hot encoded; then applied to both splits
  6. write            adult_preprocessing/: train.csv.gz, test.csv.gz (train-ready), train_clean.csv, test_clean.csv
                      (the raw form the served model takes), transformer.joblib, report.json, quarantine.csv
Same input and seed give byte-identical files.

Run (paths default to this script's repository):
    python preprocessing/automate_YudhaElfransyah.py [--raw FILE] [--out DIR] [--seed 42]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import re
import sys
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

HERE = Path(__file__).resolve().parent
RAW = HERE.parent / "adult_raw" / "adult.csv"
OUT = HERE / "adult_preprocessing"

# The dataset: every column, its type and what values are allowed (from the data contract).
DATASET = 'adult'
TARGET = 'class'
LABELS = ('<=50K', '>50K')  # (negative, positive) as written in the raw file
POSITIVE = '>50K'
MISSING_MARKERS = ('?',)
COLUMNS = {
    'age': {'type': 'int', 'min': 17, 'max': 100},
    'workclass': {'type': 'category',
                  'nullable': True,
                  'values': ['Federal-gov', 'Local-gov', 'Never-worked', 'Private', 'Self-emp-inc',
                             'Self-emp-not-inc', 'State-gov', 'Without-pay']},
    'fnlwgt': {'type': 'int', 'min': 1, 'max': 10000000},
    'education': {'type': 'category',
                  'values': ['10th', '11th', '12th', '1st-4th', '5th-6th', '7th-8th', '9th', 'Assoc-acdm',
                             'Assoc-voc', 'Bachelors', 'Doctorate', 'HS-grad', 'Masters', 'Preschool',
                             'Prof-school', 'Some-college']},
    'education-num': {'type': 'int', 'min': 1, 'max': 16},
    'marital-status': {'type': 'category',
                       'values': ['Divorced', 'Married-AF-spouse', 'Married-civ-spouse', 'Married-spouse-absent',
                                  'Never-married', 'Separated', 'Widowed']},
    'occupation': {'type': 'category',
                   'nullable': True,
                   'values': ['Adm-clerical', 'Armed-Forces', 'Craft-repair', 'Exec-managerial',
                              'Farming-fishing', 'Handlers-cleaners', 'Machine-op-inspct', 'Other-service',
                              'Priv-house-serv', 'Prof-specialty', 'Protective-serv', 'Sales', 'Tech-support',
                              'Transport-moving']},
    'relationship': {'type': 'category',
                     'values': ['Husband', 'Not-in-family', 'Other-relative', 'Own-child', 'Unmarried', 'Wife']},
    'race': {'type': 'category',
             'values': ['Amer-Indian-Eskimo', 'Asian-Pac-Islander', 'Black', 'Other', 'White']},
    'sex': {'type': 'category', 'values': ['Female', 'Male']},
    'capital-gain': {'type': 'int', 'min': 0, 'max': 99999},
    'capital-loss': {'type': 'int', 'min': 0, 'max': 99999},
    'hours-per-week': {'type': 'int', 'min': 1, 'max': 99},
    'native-country': {'type': 'category',
                       'nullable': True,
                       'values': ['Cambodia', 'Canada', 'China', 'Columbia', 'Cuba', 'Dominican-Republic',
                                  'Ecuador', 'El-Salvador', 'England', 'France', 'Germany', 'Greece', 'Guatemala',
                                  'Haiti', 'Holand-Netherlands', 'Honduras', 'Hong', 'Hungary', 'India', 'Iran',
                                  'Ireland', 'Italy', 'Jamaica', 'Japan', 'Laos', 'Mexico', 'Nicaragua',
                                  'Outlying-US(Guam-USVI-etc)', 'Peru', 'Philippines', 'Poland', 'Portugal',
                                  'Puerto-Rico', 'Scotland', 'South', 'Taiwan', 'Thailand', 'Trinadad&Tobago',
                                  'United-States', 'Vietnam', 'Yugoslavia']},
}
FEATURES = list(COLUMNS)
NUMERIC = [name for name, spec in COLUMNS.items() if spec["type"] != "category"]
CATEGORICAL = [name for name, spec in COLUMNS.items() if spec["type"] == "category"]

SEED = 42
TEST_SIZE = 0.2
MAX_INVALID_SHARE = 0.05
MISSING_CATEGORY = "missing"


class DataError(Exception):
    """The raw data cannot be used; the message says exactly why."""


def load_raw(path: Path) -> pd.DataFrame:
    """Read the raw CSV as text: values stripped of the leading space, missing markers and empty cells as NaN."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        raise DataError(f"raw file not found or empty: {path}")
    try:
        df = pd.read_csv(path, dtype=str, skipinitialspace=True, na_values=list(MISSING_MARKERS),
                         keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"raw file is not a valid CSV: {path}: {exc}") from None
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in [*FEATURES, TARGET] if c not in df.columns]
    if missing:
        raise DataError(f"raw file {path} is missing required column(s): {', '.join(missing)}")
    if df.empty:
        raise DataError(f"raw file has a header but no data rows: {path}")
    return df.replace({"": np.nan})


def _numeric_dtype(spec: dict) -> str:
    # float when the column may be missing: numpy integers cannot hold NaN
    return "float64" if (spec["type"] == "float" or spec.get("nullable")) else "int64"


def validate(df: pd.DataFrame, max_invalid_share: float = MAX_INVALID_SHARE) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Check every value against COLUMNS. Returns (valid rows with their types, quarantined rows + reason)."""
    reasons: dict[int, list[str]] = {}

    def flag(mask: pd.Series, column: str, what: str, values: pd.Series | None = None) -> None:
        for index, value in (df[column] if values is None else values).loc[mask].items():
            reasons.setdefault(index, []).append(f"{column}: {what} ({value!r})")

    typed = {}
    for name, spec in COLUMNS.items():
        values = df[name]
        missing = values.isna()
        if not spec.get("nullable"):
            flag(missing, name, "missing value")
        if spec["type"] == "category":
            flag(~missing & ~values.isin(spec["values"]), name, "unknown category")
            typed[name] = values
            continue
        dtype = _numeric_dtype(spec)
        pattern = r"[+-]?\d+" if dtype == "int64" else r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?"
        well_formed = values.str.fullmatch(pattern, flags=re.ASCII).fillna(False).astype(bool)
        flag(~missing & ~well_formed, name, f"wrong type (expected {dtype!r})")
        number = pd.to_numeric(values.where(well_formed), errors="coerce")
        shown = pd.Series([int(v) if dtype == "int64" and v == v else v for v in number], index=number.index,
                          dtype=object)  # the value as its type (16, not 16.0), as reported
        if spec.get("min") is not None:
            flag(well_formed & (number < spec["min"]), name, f"out of range (min {spec['min']})", shown)
        if spec.get("max") is not None:
            flag(well_formed & (number > spec["max"]), name, f"out of range (max {spec['max']})", shown)
        typed[name] = number
    flag(~df[TARGET].isin(LABELS), TARGET, "unknown label")

    bad = [i for i in df.index if i in reasons]
    quarantine = df.loc[bad].copy()
    quarantine["reason"] = ["; ".join(reasons[i]) for i in bad]
    if len(bad) / len(df) > max_invalid_share:
        raise DataError(f"{len(bad)} of {len(df)} rows ({len(bad) / len(df):.1%}) are invalid, above the allowed "
                        f"{max_invalid_share:.1%}; first reasons: {quarantine['reason'].head(3).tolist()}")
    good = df.index.difference(bad)
    valid = pd.DataFrame({name: typed[name].loc[good] for name in FEATURES}, index=good)
    for name in NUMERIC:
        valid[name] = valid[name].astype(_numeric_dtype(COLUMNS[name]))
    valid[TARGET] = df.loc[good, TARGET]
    return valid, quarantine


def clean(df: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Drop exact duplicate rows (keeping the first). Returns the frame and how many rows were dropped."""
    deduped = df.drop_duplicates(keep="first")
    return deduped.reset_index(drop=True), len(df) - len(deduped)


def split(df: pd.DataFrame, test_size: float = TEST_SIZE, seed: int = SEED) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Seeded train/test split, stratified on the target so both keep the class balance."""
    train, test = train_test_split(df, test_size=test_size, stratify=df[TARGET], random_state=seed)
    return train.reset_index(drop=True), test.reset_index(drop=True)


def fit_transformer(train: pd.DataFrame) -> Pipeline:
    """Impute + standardise numerics, impute + one-hot categories — fitted on the train split only.

    The first step maps None to NaN, so rows arriving as JSON (null) at the served model are treated
    exactly like the raw file's missing markers.
    """
    numeric = Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())])
    categorical = Pipeline([
        ("impute", SimpleImputer(strategy="constant", fill_value=MISSING_CATEGORY)),
        ("onehot", OneHotEncoder(handle_unknown="ignore", sparse_output=False, dtype=np.float64)),
    ])
    columns = ColumnTransformer([("num", numeric, list(NUMERIC)), ("cat", categorical, list(CATEGORICAL))],
                                verbose_feature_names_out=False)
    missing_to_nan = FunctionTransformer(pd.DataFrame.where, kw_args={"cond": pd.notna, "other": np.nan})
    transformer = Pipeline([("missing_to_nan", missing_to_nan), ("columns", columns)]).set_output(transform="pandas")
    return transformer.fit(train[FEATURES])


def transform(transformer: Pipeline, df: pd.DataFrame) -> pd.DataFrame:
    """Train-ready features plus the target as 0/1 (1 = the positive label)."""
    features = transformer.transform(df[FEATURES])
    features[TARGET] = (df[TARGET] == POSITIVE).astype(np.int64).to_numpy()
    return features


def write_csv(df: pd.DataFrame, path: Path) -> None:
    """Write deterministically: 0/1 columns as integers, pyarrow's CSV writer, gzip without a timestamp."""
    binary = [c for c in df.columns if df[c].dtype == np.float64 and df[c].isin((0.0, 1.0)).all()]
    table = pa.Table.from_pandas(df.astype({c: np.uint8 for c in binary}), preserve_index=False)
    buffer = io.BytesIO()
    pa_csv.write_csv(table, buffer, pa_csv.WriteOptions(quoting_style="needed"))
    data = buffer.getvalue()
    if path.suffix == ".gz":
        data = gzip.compress(data, compresslevel=6, mtime=0)
    path.write_bytes(data)


def write(out: Path, raw: Path, raw_rows: int, seed: int, test_size: float, quarantine: pd.DataFrame,
          cleaned: pd.DataFrame, duplicates: int, train: pd.DataFrame, test: pd.DataFrame,
          transformer: Pipeline) -> dict:
    """Write the processed folder and its report.json; returns the report."""
    out.mkdir(parents=True, exist_ok=True)
    train_ready, test_ready = transform(transformer, train), transform(transformer, test)
    write_csv(train_ready, out / "train.csv.gz")
    write_csv(test_ready, out / "test.csv.gz")
    write_csv(train, out / "train_clean.csv")
    write_csv(test, out / "test_clean.csv")
    write_csv(quarantine, out / "quarantine.csv")
    joblib.dump(transformer, out / "transformer.joblib")
    report = {
        "contract": DATASET,
        "raw_file": Path(raw).name,
        "raw_sha256": hashlib.sha256(Path(raw).read_bytes()).hexdigest(),
        "seed": seed,
        "test_size": test_size,
        "rows_in": raw_rows,
        "rows_quarantined": len(quarantine),
        "duplicates_removed": duplicates,
        "rows_out": len(cleaned),
        "train_rows": len(train),
        "test_rows": len(test),
        "missing_values": {c: int(n) for c, n in cleaned[FEATURES].isna().sum().items() if n},
        "class_balance": {
            name: {label: int(n) for label, n in frame[TARGET].value_counts().sort_index().items()}
            for name, frame in (("train", train), ("test", test))
        },
        "features_in": FEATURES,
        "features_out": [c for c in train_ready.columns if c != TARGET],
    }
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def preprocess(raw: Path = RAW, out: Path = OUT, seed: int = SEED, test_size: float = TEST_SIZE) -> dict:
    """Every step in order; returns the report."""
    df = load_raw(raw)
    valid, quarantine = validate(df)
    cleaned, duplicates = clean(valid)
    train, test = split(cleaned, test_size=test_size, seed=seed)
    transformer = fit_transformer(train)
    return write(Path(out), Path(raw), len(df), seed, test_size, quarantine, cleaned, duplicates, train, test,
                 transformer)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--raw", type=Path, default=RAW, help=f"raw CSV (default: {RAW})")
    parser.add_argument("--out", type=Path, default=OUT, help=f"output directory (default: {OUT})")
    parser.add_argument("--seed", type=int, default=SEED, help="seed of the split (default: 42)")
    parser.add_argument("--test-size", type=float, default=TEST_SIZE, help="share of rows in the test split")
    args = parser.parse_args(argv)
    try:
        report = preprocess(args.raw, args.out, seed=args.seed, test_size=args.test_size)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({k: v for k, v in report.items() if k not in ("features_in", "features_out")}, indent=2))
    print(f"processed dataset written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
