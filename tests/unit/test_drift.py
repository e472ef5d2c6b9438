"""Drift reference and sliding-window PSI: exact counts, eviction, and the values PSI should give."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from msml.contract import Contract
from msml.monitoring.drift import MISSING, SlidingPSI, build_reference, psi


@pytest.fixture(scope="module")
def contract():
    return Contract.load()


def _frame(contract, n=400):
    rows = []
    for i in range(n):
        row = {}
        for col in contract.columns:
            if col.is_numeric:
                lo, hi = col.min or 0, col.max or 100
                row[col.name] = lo + (i * 7919) % int(hi - lo + 1)
            else:
                row[col.name] = None if (col.nullable and i % 10 == 0) else col.values[i % len(col.values)]
        rows.append(row)
    return pd.DataFrame(rows)


def test_reference_is_json_and_proportions_sum_to_one(contract):
    ref = build_reference(_frame(contract), contract)
    assert json.loads(json.dumps(ref)) == ref
    for name, spec in ref["features"].items():
        if spec["kind"] == "numeric":
            assert sum(spec["proportions"]) + spec["missing"] == pytest.approx(1)
            assert spec["edges"] == sorted(spec["edges"])
        else:
            assert sum(spec["proportions"].values()) == pytest.approx(1)
            assert set(spec["proportions"]) == {*contract.column(name).values, MISSING}
    nullable = next(c.name for c in contract.columns if c.nullable)
    assert ref["features"][nullable]["proportions"][MISSING] == pytest.approx(0.1)


def test_same_rows_give_psi_near_zero_and_shifted_rows_a_large_one(contract):
    df = _frame(contract)
    ref = build_reference(df, contract)
    window = SlidingPSI(ref, window=len(df))
    window.add(df.astype(object).where(df.notna(), None).to_dict(orient="records"))
    assert max(window.values().values()) < 1e-9
    shifted = df.copy()
    shifted["age"] = contract.column("age").max
    window.add(shifted.astype(object).where(shifted.notna(), None).to_dict(orient="records"))
    values = window.values()
    assert values["age"] > 1.0  # all mass in the top bin
    assert max(v for k, v in values.items() if k != "age") < 1e-9


def test_window_evicts_oldest_rows_and_counts_stay_exact(contract):
    df = _frame(contract, 50)
    ref = build_reference(df, contract)
    rows = df.astype(object).where(df.notna(), None).to_dict(orient="records")
    window = SlidingPSI(ref, window=10)
    window.add(rows)
    assert len(window) == 10
    fresh = SlidingPSI(ref, window=10)
    fresh.add(rows[-10:])
    assert window.counts == fresh.counts
    assert all(sum(c) == 10 for c in window.counts)


def test_psi_formula():
    assert psi([0.5, 0.5], [0.5, 0.5]) == 0
    expected = (0.9 - 0.5) * math.log(0.9 / 0.5) + (0.1 - 0.5) * math.log(0.1 / 0.5)
    assert psi([0.5, 0.5], [0.9, 0.1]) == pytest.approx(expected)
    assert math.isfinite(psi([0.0, 1.0], [1.0, 0.0]))  # empty bins are floored, not infinite
