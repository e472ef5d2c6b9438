"""The data as committed: the immutable raw file and the processed directory `msml preprocess` wrote from it.

Both paths can be pointed elsewhere (MSML_TEST_RAW, MSML_TEST_PROCESSED) to check another copy, or a deliberately
broken one: that is how these expectations were shown to fail.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest

from msml.data.preprocessing import QUARANTINE_FILE, REPORT_FILE, TEST_CLEAN_FILE, TRAIN_CLEAN_FILE
from tests.conftest import RAW, ROOT


@pytest.fixture(scope="session")
def raw_file() -> Path:
    return Path(os.environ.get("MSML_TEST_RAW", RAW))


@pytest.fixture(scope="session")
def processed_dir(contract) -> Path:
    return Path(os.environ.get("MSML_TEST_PROCESSED", ROOT / "data" / f"{contract.name}_preprocessing"))


@pytest.fixture(scope="session")
def raw_frame(raw_file, contract) -> pd.DataFrame:
    """The raw file as the pipeline reads it (strings, stripped, missing markers → NaN), not yet validated."""
    return contract.read_csv(raw_file)


@pytest.fixture(scope="session")
def report(processed_dir) -> dict:
    return json.loads((processed_dir / REPORT_FILE).read_text())


def _read_clean(path: Path, contract) -> pd.DataFrame:
    return pd.read_csv(
        path, dtype={c: str for c in contract.categorical_features}, keep_default_na=False, na_values=[""]
    )


@pytest.fixture(scope="session")
def train_clean(processed_dir, contract) -> pd.DataFrame:
    return _read_clean(processed_dir / TRAIN_CLEAN_FILE, contract)


@pytest.fixture(scope="session")
def test_clean(processed_dir, contract) -> pd.DataFrame:
    return _read_clean(processed_dir / TEST_CLEAN_FILE, contract)


@pytest.fixture(scope="session")
def quarantine(processed_dir) -> pd.DataFrame:
    return pd.read_csv(processed_dir / QUARANTINE_FILE, dtype=str, keep_default_na=False)
