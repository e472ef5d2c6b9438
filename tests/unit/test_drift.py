"""Drift reference and sliding-window PSI: exact counts, eviction, the values PSI should give, and that the
alert threshold holds at every window size: real clean rows never cross it, loadgen's drifted rows do."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from msml.data.contract import Contract
from msml.data.preprocessing import load_clean_splits
from msml.monitoring.drift import (
    DEFAULT_WINDOW,
    MIN_ROWS,
    MISSING,
    OTHER,
    THRESHOLD,
    SlidingPSI,
    build_reference,
    psi,
)
from msml.ops.loadgen import RowMaker
from tests.conftest import ROOT

COMMITTED = ROOT / "data" / "adult_preprocessing"  # the committed processed split (what training reads)


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
            assert set(spec["proportions"]) | set(spec["pooled"]) == {*contract.column(name).values, MISSING, OTHER}
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
    window = SlidingPSI(ref, window=10, min_rows=1)
    window.add(rows)
    assert len(window) == 10
    fresh = SlidingPSI(ref, window=10, min_rows=1)
    fresh.add(rows[-10:])
    assert window.counts == fresh.counts
    assert all(sum(c) == 10 for c in window.counts)


def test_psi_formula():
    assert psi([0.5, 0.5], [0.5, 0.5]) == 0
    expected = (0.9 - 0.5) * math.log(0.9 / 0.5) + (0.1 - 0.5) * math.log(0.1 / 0.5)
    assert psi([0.5, 0.5], [0.9, 0.1]) == pytest.approx(expected)
    assert math.isfinite(psi([0.0, 1.0], [1.0, 0.0]))  # empty bins are floored, not infinite


# ---- every sample size -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real(contract):
    """The train split's reference and the test split's rows as the gateway sees them (None for missing)."""
    train, test = load_clean_splits(COMMITTED, contract)
    features = test[contract.features]
    rows = features.astype(object).where(features.notna(), None).to_dict(orient="records")
    return build_reference(train, contract), rows


def test_rare_categories_are_pooled_and_still_counted(real, contract):
    reference, _ = real
    country = reference["features"]["native-country"]
    assert len(country["pooled"]) > 30 and all(
        v >= 0.01 for k, v in country["proportions"].items() if k not in (OTHER, MISSING)
    )
    window = SlidingPSI(reference, window=2, min_rows=1)
    window.add([{"native-country": country["pooled"][0]}, {"native-country": country["pooled"][1]}])
    feature = next(i for i, f in enumerate(window.features) if f.name == "native-country")
    assert window.counts[feature][window.features[feature].index[OTHER]] == 2


def test_nothing_is_reported_below_the_minimum_and_small_windows_are_refused(real):
    reference, rows = real
    window = SlidingPSI(reference)
    window.add(rows[: MIN_ROWS - 1])
    assert window.values() == {}
    window.add(rows[MIN_ROWS - 1 : MIN_ROWS])
    assert set(window.values()) == set(reference["features"])
    with pytest.raises(ValueError, match="min_rows"):
        SlidingPSI(reference, window=MIN_ROWS - 1)


@pytest.mark.parametrize("seed", range(12))
def test_clean_rows_never_cross_the_threshold_at_any_window_size(real, seed):
    """Property over seeds: a random order of real test-split rows, checked after every row from 1 to the full
    window: either no value is reported yet, or every feature's PSI is below the alert threshold."""
    reference, rows = real
    order = np.random.default_rng(seed).permutation(len(rows))[:DEFAULT_WINDOW]
    window = SlidingPSI(reference)
    worst = 0.0
    for i in order:
        window.add([rows[i]])
        values = window.values()
        assert (values == {}) == (len(window) < MIN_ROWS)
        worst = max(worst, *values.values()) if values else worst
    assert len(window) == DEFAULT_WINDOW and worst < THRESHOLD, worst


@pytest.mark.parametrize("seed", range(3))
def test_drifted_rows_cross_the_threshold_within_one_window(real, contract, seed):
    """loadgen's drifted rows (numerics shifted 1.5 sd, categories moved): every feature crosses as soon as PSI
    is reported; a window still 30% drifted keeps the strongly shifted features above it."""
    reference, rows = real
    order = np.random.default_rng(seed).permutation(len(rows))[:DEFAULT_WINDOW]
    maker = RowMaker(contract, rows, seed=seed)
    window = SlidingPSI(reference)
    window.add(maker.drifted(rows[i]) for i in order[:MIN_ROWS])
    assert min(window.values().values()) > THRESHOLD, window.values()
    mixed = SlidingPSI(reference)
    mixed.add(maker.drifted(rows[i]) if k % 10 < 3 else rows[i] for k, i in enumerate(order))
    crossing = {f for f, v in mixed.values().items() if v > THRESHOLD}
    assert {"education", "occupation", "hours-per-week", "capital-gain"} <= crossing, mixed.values()
