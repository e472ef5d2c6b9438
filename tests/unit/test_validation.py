"""Request rows against the contract without a server or a model (msml.serving.validation): valid rows come back
typed, each rule of the contract refuses the row that breaks it with a 422 naming row, field and reason, and the
answer stays bounded whatever the request."""

from __future__ import annotations

import pytest

from msml.data.contract import Contract
from msml.serving.errors import MAX_DETAILS, MAX_ECHO, ROW, ClientError
from msml.serving.formats import BadRow
from msml.serving.validation import RowValidator
from tests.rows import rule_breaks, valid_rows

CONTRACT = Contract.load()
# the gateway's reason for each kind of contract rule (tests/rows.py names a RuleBreak "<column>-<rule>")
REASON = {"type": "wrong_type", "min": "out_of_range", "max": "out_of_range", "values": "unknown_category"}


@pytest.fixture(scope="module")
def validator() -> RowValidator:
    return RowValidator(CONTRACT)


@pytest.fixture
def rows(contract) -> list[dict]:
    """Five valid request rows, values as text the way a CSV-fed client sends them; missing as null."""
    frame = valid_rows(contract, n=5)[contract.features]
    return [{k: (None if v != v else v) for k, v in row.items()} for row in frame.to_dict("records")]


def refusal(validator: RowValidator, rows: list) -> ClientError:
    with pytest.raises(ClientError) as info:
        validator.validate(rows)
    assert info.value.status == 422
    return info.value


def test_valid_rows_come_back_typed_in_the_contracts_order(validator, rows, contract):
    typed = validator.validate(rows)
    assert [list(r) for r in typed] == [contract.features] * len(rows)
    for column in contract.columns:
        values = [r[column.name] for r in typed]
        if column.is_numeric:  # text numbers are read as numbers of the column's type
            kind = int if column.type == "int" else float
            assert all(isinstance(v, kind) for v in values if v is not None), column.name
            assert values == [None if r[column.name] is None else kind(r[column.name]) for r in rows]
        else:
            assert values == [r[column.name] for r in rows], column.name


def test_markers_and_padding_read_as_at_training(validator, rows, contract):
    nullable = next(c.name for c in contract.columns if c.nullable)
    category = next(c for c in contract.columns if not c.is_numeric and not c.nullable)
    row = {**rows[0], nullable: f" {contract.missing_markers[0]} ", category.name: f"  {category.values[0]} "}
    typed = validator.validate([row])[0]
    assert typed[nullable] is None and typed[category.name] == category.values[0]


@pytest.mark.parametrize(
    "case", [b for b in rule_breaks(CONTRACT) if b.column != CONTRACT.target], ids=lambda b: b.rule
)
def test_each_rule_of_the_contract_refuses_the_row_that_breaks_it(validator, rows, case):
    rows[3] = {**rows[3], case.column: case.value}
    error = refusal(validator, rows)
    kind = case.rule.rsplit("-", 1)[1]
    detail = error.details[0]
    assert (error.total, detail["row"], detail["field"]) == (1, 3, case.column)
    assert detail["reason"] == REASON.get(kind, "missing"), detail
    assert f"row 3, field {case.column!r}: {detail['reason']}" in error.message


def test_an_absent_required_feature_is_missing(validator, rows, contract):
    required = next(c.name for c in contract.columns if not c.nullable)
    del rows[0][required]
    detail = refusal(validator, rows).details[0]
    assert (detail["row"], detail["field"], detail["reason"]) == (0, required, "missing")


def test_a_field_outside_the_contract_is_named(validator, rows):
    rows[1] = {**rows[1], "salary": 1}
    detail = refusal(validator, rows).details[0]
    assert (detail["row"], detail["field"], detail["reason"]) == (1, ROW, "unexpected_field")
    assert "'salary'" in detail["message"]


def test_a_row_that_is_not_an_object_or_a_split_row_of_the_wrong_width(validator, rows, contract):
    width = len(contract.features)
    error = refusal(validator, [rows[0], "text", BadRow([1, 2], width)])
    assert [(d["row"], d["field"], d["reason"]) for d in error.details] == [
        (1, ROW, "wrong_type"),
        (2, ROW, "wrong_type"),
    ]
    assert error.details[1]["message"] == f"expected a list of {width} values, got list of 2"


def test_the_answer_is_bounded_whatever_the_request(validator, contract):
    """1,000 empty rows: every required feature of every row counted, only the first MAX_DETAILS listed."""
    required = sum(not c.nullable for c in contract.columns)
    error = refusal(validator, [{}] * 1000)
    assert error.total == 1000 * required and len(error.details) == MAX_DETAILS
    assert error.message.startswith(f"{1000 * required} validation error(s)")
    category = next(c.name for c in contract.columns if not c.is_numeric)
    long = refusal(validator, [{category: "x" * 10_000}]).details
    echoed = next(d for d in long if d["field"] == category)["input"]
    assert len(echoed) == MAX_ECHO + 1 and echoed.endswith("…")
