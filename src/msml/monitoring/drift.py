"""Feature drift: a reference distribution fixed at training time and a sliding-window PSI.

`build_reference` runs once, at training, on the train split; the result (JSON) is logged with the
model as `monitoring/drift_reference.json`. The gateway loads it and feeds every scored row into a
`SlidingPSI`: a fixed-size window of recent rows whose per-bin counts are kept incrementally, so a
scrape computes PSI from counts (features × bins) and never rescans the window.

PSI on few rows is biased upwards (roughly (bins − 1) / rows on identical distributions, far more
where rare categories leave bins empty), so two things keep it honest at every sample size:
categories rarer than `RARE_SHARE` in the reference are pooled into one bin, and no value exists
until the window holds `MIN_ROWS` rows (`values()` returns nothing, so nothing is exported and the
alert cannot fire). `MIN_ROWS` is measured, see the comment beside it.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from msml.data.contract import Contract

REFERENCE_ARTIFACT = "monitoring/drift_reference.json"
REFERENCE_VERSION = 2  # 2: rare categories pooled into OTHER (version 1 references still load)
DEFAULT_BINS = 10
DEFAULT_WINDOW = 1000
MISSING = "__missing__"
OTHER = "__other__"
EPSILON = 1e-4  # floor for empty bins, so PSI stays finite
RARE_SHARE = 0.01  # categories below 1% of the train split share one bin (native-country has 41, most < 0.5%)
THRESHOLD = 0.2  # the usual "significant shift" line for the population stability index
# Rows the window must hold before PSI is reported. Measured on the adult test split (clean rows, no drift;
# pooled reference), 100 random windows per size: the largest PSI of any feature was 1.25 at 50 rows, 0.71 at
# 100, 0.41 at 150, 0.28 at 200, 0.18 at 250, 0.15 at 300, 0.10 at 400, 0.07 at 500, 0.03 at 1000. 400 rows
# keep clean traffic at half the threshold; loadgen's drifted rows (RowMaker.drifted) give every feature PSI
# > 0.4 already at 300 rows. tests/unit/test_drift.py re-checks both over seeds.
MIN_ROWS = 400


def build_reference(
    train_clean: pd.DataFrame, contract: Contract, bins: int = DEFAULT_BINS, rare_share: float = RARE_SHARE
) -> dict[str, Any]:
    """The training reference distribution of every feature, JSON-serialisable.

    Numeric features: inner bin edges at the train split's quantiles (duplicates dropped, so a feature
    that is mostly 0 gets few bins), the share of rows per bin `(-inf, e0], (e0, e1], ..., (ek, inf)`
    and the share missing. Categorical features: the share of each contract category at or above
    `rare_share`, of the rarer ones pooled (`OTHER`, with the list under "pooled") and of missing.

    Args:
        train_clean: the train split in the contract's raw form (train_clean.csv, read as for training).
        contract: the dataset contract.
        bins: number of quantile bins for numeric features.
        rare_share: categories rarer than this share of the train split are pooled into one bin.
    Returns:
        {"version", "rows", "bins", "rare_share", "features": {name: {"kind": "numeric", "edges",
         "proportions", "missing"} | {"kind": "categorical", "proportions": {cat: share}, "pooled": [cat]}}}
    """
    n = len(train_clean)
    if n == 0:
        raise ValueError("cannot build a drift reference from an empty train split")
    features: dict[str, Any] = {}
    for col in contract.columns:
        values = train_clean[col.name]
        missing = values.isna()
        if col.is_numeric:
            present = pd.to_numeric(values[~missing], errors="raise").to_numpy(dtype=float)
            quantiles = np.quantile(present, np.linspace(0, 1, bins + 1)[1:-1]) if len(present) else []
            edges = sorted({float(q) for q in quantiles})
            idx = np.searchsorted(np.asarray(edges), present, side="left")
            counts = np.bincount(idx, minlength=len(edges) + 1)
            features[col.name] = {
                "kind": "numeric",
                "edges": edges,
                "proportions": [float(c) / n for c in counts],
                "missing": float(missing.sum()) / n,
            }
        else:
            counts = values[~missing].astype(str).value_counts()
            shares = {cat: float(counts.get(cat, 0)) / n for cat in col.values}
            pooled = sorted(cat for cat, share in shares.items() if share < rare_share)
            proportions = {cat: share for cat, share in shares.items() if cat not in pooled}
            proportions[OTHER] = sum(shares[cat] for cat in pooled)
            proportions[MISSING] = float(missing.sum()) / n
            features[col.name] = {"kind": "categorical", "proportions": proportions, "pooled": pooled}
    return {"version": REFERENCE_VERSION, "rows": n, "bins": bins, "rare_share": rare_share, "features": features}


def psi(expected: Iterable[float], actual: Iterable[float], epsilon: float = EPSILON) -> float:
    """Population stability index between two distributions given as shares over the same bins."""
    total = 0.0
    for e, a in zip(expected, actual, strict=True):
        e = max(e, epsilon)
        a = max(a, epsilon)
        total += (a - e) * math.log(a / e)
    return total


class _FeatureBins:
    """Maps one feature's value to its bin index; holds the reference shares per bin."""

    __slots__ = ("edges", "expected", "index", "missing_bin", "name", "numeric")

    def __init__(self, name: str, spec: Mapping[str, Any]) -> None:
        self.name = name
        self.numeric = spec["kind"] == "numeric"
        if self.numeric:
            self.edges = [float(e) for e in spec["edges"]]
            self.expected = [*map(float, spec["proportions"]), float(spec.get("missing", 0.0))]
            self.missing_bin = len(self.expected) - 1
            self.index = {}
        else:
            cats = list(spec["proportions"])
            if MISSING not in cats:
                cats.append(MISSING)
            self.index = {c: i for i, c in enumerate(cats)}
            for pooled in spec.get("pooled", ()):
                self.index[pooled] = self.index[OTHER]
            self.expected = [float(spec["proportions"].get(c, 0.0)) for c in cats]
            self.missing_bin = self.index[MISSING]
            self.edges = []

    def bin(self, value: Any) -> int:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return self.missing_bin
        if self.numeric:
            return bisect_left(self.edges, value)
        # a category outside the reference (request validation refuses those) counts as missing
        return self.index.get(value, self.missing_bin)


