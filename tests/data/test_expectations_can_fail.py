"""The data expectations are not rubber stamps: each fails on a copy of the real data broken the way it guards
against (the same functions, called with the broken frames instead of the fixtures)."""

from __future__ import annotations

import pandas as pd
import pytest

from msml.data.contract import Contract
from msml.data.preprocessing import TRAIN_FILE
from tests.data import test_processed_data as processed
from tests.data import test_raw_data as raw
from tests.rows import rule_breaks

CONTRACT = Contract.load()
COLUMN = {c.name: c for c in CONTRACT.columns}
# the expectation that guards each kind of contract rule (tests/rows.py names a RuleBreak "<column>-<rule>")
GUARD = {
    "type": raw.test_numeric_column_has_its_type_and_range,
    "min": raw.test_numeric_column_has_its_type_and_range,
    "max": raw.test_numeric_column_has_its_type_and_range,
    "values": raw.test_categorical_column_has_only_allowed_values,
    "missing": raw.test_missing_values_only_where_the_contract_allows,
}
# the first break of each kind of rule, built from the contract
FIRST_OF_EACH = list(
    {b.rule.rsplit("-", 1)[1]: b for b in reversed(rule_breaks(CONTRACT)) if b.column in COLUMN}.values()
)


@pytest.mark.parametrize("case", FIRST_OF_EACH, ids=lambda b: b.rule)
def test_raw_expectation_fails_on_a_bad_value(raw_frame, report, case):
    broken = raw_frame.copy()
    broken.loc[5, case.column] = case.value
    with pytest.raises(AssertionError):
        GUARD[case.rule.rsplit("-", 1)[1]](broken, {**report, "rows_quarantined": 0}, COLUMN[case.column])


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
