"""The champion, trained and registered for real once per session (the baseline run + the promotion gate, as
the serving tests do), loaded back through the registry the way `mlflow models serve` loads it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest

from msml.preprocessing import load_clean_splits
from tests.integration.serving_fixtures import RegisteredModel, train_and_register


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
def champion(processed, contract, tmp_path_factory) -> Champion:
    import mlflow

    registered = train_and_register(processed, contract, tmp_path_factory.mktemp("champion"), "behaviour-tests")
    mlflow.set_tracking_uri(registered.tracking_uri)
    try:
        model = mlflow.pyfunc.load_model(registered.uri)
    finally:
        mlflow.set_tracking_uri(None)
    train, test = load_clean_splits(processed, contract)
    return Champion(registered, model, train, test)
