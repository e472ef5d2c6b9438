"""Training and serving read values by the same rules (no train/serve skew), and the serving row model is strict.

Whitespace: the raw loader and the gateway both strip both ends of a text value, then treat a missing
marker as missing. Booleans are not numbers (pydantic's lax mode would read JSON true as 1).
"""

from __future__ import annotations

import pydantic
import pytest

from msml.data.contract import Contract


def _raw_row(contract: Contract, **changes: str) -> dict[str, str]:
    row = {c.name: str(c.values[0] if not c.is_numeric else c.min) for c in contract.columns}
    row[contract.target] = contract.labels[0]
    return {**row, **changes}


def test_whitespace_and_markers_read_the_same_at_training_and_at_serving(contract, tmp_path):
    nullable = next(c.name for c in contract.columns if c.nullable)
    category = next(c for c in contract.columns if not c.is_numeric and not c.nullable)
    padded = {category.name: f"  {category.values[-1]}  ", nullable: f" {contract.missing_markers[0]}  "}
    row = _raw_row(contract, **padded)
    path = tmp_path / "raw.csv"
    path.write_text(",".join(row) + "\n" + ",".join(row.values()) + "\n")

    trained = contract.read_csv(path).iloc[0]
    served = contract.row_model.model_validate(
        contract.normalise_row({k: v for k, v in row.items() if k != contract.target})
    ).model_dump()
    assert trained[category.name] == served[category.name] == category.values[-1]
    assert trained.isna()[nullable] and served[nullable] is None
    assert len(contract.validate(contract.read_csv(path)).valid) == 1  # not quarantined for its padding


@pytest.mark.parametrize("value", [True, False])
def test_booleans_are_rejected_for_numeric_fields(contract, value):
    row = {c.name: (c.values[0] if not c.is_numeric else c.min) for c in contract.columns}
    for column in (c for c in contract.columns if c.is_numeric):
        with pytest.raises(pydantic.ValidationError, match="a boolean is not a number"):
            contract.row_model.model_validate({**row, column.name: value})
    contract.row_model.model_validate(row)  # the same row with numbers is fine
