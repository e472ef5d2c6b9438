"""The data contract: the real file passes with exact counts; each kind of bad row is quarantined."""

from __future__ import annotations

import pandas as pd
import pydantic
import pytest

from msml.data.contract import Contract, DataError


def test_real_file_passes_with_expected_counts(contract, raw_path):
    df = contract.read_csv(raw_path)
    assert df.shape == (48842, 15)
    # the "?" markers became missing values: 6,465 cells over 3,620 rows, in three columns
    assert int(df.isna().sum().sum()) == 6465
    assert int(df.isna().any(axis=1).sum()) == 3620
    assert df.columns[df.isna().any()].tolist() == ["workclass", "occupation", "native-country"]
    result = contract.validate(df)
    assert len(result.valid) == 48842 and result.quarantine.empty
    assert int(result.valid.duplicated().sum()) == 52


def _bad(df: pd.DataFrame, row: int, column: str, value) -> pd.DataFrame:
    df.loc[row, column] = value
    return df


@pytest.mark.parametrize(
    ("column", "value", "reason"),
    [
        ("age", "forty", "age: wrong type"),
        ("age", "150", "age: out of range (max 100)"),
        ("hours-per-week", "0", "hours-per-week: out of range (min 1)"),
        ("sex", "Unknown", "sex: unknown category"),
        ("education", None, "education: missing value"),
        ("age", None, "age: missing value"),
        ("class", "maybe", "class: unknown label"),
    ],
)
def test_each_kind_of_bad_row_is_quarantined_with_its_reason(contract, raw_path, column, value, reason):
    df = contract.read_csv(raw_path).head(200).copy()
    df = _bad(df, 7, column, value)
    result = contract.validate(df, max_invalid_share=1.0)
    assert result.quarantine.index.tolist() == [7]
    assert result.quarantine.loc[7, "reason"].startswith(reason)
    assert len(result.valid) == 199  # nothing else dropped


def test_several_faults_in_one_column_are_all_reported(contract, raw_path):
    df = contract.read_csv(raw_path).head(50).copy()
    df.loc[1, "age"] = "abc"  # a coercion failure hides value checks ...
    df.loc[2, "age"] = "500"  # ... so this one is found on the second pass
    result = contract.validate(df, max_invalid_share=1.0)
    assert result.quarantine.index.tolist() == [1, 2]


def test_invalid_share_above_threshold_fails(contract, raw_path):
    df = contract.read_csv(raw_path).head(100).copy()
    df.loc[:9, "sex"] = "X"  # 10 % invalid
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