class SlidingPSI:
    """PSI per feature of the last `window` rows against a reference, updated incrementally.

    `add(rows)` costs one bin lookup per feature per row; `values()` costs features × bins. Not thread-safe:
    call both from one thread or under one lock. Until the window holds `min_rows` rows `values()` is empty: PSI
    on fewer rows measures sampling noise, so a window smaller than that is refused.
    """

    def __init__(
        self,
        reference: Mapping[str, Any],
        window: int = DEFAULT_WINDOW,
        epsilon: float = EPSILON,
        min_rows: int = MIN_ROWS,
    ):
        if window < 1:
            raise ValueError("window must be at least 1 row")
        if not 1 <= min_rows <= window:
            raise ValueError(
                f"the drift window ({window} rows) must hold at least min_rows ({min_rows}) rows: "
                "PSI on fewer rows is sampling noise"
            )
        self.window = window
        self.min_rows = min_rows
        self.epsilon = epsilon
        self.features = [_FeatureBins(name, spec) for name, spec in reference["features"].items()]
        self.counts = [[0] * len(f.expected) for f in self.features]
        self.rows: deque[tuple[int, ...]] = deque()

    def __len__(self) -> int:
        return len(self.rows)

    def add(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Add rows (feature name → value, None for missing); the oldest leave the window."""
        features, counts, window = self.features, self.counts, self.window
        for row in rows:
            bins = tuple(f.bin(row.get(f.name)) for f in features)
            for c, b in zip(counts, bins, strict=True):
                c[b] += 1
            self.rows.append(bins)
            if len(self.rows) > window:
                for c, b in zip(counts, self.rows.popleft(), strict=True):
                    c[b] -= 1

    def values(self) -> dict[str, float]:
        """PSI per feature over the current window (empty dict until it holds `min_rows` rows)."""
        n = len(self.rows)
        if n < self.min_rows:
            return {}
        return {
            f.name: psi(f.expected, (c / n for c in counts), self.epsilon)
            for f, counts in zip(self.features, self.counts, strict=True)
        }
