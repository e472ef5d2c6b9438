"""The fast champion's runtime: the python_function loader of a compiled model (msml.training.fastmodel).

`mlflow models serve`, `mlflow models build-docker` and `mlflow.pyfunc.load_model` import this file from the
model's own `code/` folder, so it needs no msml: numpy, pandas (which MLflow itself needs) and LightGBM only.
The spec it reads says how raw rows become one float64 matrix (numbers as they are, each category its
position in the fitted list, missing and unknown NaN: what the pipeline's transformer did with pandas steps)
and how the trees' margins become P(positive): every tree ensemble, LightGBM's or HistGradientBoosting's, is a
LightGBM text model walked by LightGBM's C++ predictor in one call over all rows.

Why: the sklearn pipeline spent its time around the trees, not in them (one 1-row call 13.4 ms: the pandas
transform 5.9, HistGradientBoosting's per-tree Python loop 6.3, LightGBM's pandas checks 2.5).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

SPEC_FILE = "spec.json"
FORMAT = 1  # the spec's layout; a loader refuses one it does not know


class FastModel:
    """Raw feature rows (a DataFrame with the contract's columns) → [P(negative), P(positive)] per row."""

    def __init__(self, directory: str | Path) -> None:
        import lightgbm

        directory = Path(directory)
        spec = json.loads((directory / SPEC_FILE).read_text())
        if spec.get("format") != FORMAT:
            found = spec.get("format")
            raise ValueError(f"{directory / SPEC_FILE}: spec format {found!r}, this runtime reads {FORMAT}")
        self.numeric = list(spec["numeric"])
        self.categorical = [(name, {v: float(i) for i, v in enumerate(values)}) for name, values in spec["categorical"]]
        self.boosters = [lightgbm.Booster(model_file=str(directory / name)) for name in spec["boosters"]]
        self.output = spec["output"]

    def matrix(self, frame) -> np.ndarray:
        """The float64 matrix the trees read: numeric columns, then each categorical column's codes."""
        import pandas as pd

        out = np.full((len(frame), len(self.numeric) + len(self.categorical)), np.nan)
        present = set(frame.columns)  # the signature lets a nullable column be left out: all missing
        for j, name in enumerate(self.numeric):
            if name not in present:
                continue
            col = frame[name].to_numpy()
            if col.dtype.kind == "O":  # a JSON null or pd.NA among numbers: missing, as the pipeline's where(notna)
                col = np.where(pd.isna(col), np.nan, col)
            out[:, j] = col
        nan = np.nan
        for j, (name, codes) in enumerate(self.categorical, start=len(self.numeric)):
            if name not in present:
                continue
            out[:, j] = [codes.get(v, nan) if isinstance(v, str) else nan for v in frame[name].to_numpy()]
        return out

    def predict(self, model_input, params=None) -> np.ndarray:
        import pandas as pd

        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        matrix = self.matrix(frame)
        # one thread: the model server answers one batch at a time beside the gateway on a shared machine, and
        # OpenMP's start-up costs more than it saves at the gateway's batch sizes
        margins = [b.predict(matrix, raw_score=True, num_threads=1) for b in self.boosters]
        positive = _evaluate(self.output, margins)
        return np.column_stack([1.0 - positive, positive])


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _evaluate(node: dict, margins: list[np.ndarray]) -> np.ndarray:
    """P(positive) (or a score) of one node of the spec's output expression."""
    op = node["op"]
    if op == "margin":  # a tree ensemble's raw score
        return margins[node["booster"]]
    if op == "sigmoid":
        return _sigmoid(_evaluate(node["of"], margins))
    if op == "mean":  # a soft vote, or the folds of a calibrated model
        return np.average([_evaluate(n, margins) for n in node["of"]], axis=0, weights=node.get("weights"))
    if op == "platt":  # sklearn's sigmoid calibration: expit(-(a * score + b))
        return _sigmoid(-(node["a"] * _evaluate(node["of"], margins) + node["b"]))
    if op == "isotonic":  # sklearn's IsotonicRegression(out_of_bounds="clip")
        score = np.clip(_evaluate(node["of"], margins), node["x"][0], node["x"][-1])
        return np.interp(score, node["x"], node["y"])
    raise ValueError(f"unknown operation {op!r} in the fast model's spec")


def _load_pyfunc(path: str) -> FastModel:
    """MLflow's entry point for a python_function flavor with a loader module."""
    return FastModel(path)
