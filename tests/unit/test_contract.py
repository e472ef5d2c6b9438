"""The data contract: the real file reads and validates as its report says; each rule of the contract quarantines
the row that breaks it (rows built from the contract: tests/rows.py)."""

from __future__ import annotations

import csv

import pydantic
import pytest

from msml.data.contract import Contract, DataError
from tests.rows import broken, rule_breaks

CONTRACT = Contract.load()


def test_real_file_reads_and_validates_as_the_report_records(contract, raw_path, committed_report):
    """Counted independently with the csv module: every data line is a row, every marker or empty cell a missing
    value; validation quarantines and finds duplicates as the committed report.json says."""
    with raw_path.open(newline="") as f:
        header, *lines = [[v.strip() for v in line] for line in csv.reader(f) if line]
    missing = {"", *contract.missing_markers}
    df = contract.read_csv(raw_path)
    assert df.shape == (len(lines), len(header)) == (committed_report["rows_in"], len(contract.features) + 1)
    assert int(df.isna().sum().sum()) == sum(v in missing for line in lines for v in line)
    assert int(df.isna().any(axis=1).sum()) == sum(any(v in missing for v in line) for line in lines)
    result = contract.validate(df)
    assert len(result.valid) + len(result.quarantine) == len(df)
    assert len(result.quarantine) == committed_report["rows_quarantined"]
    assert int(result.valid.duplicated().sum()) == committed_report["duplicates_removed"]


def test_rows_built_from_the_contract_are_valid(contract, valid_rows):
    result = contract.validate(valid_rows, max_invalid_share=0.0)
    assert result.quarantine.empty and len(result.valid) == len(valid_rows)
    for column in contract.columns:  # every allowed category occurs, and a nullable column is sometimes missing
        assert set(column.values) <= set(valid_rows[column.name].dropna()), column.name
        assert valid_rows[column.name].isna().any() == column.nullable, column.name


@pytest.mark.parametrize("case", rule_breaks(CONTRACT), ids=lambda case: case.rule)
def test_each_rule_of_the_contract_quarantines_the_row_that_breaks_it(contract, valid_rows, case):
    result = contract.validate(broken(valid_rows, 7, case), max_invalid_share=1.0)
    assert result.quarantine.index.tolist() == [7]
    assert result.quarantine.loc[7, "reason"].startswith(case.reason), result.quarantine.loc[7, "reason"]
    assert len(result.valid) == len(valid_rows) - 1  # nothing else dropped


def test_several_faults_in_one_column_are_all_reported(contract, valid_rows):
    column = next(c.name for c in contract.columns if c.is_numeric and c.max is not None)
    wrong_type, above_max = (
        next(b for b in rule_breaks(contract) if b.rule == f"{column}-{r}") for r in ("type", "max")
    )
    df = broken(broken(valid_rows, 1, wrong_type), 2, above_max)  # a coercion failure hides value checks ...
    result = contract.validate(df, max_invalid_share=1.0)  # ... so the second is found on a second pass
    assert result.quarantine.index.tolist() == [1, 2]
    assert result.quarantine.loc[2, "reason"].startswith(above_max.reason)


def test_invalid_share_above_threshold_fails(contract, valid_rows):
    unknown = next(b for b in rule_breaks(contract) if b.rule.endswith("-values"))
    df = broken(valid_rows.head(100), list(range(10)), unknown)  # 10 % invalid
    with pytest.raises(DataError, match=r"10 of 100 rows \(10.0%\) are invalid, above the allowed 5.0%"):
        contract.validate(df)
    assert len(contract.validate(df, max_invalid_share=0.10).quarantine) == 10


def test_row_model_derives_from_the_contract(contract):
    row = {c.name: (c.values[0] if c.values else (c.min or 0) + 1) for c in contract.columns}
    contract.row_model(**row)
    with pytest.raises(pydantic.ValidationError):
        contract.row_model(**{**row, "sex": "Robot"})
    nullable = next(c.name for c in contract.columns if c.nullable)
    assert getattr(contract.row_model(**{**row, nullable: None}), nullable) is None


def test_another_contract_needs_no_code(tmp_path):
    spec = tmp_path / "iris.yaml"
    spec.write_text(
        'name: tiny\ntarget: {name: y, labels: ["no", "yes"], positive: "yes"}\n'
        "columns:\n  x: {type: float, min: 0, max: 10}\n  colour: {type: category, values: [red, blue]}\n"
    )
    tiny = Contract.load(spec)
    assert tiny.features == ["x", "colour"] and tiny.model_name == "tiny-classifier"
    data = tmp_path / "tiny.csv"
    data.write_text("x,colour,y\n1.5,red,yes\n2,blue,no\n11,red,no\n")
    result = tiny.validate(tiny.read_csv(data), max_invalid_share=1.0)
    assert len(result.valid) == 2 and "x: out of range (max 10)" in result.quarantine["reason"].iloc[0]


def test_malformed_contract_is_a_clear_error(tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text("name: x\ncolumns: {}\n")
    with pytest.raises(DataError, match="malformed"):
        Contract.load(spec)
