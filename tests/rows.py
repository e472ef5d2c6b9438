"""Test rows built from the dataset contract: valid rows, and every way one value can break one of its rules.

Tests that need "some valid rows" or "a row that breaks one rule" take them from here instead of assuming the raw
file's first N rows are valid: a changed range or category in the contract changes these rows with it (the issue's
drill: `hours-per-week` max 99 -> 80 leaves every test passing unedited).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from msml.data.contract import Column, Contract

# A numeric column without a bound in the contract draws from this span past its other bound (or from 0).
OPEN_SPAN = 1000
NULLABLE_EVERY = 7  # a nullable column is missing in one row of 7 (offset per column, so rows differ)
NOT_A_NUMBER = "not-a-number"
NOT_A_CATEGORY = "Not-A-Category"
NOT_A_LABEL = "not-a-label"


def _bounds(column: Column) -> tuple[float, float]:
    low = column.min if column.min is not None else (column.max - OPEN_SPAN if column.max is not None else 0)
    high = column.max if column.max is not None else low + OPEN_SPAN
    return low, high


def _number(column: Column, value: float) -> str:
    return str(int(value)) if column.type == "int" else repr(float(value))


def valid_rows(contract: Contract, n: int = 200, seed: int = 0) -> pd.DataFrame:
    """`n` rows that satisfy every rule of `contract`, as `Contract.read_csv` returns raw rows (text values,
    missing as NaN), index 0..n-1. Numbers are drawn (seeded) within each column's range, both bounds included
    in the first rows; categories and labels cycle so every one occurs once `n` is large enough; each nullable
    column is missing in one row of seven after its categories' first cycle."""
    rng = np.random.default_rng(seed)
    data: dict[str, list] = {}
    for k, column in enumerate(contract.columns):
        if column.is_numeric:
            low, high = _bounds(column)
            if column.type == "int":
                drawn = rng.integers(int(np.ceil(low)), int(np.floor(high)) + 1, size=n).astype(float)
            else:
                drawn = rng.uniform(low, high, size=n)
            drawn[:2] = (low, high)[: min(n, 2)]
            values = [_number(column, v) for v in drawn]
        else:
            values = [column.values[(i + k) % len(column.values)] for i in range(n)]
        if column.nullable:
            # missing only after the first cycle of categories, so every category still occurs
            first = len(column.values)
            values = [np.nan if i >= first and (i + k) % NULLABLE_EVERY == 0 else v for i, v in enumerate(values)]
        data[column.name] = values
    data[contract.target] = [contract.labels[i % 2] for i in range(n)]
    return pd.DataFrame(data, dtype=object)


@dataclass(frozen=True)
class RuleBreak:
    """One value that breaks exactly one rule of the contract, and how its quarantine reason starts."""

    rule: str  # a test id: "<column>-<rule>"
    column: str
    value: str | None  # raw text; None: the value is missing
    reason: str


def rule_breaks(contract: Contract) -> list[RuleBreak]:
    """One RuleBreak per rule the contract declares: each numeric column's type and bounds, each category's
    allowed values, each non-nullable column's presence, and the target's labels."""
    breaks = []
    for column in contract.columns:
        name = column.name
        if column.is_numeric:
            breaks.append(RuleBreak(f"{name}-type", name, NOT_A_NUMBER, f"{name}: wrong type"))
            if column.min is not None:
                below = _number(column, column.min - 1)
                breaks.append(RuleBreak(f"{name}-min", name, below, f"{name}: out of range (min {column.min})"))
            if column.max is not None:
                above = _number(column, column.max + 1)
                breaks.append(RuleBreak(f"{name}-max", name, above, f"{name}: out of range (max {column.max})"))
        else:
            assert NOT_A_CATEGORY not in column.values
            breaks.append(RuleBreak(f"{name}-values", name, NOT_A_CATEGORY, f"{name}: unknown category"))
        if not column.nullable:
            breaks.append(RuleBreak(f"{name}-missing", name, None, f"{name}: missing value"))
    assert NOT_A_LABEL not in contract.labels
    breaks.append(
        RuleBreak(f"{contract.target}-labels", contract.target, NOT_A_LABEL, f"{contract.target}: unknown label")
    )
    return breaks


def broken(rows: pd.DataFrame, index, case: RuleBreak) -> pd.DataFrame:
    """A copy of `rows` with `case`'s value at `index` (one label or a list of them)."""
    out = rows.copy()
    out.loc[index, case.column] = np.nan if case.value is None else case.value
    return out


def write_raw_csv(rows: pd.DataFrame, path: Path, contract: Contract) -> Path:
    """Write `rows` as the raw file is written: a quoted header, then values after ", ", missing as the first
    marker."""
    marker = contract.missing_markers[0] if contract.missing_markers else ""
    text = rows.astype(object).where(rows.notna(), marker).astype(str)
    for row in text.itertuples(index=False):
        assert not any(c in value for value in row for c in ',"\n'), row  # the raw format has no quoting
    lines = [",".join(f'"{c}"' for c in rows.columns), *(", ".join(row) for row in text.itertuples(index=False))]
    Path(path).write_text("\n".join(lines) + "\n")
    return Path(path)
