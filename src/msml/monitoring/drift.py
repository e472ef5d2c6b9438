"""Feature drift: a reference distribution fixed at training time and a sliding-window PSI.

`build_reference` runs once, at training, on the train split; the result (JSON) is logged with the
model as `monitoring/drift_reference.json`. The gateway loads it and feeds every scored row into a
`SlidingPSI`: a fixed-size window of recent rows whose per-bin counts are kept incrementally, so a
scrape computes PSI from counts (features × bins) and never rescans the window.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import deque
from typing import Any, Iterable, Mapping

import math

import numpy as np
import pandas as pd

from msml.contract import Contract

REFERENCE_ARTIFACT = "monitoring/drift_reference.json"
REFERENCE_VERSION = 1
DEFAULT_BINS = 10
DEFAULT_WINDOW = 1000
MISSING = "__missing__"
EPSILON = 1e-4  # floor for empty bins, so PSI stays finite


def build_reference(train_clean: pd.DataFrame, contract: Contract, bins: int = DEFAULT_BINS) -> dict[str, Any]:
    """The training reference distribution of every feature, JSON-serialisable.

    Numeric features: inner bin edges at the train split's quantiles (duplicates dropped, so a feature
    that is mostly 0 gets few bins), the share of rows per bin `(-inf, e0], (e0, e1], ..., (ek, inf)`
    and the share missing. Categorical features: the share of each contract category and of missing.

    Args:
        train_clean: the train split in the contract's raw form (`load_clean_splits(...)[0]`).
        contract: the dataset contract.
        bins: number of quantile bins for numeric features.
    Returns:
        {"version", "rows", "features": {name: {"kind": "numeric", "edges", "proportions", "missing"} |
                                                 {"kind": "categorical", "proportions": {cat: share}}}}
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
            proportions = {cat: float(counts.get(cat, 0)) / n for cat in col.values}
            proportions[MISSING] = float(missing.sum()) / n
            features[col.name] = {"kind": "categorical", "proportions": proportions}
    return {"version": REFERENCE_VERSION, "rows": n, "bins": bins, "features": features}


def psi(expected: Iterable[float], actual: Iterable[float], epsilon: float = EPSILON) -> float:
    """Population stability index between two distributions given as shares over the same bins."""
    total = 0.0
    for e, a in zip(expected, actual):
        e = max(e, epsilon)
        a = max(a, epsilon)
        total += (a - e) * math.log(a / e)
    return total


class _FeatureBins:
    """Maps one feature's value to its bin index; holds the reference shares per bin."""

    __slots__ = ("name", "numeric", "edges", "index", "expected", "missing_bin")

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
            self.expected = [float(spec["proportions"].get(c, 0.0)) for c in cats]
            self.missing_bin = self.index[MISSING]
            self.edges = []

    def bin(self, value: Any) -> int:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return self.missing_bin
        if self.numeric:
            return bisect_left(self.edges, value)
        # a category outside the reference (the gateway rejects those) counts as missing
        return self.index.get(value, self.missing_bin)


class SlidingPSI:
    """PSI per feature of the last `window` rows against a reference, updated incrementally.

    `add(rows)` costs one bin lookup per feature per row; `values()` costs features × bins. Not
    thread-safe: the gateway calls both from its event loop.
    """

    def __init__(self, reference: Mapping[str, Any], window: int = DEFAULT_WINDOW, epsilon: float = EPSILON):
        if window < 1:
            raise ValueError("window must be at least 1 row")
        self.window = window
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
            for c, b in zip(counts, bins):
                c[b] += 1
            self.rows.append(bins)
            if len(self.rows) > window:
                for c, b in zip(counts, self.rows.popleft()):
                    c[b] -= 1

    def values(self) -> dict[str, float]:
        """PSI per feature over the current window (empty dict before any row)."""
        n = len(self.rows)
        if n == 0:
            return {}
        return {
            f.name: psi(f.expected, (c / n for c in counts), self.epsilon)
            for f, counts in zip(self.features, self.counts)
        }
