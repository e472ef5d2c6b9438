"""The data expectations are not rubber stamps: each fails on a copy of the real data broken the way it guards
against (the same functions, called with the broken frames instead of the fixtures)."""

from __future__ import annotations

import pandas as pd
import pytest

from msml.data.contract import Contract
from msml.data.preprocessing import TRAIN_FILE
from tests.data import test_processed_data as processed
from tests.data import test_raw_data as raw

COLUMN = {c.name: c for c in Contract.load().columns}


@pytest.mark.parametrize(
    "test, column, value",
    [
        (raw.test_numeric_column_has_its_type_and_range, "age", "150"),
        (raw.test_numeric_column_has_its_type_and_range, "fnlwgt", "abc"),
        (raw.test_categorical_column_has_only_allowed_values, "sex", "Unknown"),
        (raw.test_missing_values_only_where_the_contract_allows, "education", None),
    ],
    ids=["age-range", "fnlwgt-type", "sex-value", "education-missing"],
)
def test_raw_expectation_fails_on_a_bad_value(raw_frame, report, test, column, value):
    broken = raw_frame.copy()
    broken.loc[5, column] = value
    with pytest.raises(AssertionError):
        test(broken, {**report, "rows_quarantined": 0}, COLUMN[column])


def test_target_expectation_fails_on_an_unknown_label(raw_frame, report, contract):
    broken = raw_frame.copy()
    broken.loc[5, contract.target] = "<=50K."
    with pytest.raises(AssertionError):
        raw.test_target_has_only_the_contracts_labels_and_both_occur(
            broken, {**report, "rows_quarantined": 0}, contract
        )


def test_leak_between_splits_is_caught(train_clean, test_clean):
    with pytest.raises(AssertionError, match="in train and test"):
        processed.test_no_row_is_in_both_splits(train_clean, pd.concat([test_clean, train_clean.head(1)]))


def test_class_balance_other_than_the_reports_is_caught(report, train_clean, test_clean, contract):
    balance = {**report["class_balance"], "train": {**report["class_balance"]["train"]}}
    balance["train"][contract.positive] += 100
    with pytest.raises(AssertionError):
        processed.test_class_balance_is_the_reports_and_the_split_is_stratified(
            {**report, "class_balance": balance}, train_clean, test_clean, contract
        )


def test_a_row_with_two_categories_is_caught(contract, processed_dir):
    frame = pd.read_csv(processed_dir / TRAIN_FILE, nrows=50)
    frame.loc[0, ["workclass_Private", "workclass_State-gov"]] = 1
    with pytest.raises(AssertionError, match="workclass"):
        processed.test_each_category_is_one_hot("train", {"train": frame}, contract)
