"""Expectations on the raw file, derived from the contract: header, types, ranges, allowed values, missing
values, target labels. A row that breaks one must be among the rows the last preprocessing run quarantined
(report.json's rows_quarantined), so a raw file that changed under the processed data fails here."""

from __future__ import annotations

import pandas as pd
import pytest

from msml.data.contract import Contract
from msml.data.preprocessing import file_sha256

COLUMNS = Contract.load().columns


def _offenders(mask: pd.Series, values: pd.Series, report: dict) -> None:
    bad = values[mask]
    assert len(bad) <= report["rows_quarantined"], (
        f"{len(bad)} raw rows break the expectation, {report['rows_quarantined']} were quarantined; "
        f"first: {bad.head(5).to_dict()}"
    )


def test_raw_file_is_the_one_the_processed_data_came_from(raw_file, raw_frame, report):
    assert file_sha256(raw_file) == report["raw_sha256"], "the raw file changed: data/raw is immutable"
    assert len(raw_frame) == report["rows_in"]


def test_header_is_the_contracts_columns_in_order(raw_frame, contract):
    assert list(raw_frame.columns) == [*contract.features, contract.target]


@pytest.mark.parametrize("column", [c for c in COLUMNS if c.is_numeric], ids=lambda c: c.name)
def test_numeric_column_has_its_type_and_range(raw_frame, report, column):
    values = raw_frame[column.name].dropna()
    number = pd.to_numeric(values, errors="coerce")
    bad = number.isna()
    if column.type == "int":
        bad |= number % 1 != 0
    if column.min is not None:
        bad |= number < column.min
    if column.max is not None:
        bad |= number > column.max
    _offenders(bad, values, report)


@pytest.mark.parametrize("column", [c for c in COLUMNS if not c.is_numeric], ids=lambda c: c.name)
def test_categorical_column_has_only_allowed_values(raw_frame, report, column):
    values = raw_frame[column.name].dropna()
    _offenders(~values.isin(column.values), values, report)


@pytest.mark.parametrize("column", COLUMNS, ids=lambda c: c.name)
def test_missing_values_only_where_the_contract_allows(raw_frame, report, column):
    values = raw_frame[column.name]
    if column.nullable:
        return
    _offenders(values.isna(), values, report)


def test_target_has_only_the_contracts_labels_and_both_occur(raw_frame, report, contract):
    target = raw_frame[contract.target]
    _offenders(~target.isin(contract.labels), target, report)
    assert set(target.dropna()) >= set(contract.labels)
