"""The champion, trained and registered for real once per session (the baseline run + the promotion gate: the
session's `registered_model`, the one the serving tests serve), loaded back through the registry the way
`mlflow models serve` loads it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest

from msml.data.preprocessing import load_clean_splits
from tests.integration.serving_fixtures import RegisteredModel


@dataclass
class Champion:
    registered: RegisteredModel
    model: object  # mlflow.pyfunc.PyFuncModel: raw rows in, [P(negative), P(positive)] out
    train: pd.DataFrame  # clean rows in the contract's raw form
    test: pd.DataFrame

    def proba(self, rows: pd.DataFrame) -> np.ndarray:
        """P(positive label) for each row."""
        return np.asarray(self.model.predict(rows))[:, 1]


@pytest.fixture(scope="session")
def champion(registered_model, processed, contract) -> Champion:
    import mlflow

    registered = registered_model  # the session's one (tests/conftest.py), read only
    mlflow.set_tracking_uri(registered.tracking_uri)
    try:
        model = mlflow.pyfunc.load_model(registered.uri)
    finally:
        mlflow.set_tracking_uri(None)
    train, test = load_clean_splits(processed, contract)
    return Champion(registered, model, train, test)
