"""Automated preprocessing on the real file: outputs, no leakage, determinism, CLI errors."""

from __future__ import annotations

import hashlib
import json
import math

import joblib
import numpy as np
import pandas as pd
import pytest

from msml.data.preprocessing import (
    QUARANTINE_FILE,
    REPORT_FILE,
    TRANSFORMER_FILE,
    load_clean_splits,
    load_training_data,
    preprocess,
)
from tests.conftest import RAW, run_msml
from tests.rows import broken, rule_breaks, write_raw_csv


def test_report_counts(processed, contract, raw_path, committed_report):
    """Every count is checked against the data itself (the raw file's lines, the written splits and quarantine),
    and equals the committed report's: `msml preprocess` is reproducible and the committed data is current."""
    report = json.loads((processed / REPORT_FILE).read_text())
    train, test = load_clean_splits(processed, contract)
    quarantined = pd.read_csv(processed / QUARANTINE_FILE, dtype=str, keep_default_na=False)
    assert report["rows_in"] == sum(1 for line in raw_path.read_text().splitlines()[1:] if line.strip())
    assert report["rows_quarantined"] == len(quarantined)
    assert report["rows_in"] - report["rows_quarantined"] - report["duplicates_removed"] == report["rows_out"]
    assert (report["train_rows"], report["test_rows"]) == (len(train), len(test))
    assert report["rows_out"] == len(train) + len(test)
    assert report["test_rows"] == math.ceil(report["rows_out"] * report["test_size"])  # scikit-learn rounds up
    both = pd.concat([train, test])[contract.features]
    assert report["missing_values"] == {c: int(n) for c, n in both.isna().sum().items() if n}
    counted = ("rows_in", "rows_quarantined", "duplicates_removed", "rows_out", "train_rows", "test_rows")
    assert {k: report[k] for k in counted} == {k: committed_report[k] for k in counted}
    assert report["missing_values"] == committed_report["missing_values"]


def test_split_is_stratified(processed, contract):
    splits = load_training_data(processed, contract)
    report = json.loads((processed / REPORT_FILE).read_text())
    assert splits.X_train.shape == (report["train_rows"], len(splits.X_test.columns))
    assert abs(splits.y_train.mean() - splits.y_test.mean()) < 0.001
    assert not splits.X_train.isna().any().any()


def test_no_leakage_transformer_statistics_come_from_train_only(processed, contract):
    transformer = joblib.load(processed / TRANSFORMER_FILE)
    train, test = load_clean_splits(processed, contract)
    numeric = contract.numeric_features
    columns = transformer.named_steps["columns"]
    scaler = columns.named_transformers_["num"].named_steps["scale"]
    imputer = columns.named_transformers_["num"].named_steps["impute"]
    np.testing.assert_allclose(scaler.mean_, train[numeric].mean().to_numpy())
    np.testing.assert_allclose(imputer.statistics_, train[numeric].median().to_numpy())
    # and they are not the statistics of all rows
    both = np.concatenate([train[numeric].to_numpy(), test[numeric].to_numpy()])
    assert not np.allclose(scaler.mean_, both.mean(axis=0))


def test_same_input_and_seed_give_identical_bytes(tmp_path, contract, processed):
    again = tmp_path / "again"
    preprocess(RAW, again, contract, seed=42)

    def digest(d):
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())}

    assert digest(again) == digest(processed)


def test_transformer_accepts_json_style_missing_values(processed, contract):
    transformer = joblib.load(processed / TRANSFORMER_FILE)
    _, test = load_clean_splits(processed, contract)
    rows = test[contract.features].head(3).astype(object)
    nullable = next(c.name for c in contract.columns if c.nullable and not c.is_numeric)
    with_none, with_nan = rows.copy(), rows.copy()
    with_none[nullable] = None
    with_nan[nullable] = np.nan
    np.testing.assert_array_equal(transformer.transform(with_none), transformer.transform(with_nan))


def test_cli_preprocess_writes_outputs(tmp_path, committed_report):
    result = run_msml("preprocess", "--out", str(tmp_path / "out"), "--seed", "7")
    assert result.returncode == 0, result.stderr
    rows_out = committed_report["rows_out"]  # the seed moves rows between the splits, not in or out
    assert f'"rows_out": {rows_out}' in result.stdout and "processed dataset written to" in result.stdout
    assert (tmp_path / "out" / REPORT_FILE).is_file()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "raw file is empty"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00binary", "not a CSV (binary content)"),
        (b"\xff\xfe\xfa not utf8", "not a CSV (not UTF-8 text)"),
        (b"age,workclass\n39,Private\n", "missing required column(s): fnlwgt, education"),
    ],
)
def test_cli_refuses_bad_files_with_a_specific_message(tmp_path, content, message):
    bad = tmp_path / "bad.csv"
    bad.write_bytes(content)
    for command in ("validate", "preprocess"):
        result = (
            run_msml(command, "--raw", str(bad), "--out", str(tmp_path / "o"))
            if command == "preprocess"
            else run_msml(command, "--raw", str(bad))
        )
        assert result.returncode == 2
        assert message in result.stderr
        assert "Traceback" not in result.stderr


def test_cli_fails_above_invalid_threshold(tmp_path, contract, valid_rows):
    above_max = next(b for b in rule_breaks(contract) if b.rule.endswith("-max"))
    bad = write_raw_csv(broken(valid_rows.head(100), list(range(1, 11)), above_max), tmp_path / "dirty.csv", contract)
    result = run_msml("validate", "--raw", str(bad))  # 10 % of the rows break one range
    assert result.returncode == 2 and "10 of 100 rows (10.0%) are invalid" in result.stderr
    ok = run_msml("validate", "--raw", str(bad), "--max-invalid-share", "0.2")
    assert ok.returncode == 0 and "10 quarantined" in ok.stdout and above_max.reason in ok.stdout
