"""The behavioural tests are not rubber stamps: each fails on a model broken the way it guards against (the
real champion's probabilities, distorted)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.model import test_behaviour as behaviour
from tests.model.conftest import Champion

pytestmark = pytest.mark.slow  # uses the trained champion


class Distorted(Champion):
    def __init__(self, champion: Champion, distort):
        super().__init__(champion.registered, champion.model, champion.train, champion.test)
        self.distort = distort

    def proba(self, rows):
        return np.clip(self.distort(rows, super().proba(rows)), 0, 1)


def test_invariance_fails_on_a_model_that_uses_fnlwgt(champion):
    median = champion.train["fnlwgt"].median()
    broken = Distorted(champion, lambda r, p: p + 0.15 * np.where(r["fnlwgt"].to_numpy() > median, 1, -1))
    with pytest.raises(AssertionError):
        behaviour.test_invariance_fnlwgt_rarely_flips_a_prediction(broken)


@pytest.mark.parametrize("column, step, scale", [("education-num", 2, 0.1), ("capital-gain", 5000, 1e-4)])
def test_direction_fails_when_more_lowers_p(champion, contract, column, step, scale):
    broken = Distorted(champion, lambda r, p: p - scale * r[column].to_numpy())
    with pytest.raises(AssertionError):
        behaviour.test_direction_more_of_it_does_not_lower_p_positive(broken, contract, column, step)


@pytest.mark.parametrize("name", list(behaviour.CLEAR_CUT))
def test_minimum_functionality_fails_on_an_inverted_model(champion, contract, name):
    with pytest.raises(AssertionError):
        behaviour.test_minimum_functionality_on_clear_cut_rows(Distorted(champion, lambda r, p: 1 - p), contract, name)


@pytest.mark.parametrize("column, group", [("sex", "Female"), ("race", "Black")])
def test_slice_check_fails_when_a_group_is_under_predicted(champion, contract, column, group):
    broken = Distorted(champion, lambda r, p: np.where(r[column].to_numpy() == group, p * 0.5, p))
    with pytest.raises(AssertionError, match=group):
        behaviour.test_no_sensitive_group_has_recall_far_below_overall(broken, contract, column)
