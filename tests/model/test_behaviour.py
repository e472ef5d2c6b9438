"""Behavioural tests of the trained champion (Ribeiro et al.'s CheckList: invariance, direction, minimum
functionality) and fairness slices over the contract's sensitive columns. Each test prints what it measured
(`pytest -s` shows it), so the figures quoted in the issue come from the test itself."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import recall_score

from msml.data.contract import Contract

pytestmark = pytest.mark.slow  # trains and registers a model

THRESHOLD = 0.5  # the decision threshold msml.training.evaluation scores the champion with
# fnlwgt is the census sampling weight: how many people a row stands for, not a trait of the person. Giving each
# test row another row's fnlwgt (a permutation: values from its real range and distribution) flipped 0.7% of the
# baseline champion's predictions (3 seeds: 0.70-0.76%); the same permutation of a feature that carries signal
# flips 4.0-4.4% (age, hours-per-week), 5.4% (capital-gain), 10.7% (education-num). 2% is under half the weakest
# of those, and ~20 standard errors (n = 9,758) above what was measured.
MAX_FLIP_RATE = 0.02
# The four-fifths rule (US EEOC adverse impact): a group's recall at least 80% of the overall recall.
MIN_RECALL_RATIO = 0.8
# Below this many positives in the test split a group's recall moves by >3 points per row: reported, not gated.
MIN_POSITIVES = 30


def flip_rate(champion, column: str, seed: int = 0) -> float:
    """Share of test rows whose predicted label changes when `column` is permuted across the test rows."""
    rows = champion.test[champion.model.metadata.get_input_schema().input_names()]
    shuffled = rows.assign(**{column: rows[column].sample(frac=1, random_state=seed).to_numpy()})
    return float(((champion.proba(shuffled) >= THRESHOLD) != (champion.proba(rows) >= THRESHOLD)).mean())


def mean_delta(champion, column: str, step: int, upper: int) -> tuple[float, float]:
    """Mean change of P(positive) over test rows when `column` grows by `step` (capped at `upper`), and the
    share of those rows whose probability fell."""
    rows = champion.test[champion.model.metadata.get_input_schema().input_names()]
    raised = rows.assign(**{column: np.minimum(rows[column] + step, upper)})
    moved = (raised[column] != rows[column]).to_numpy()
    delta = champion.proba(raised[moved]) - champion.proba(rows[moved])
    return float(delta.mean()), float((delta < 0).mean())


def slice_recalls(champion, contract, column: str) -> tuple[float, dict[str, tuple[float, int]]]:
    """Overall recall of the positive label on the test split, and {group: (recall, positives)}."""
    test = champion.test
    y = (test[contract.target] == contract.positive).to_numpy()
    pred = champion.proba(test[contract.features]) >= THRESHOLD
    groups = test[column].fillna("(missing)").to_numpy()
    return float(recall_score(y, pred)), {
        str(g): (float(recall_score(y[groups == g], pred[groups == g], zero_division=0)), int(y[groups == g].sum()))
        for g in sorted(set(groups))
    }


def test_invariance_fnlwgt_rarely_flips_a_prediction(champion):
    rate = flip_rate(champion, "fnlwgt")
    print(f"\nfnlwgt permuted across the test rows: {rate:.2%} of predictions flip")
    assert rate <= MAX_FLIP_RATE


@pytest.mark.parametrize("column, step", [("education-num", 2), ("capital-gain", 5000)])
def test_direction_more_of_it_does_not_lower_p_positive(champion, contract, column, step):
    mean, fell = mean_delta(champion, column, step, int(contract.column(column).max))
    print(f"\n{column} +{step}: mean change of P(>50K) {mean:+.4f}, rows whose P fell {fell:.1%}")
    assert mean >= 0


HIGH = {
    "age": 50,
    "workclass": "Self-emp-inc",
    "fnlwgt": 200000,
    "education": "Doctorate",
    "education-num": 16,
    "marital-status": "Married-civ-spouse",
    "occupation": "Exec-managerial",
    "relationship": "Husband",
    "race": "White",
    "sex": "Male",
    "capital-gain": 15024,
    "capital-loss": 0,
    "hours-per-week": 60,
    "native-country": "United-States",
}
LOW = {
    "age": 18,
    "workclass": "Private",
    "fnlwgt": 200000,
    "education": "11th",
    "education-num": 7,
    "marital-status": "Never-married",
    "occupation": "Other-service",
    "relationship": "Own-child",
    "race": "White",
    "sex": "Male",
    "capital-gain": 0,
    "capital-loss": 0,
    "hours-per-week": 20,
    "native-country": "United-States",
}
CLEAR_CUT = {
    "married executive, doctorate, large capital gain": (HIGH, True),
    "married professional wife, masters, large capital gain": (
        {
            **HIGH,
            "workclass": "Private",
            "education": "Masters",
            "education-num": 14,
            "occupation": "Prof-specialty",
            "relationship": "Wife",
            "sex": "Female",
            "hours-per-week": 45,
        },
        True,
    ),
    "18-year-old part-time service worker": (LOW, False),
    "22-year-old unmarried cleaner, no workclass given": (
        {
            **LOW,
            "age": 22,
            "workclass": None,
            "education": "HS-grad",
            "education-num": 9,
            "occupation": "Handlers-cleaners",
            "relationship": "Not-in-family",
            "sex": "Female",
        },
        False,
    ),
}


@pytest.mark.parametrize("name", list(CLEAR_CUT))
def test_minimum_functionality_on_clear_cut_rows(champion, contract, name):
    row, positive = CLEAR_CUT[name]
    p = champion.proba(pd.DataFrame([row])[contract.features])[0]
    print(f"\n{name}: P(>50K) = {p:.3f}")
    assert (p >= THRESHOLD) == positive


@pytest.mark.parametrize("column", Contract.load().sensitive)
def test_no_sensitive_group_has_recall_far_below_overall(champion, contract, column):
    overall, groups = slice_recalls(champion, contract, column)
    print(
        f"\nrecall overall {overall:.3f}; by {column}: "
        + ", ".join(f"{g} {r:.3f} ({n} positives)" for g, (r, n) in groups.items())
    )
    gated = {g: r for g, (r, n) in groups.items() if n >= MIN_POSITIVES}
    assert gated, f"no {column} group has {MIN_POSITIVES} positives in the test split"
    low = {g: round(r, 3) for g, r in gated.items() if r < MIN_RECALL_RATIO * overall}
    assert not low, f"recall below {MIN_RECALL_RATIO:.0%} of overall {overall:.3f}: {low}"
