"""Expectations on the processed directory: row accounting and class balance as report.json records them,
clean splits that pass the contract, no row in both splits, train-ready files with the report's columns, and a
quarantine file whose every row says why."""

from __future__ import annotations

import pandas as pd
import pytest

from msml.data.preprocessing import TEST_FILE, TRAIN_FILE

# Stratified splitting keeps each split's positive share within a row or two of the other's.
STRATIFIED_TOLERANCE = 0.005


@pytest.fixture(scope="module")
def ready(processed_dir) -> dict[str, pd.DataFrame]:
    return {name: pd.read_csv(processed_dir / file) for name, file in (("train", TRAIN_FILE), ("test", TEST_FILE))}


def test_every_raw_row_is_accounted_for(report, train_clean, test_clean, quarantine):
    assert report["rows_in"] - report["rows_quarantined"] - report["duplicates_removed"] == report["rows_out"]
    assert report["train_rows"] + report["test_rows"] == report["rows_out"]
    assert (len(train_clean), len(test_clean), len(quarantine)) == (
        report["train_rows"],
        report["test_rows"],
        report["rows_quarantined"],
    )


@pytest.mark.parametrize("split", ["train", "test"])
def test_clean_split_passes_the_contract(split, train_clean, test_clean, contract):
    frame = {"train": train_clean, "test": test_clean}[split]
    assert list(frame.columns) == [*contract.features, contract.target]
    contract.raw_schema.validate(frame, lazy=True)  # raises with every failing value


def test_class_balance_is_the_reports_and_the_split_is_stratified(report, train_clean, test_clean, contract):
    shares = {}
    for split, frame in (("train", train_clean), ("test", test_clean)):
        counts = {label: int(n) for label, n in frame[contract.target].value_counts().items()}
        assert counts == report["class_balance"][split]
        shares[split] = counts.get(contract.positive, 0) / len(frame)
    assert 0 < shares["train"] < 1
    assert abs(shares["train"] - shares["test"]) <= STRATIFIED_TOLERANCE, shares


def test_no_row_is_in_both_splits(train_clean, test_clean):
    """Duplicates are dropped before the split, so an identical row on both sides is a leak."""
    both = train_clean.merge(test_clean, how="inner", on=list(train_clean.columns))
    assert both.empty, f"{len(both)} rows are in train and test, first: {both.head(3).to_dict('records')}"
    assert not train_clean.duplicated().any() and not test_clean.duplicated().any()


@pytest.mark.parametrize("split", ["train", "test"])
def test_train_ready_file_has_the_reports_features_and_a_binary_target(split, ready, report, contract):
    frame = ready[split]
    assert list(frame.columns) == [*report["features_out"], contract.target]
    assert not frame.isna().any().any(), frame.columns[frame.isna().any()].tolist()
    assert set(frame[contract.target]) == {0, 1}
    assert int(frame[contract.target].sum()) == report["class_balance"][split][contract.positive]


@pytest.mark.parametrize("split", ["train", "test"])
def test_each_category_is_one_hot(split, ready, contract):
    """Every row has exactly one indicator per categorical feature (missing is its own category)."""
    frame = ready[split]
    for column in contract.categorical_features:
        group = [c for c in frame.columns if c.startswith(f"{column}_")]
        assert group, column
        assert frame[group].isin((0, 1)).all().all() and (frame[group].sum(axis=1) == 1).all(), column


def test_numeric_features_are_scaled_on_train_only(ready, contract):
    """The scaler is fitted on train: train columns have mean 0 and std 1, test columns do not exactly."""
    train, test = ready["train"][contract.numeric_features], ready["test"][contract.numeric_features]
    assert train.mean().abs().max() < 1e-6 and (train.std(ddof=0) - 1).abs().max() < 1e-3
    assert test.mean().abs().max() > 1e-6


def test_every_quarantined_row_names_its_column_and_reason(quarantine, contract):
    assert list(quarantine.columns) == [*contract.features, contract.target, "reason"]
    columns = (*contract.features, contract.target)
    for reason in quarantine["reason"]:
        parts = [part.strip() for part in reason.split(";")]
        assert all(part.split(":", 1)[0] in columns and ":" in part for part in parts), reason
