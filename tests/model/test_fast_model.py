"""The compiled model (msml.training.fastmodel) against the sklearn pipeline it was compiled from, for every shape
tuning can choose (HistGradientBoosting, LightGBM, their soft vote; uncalibrated, sigmoid, isotonic), fitted for
real on the train split and compared on the whole test split, on every category of every column, on missing and
unknown values; and what it refuses to compile. The tuned champion logged and served end to end is in
tests/integration/test_training.py."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import Pipeline

from msml.data.preprocessing import encode_target, load_clean_splits
from msml.training import fastmodel
from msml.training.fastmodel_runtime import FastModel
from msml.training.tuning import make_model, native_transformer

pytestmark = pytest.mark.slow  # fits models

# small members: the conversion, not the model's quality, is under test (each fits in a second or two)
HGB = {"family": "hgb", "learning_rate": 0.1, "max_iter": 60, "max_leaf_nodes": 31, "min_samples_leaf": 20,
       "l2_regularization": 0.1, "max_features": 0.8}  # fmt: skip
LGBM = {"family": "lightgbm", "learning_rate": 0.1, "n_estimators": 60, "num_leaves": 31, "min_child_samples": 20,
        "reg_lambda": 0.1, "colsample_bytree": 0.8, "subsample": 0.8, "cat_smooth": 10.0}  # fmt: skip
TOLERANCE = 1e-6  # the bound; the measured difference is rounding (~2e-16)


@pytest.fixture(scope="module")
def splits(processed, contract):
    train, test = load_clean_splits(processed, contract)
    return train, test


@pytest.fixture(scope="module")
def transformer(splits, contract):
    train, _ = splits
    return native_transformer(contract).fit(train[contract.features])


def fitted(choice: dict, transformer, splits, contract) -> Pipeline:
    train, _ = splits
    X = transformer.transform(train[contract.features])
    y = encode_target(train[contract.target], contract)
    model = make_model(choice, seed=0, folds=StratifiedKFold(2, shuffle=True, random_state=0)).fit(X, y)
    return Pipeline([("transform", transformer), ("model", model)])


def compiled(pipeline: Pipeline, tmp_path) -> FastModel:
    """The compiled model as the model server loads it: its trees walked by the built walker (fastwalk.c)."""
    fastmodel.write_spec(tmp_path, *fastmodel.compile_pipeline(pipeline))
    fast = FastModel(tmp_path)
    assert fast.walker is not None, "the walker was not built or did not load (is there a C compiler?)"
    return fast


def assert_same(pipeline: Pipeline, fast: FastModel, rows: pd.DataFrame) -> None:
    slow, quick = pipeline.predict_proba(rows), fast.predict(rows)
    assert quick.shape == slow.shape
    worst = np.abs(quick - slow).max()
    flips = int(((quick[:, 1] >= 0.5) != (slow[:, 1] >= 0.5)).sum())
    assert worst <= TOLERANCE and flips == 0, f"max difference {worst:.3g}, {flips} predicted classes differ"


CHOICES = {
    "hgb": {"family": "hgb", "params": HGB, "calibration": "none"},
    "lightgbm": {"family": "lightgbm", "params": LGBM, "calibration": "none"},
    "ensemble": {"family": "ensemble", "members": {"hgb": HGB, "lightgbm": LGBM}, "calibration": "none"},
    "ensemble-sigmoid": {"family": "ensemble", "members": {"hgb": HGB, "lightgbm": LGBM}, "calibration": "sigmoid"},
    "hgb-isotonic": {"family": "hgb", "params": HGB, "calibration": "isotonic"},
}


@pytest.mark.parametrize("name", CHOICES)
def test_compiled_model_predicts_as_the_pipeline_on_the_whole_test_split(name, transformer, splits, contract, tmp_path):
    pipeline = fitted(CHOICES[name], transformer, splits, contract)
    _, test = splits
    assert_same(pipeline, compiled(pipeline, tmp_path), test[contract.features])


def test_every_category_missing_and_unknown_values_go_where_the_pipeline_sends_them(
    transformer, splits, contract, tmp_path
):
    """Each code of each categorical column (some never seen by HGB in training: its 'unknown' direction), a
    missing value in each column, an unknown category, and a nullable column left out of the frame."""
    pipeline = fitted(CHOICES["ensemble"], transformer, splits, contract)
    fast = compiled(pipeline, tmp_path)
    _, test = splits
    frames = []
    for column in contract.categorical_features:
        values = [*contract.column(column).values, None, "no such category"]
        rows = test[contract.features].sample(len(values), random_state=1).reset_index(drop=True)
        rows[column] = values
        frames.append(rows)
    for column in contract.features:
        rows = test[contract.features].head(5).copy()
        rows[column] = None if column in contract.categorical_features else np.nan
        frames.append(rows)
    assert_same(pipeline, fast, pd.concat(frames, ignore_index=True))
    nullable = [c.name for c in contract.columns if c.nullable]
    rows = test[contract.features].head(20)
    np.testing.assert_allclose(
        fast.predict(rows.drop(columns=nullable)),
        pipeline.predict_proba(rows.assign(**{c: None for c in nullable})),
        rtol=0,
        atol=TOLERANCE,
    )


def test_the_walker_adds_the_same_leaves_as_lightgbms_predictor(transformer, splits, contract, tmp_path):
    """Margins equal to the last bit (the same splits, the same additions in the same order) on the whole test
    split and on matrices no request makes: values exactly at split thresholds, NaN anywhere, exact zeros,
    negative, fractional and out-of-range category codes, infinities. The fallback where the walker cannot load
    is then the same model."""
    pipeline = fitted(CHOICES["ensemble"], transformer, splits, contract)
    walker = compiled(pipeline, tmp_path).walker
    lightgbm = FastModel(tmp_path, walker=False)
    _, test = splits
    matrix = lightgbm.matrix(test[contract.features])
    rng = np.random.default_rng(0)
    odd = matrix[rng.integers(0, len(matrix), 4000)]
    for value, share in ((np.nan, 0.15), (0.0, 0.05), (-1.0, 0.02), (-0.5, 0.02), (2.5, 0.02), (1e12, 0.01),
                         (np.inf, 0.01), (-np.inf, 0.01), (70.0, 0.02)):  # fmt: skip
        odd[rng.random(odd.shape) < share] = value
    numeric = walker.nodes[(walker.nodes["kind"] & 1) == 0]
    at_threshold = matrix[rng.integers(0, len(matrix), len(numeric))]
    at_threshold[np.arange(len(numeric)), numeric["feature"]] = numeric["threshold"]
    odd = np.vstack([odd, at_threshold])
    for rows in (matrix, odd):
        expected = np.column_stack([b.predict(rows, raw_score=True, num_threads=1) for b in lightgbm.boosters])
        assert np.array_equal(walker.margins(rows), expected)


def test_what_the_runtime_cannot_evaluate_is_not_compiled(splits, contract, processed):
    """The baseline (LogisticRegression behind the one-hot transformer) stays an sklearn model."""
    import joblib
    from sklearn.linear_model import LogisticRegression

    from msml.data.preprocessing import TRANSFORMER_FILE

    train, _ = splits
    onehot = joblib.load(processed / TRANSFORMER_FILE)
    X = onehot.transform(train[contract.features].head(500))
    y = encode_target(train[contract.target].head(500), contract)
    baseline = Pipeline([("transform", onehot), ("model", LogisticRegression(max_iter=200).fit(X, y))])
    with pytest.raises(fastmodel.NotCompilable, match="native_transformer"):
        fastmodel.compile_pipeline(baseline)
    assert fastmodel.compile_checked(baseline, train[contract.features].head(50)) is None
