"""The fast champion's runtime: the python_function loader of a compiled model (msml.training.fastmodel).

`mlflow models serve`, `mlflow models build-docker` and `mlflow.pyfunc.load_model` import this file from the
model's own `code/` folder, so it needs no msml: numpy, pandas (which MLflow itself needs) and LightGBM only.
The spec it reads says how raw rows become one float64 matrix (numbers as they are, each category its
position in the fitted list, missing and unknown NaN: what the pipeline's transformer did with pandas steps)
and how the trees' margins become P(positive): every tree ensemble, LightGBM's or HistGradientBoosting's, is a
LightGBM text model. The trees are walked by the spec's walker (fastwalk.c, built into the model's folder and
called through ctypes) when it loads on this machine, else by LightGBM's C++ predictor: the same splits and the
same additions, so the same margins to the last bit (tests/model/test_fast_model.py).

Why: the sklearn pipeline spent its time around the trees, not in them (one 1-row call 13.4 ms: the pandas
transform 5.9, HistGradientBoosting's per-tree Python loop 6.3, LightGBM's pandas checks 2.5); then LightGBM's
predictor spent twice the walker's time on the same trees (the champion's 700 trees, 128 rows, one thread:
5.1 ms against 2.6 ms).
"""

from __future__ import annotations

import ctypes
import json
import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

SPEC_FILE = "spec.json"
FORMAT = 1  # the spec's layout; a loader refuses one it does not know


class FastModel:
    """Raw feature rows (a DataFrame with the contract's columns) → [P(negative), P(positive)] per row."""

    def __init__(self, directory: str | Path, walker: bool = True) -> None:
        """`walker=False`: LightGBM's predictor walks the trees even when the spec's walker loads."""
        directory = Path(directory)
        spec = json.loads((directory / SPEC_FILE).read_text())
        if spec.get("format") != FORMAT:
            found = spec.get("format")
            raise ValueError(f"{directory / SPEC_FILE}: spec format {found!r}, this runtime reads {FORMAT}")
        self.numeric = list(spec["numeric"])
        self.categorical = [(name, {v: float(i) for i, v in enumerate(values)}) for name, values in spec["categorical"]]
        texts = [(directory / name).read_text() for name in spec["boosters"]]
        self.walker = TreeWalker.load(directory / spec["walker"], texts) if walker and spec.get("walker") else None
        self.boosters = [] if self.walker else [_booster(text) for text in texts]
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
        if self.walker:
            margins = list(self.walker.margins(matrix).T)
        else:
            # one thread: the model server answers one batch at a time beside the gateway on a shared machine,
            # and OpenMP's start-up costs more than it saves at the gateway's batch sizes
            margins = [b.predict(matrix, raw_score=True, num_threads=1) for b in self.boosters]
        positive = _evaluate(self.output, margins)
        return np.column_stack([1.0 - positive, positive])


def _booster(text: str):
    import lightgbm

    return lightgbm.Booster(model_str=text)


# fastwalk.c's Node, field for field (its C layout: 32 bytes)
NODE = np.dtype(
    [("threshold", "f8"), ("feature", "i4"), ("left", "i4"), ("right", "i4"), ("cat_start", "i4"),
     ("cat_len", "u2"), ("kind", "u1"), ("unused", "u1")],
    align=True,
)  # fmt: skip


class TreeWalker:
    """The trees of several LightGBM text models in fastwalk.c's arrays, and the built walker that reads them."""

    def __init__(self, library: ctypes.CDLL, texts: list[str]) -> None:
        self.walk = library.msml_walk
        p = ctypes.c_void_p
        self.walk.argtypes = [p, ctypes.c_int64, ctypes.c_int32, p, p, p, p, p, ctypes.c_int32, ctypes.c_int32, p]
        self.walk.restype = None
        nodes, words, leaves, roots, outputs = [], [0], [], [], []  # word 0: a numeric split's (unread) bitset
        for output, text in enumerate(texts):
            for tree in _trees(text):
                _add_tree(tree, nodes, words, leaves, roots)
                outputs.append(output)
        self.nodes = np.array(nodes, dtype=NODE)
        self.words = np.array(words, dtype=np.uint32)
        self.leaves = np.array(leaves, dtype=np.float64)
        self.roots = np.array(roots, dtype=np.int32)
        self.outputs = np.array(outputs, dtype=np.int32)
        self.n_outputs = len(texts)

    @classmethod
    def load(cls, library: Path, texts: list[str]) -> TreeWalker | None:
        """The walker, or None (logged) when its library does not load here (another CPU architecture or C
        library) or it cannot read these trees: LightGBM's predictor then walks them."""
        try:
            return cls(ctypes.CDLL(str(library)), texts)
        except (OSError, ValueError) as exc:
            log.warning("the fast model's walker is not used (%s): LightGBM's predictor walks the trees", exc)
            return None

    def margins(self, matrix: np.ndarray) -> np.ndarray:
        """(rows, models): each LightGBM model's raw score of each row of `matrix`."""
        x = np.ascontiguousarray(matrix, dtype=np.float64)
        out = np.zeros((len(x), self.n_outputs))
        self.walk(x.ctypes.data, len(x), x.shape[1], self.nodes.ctypes.data, self.words.ctypes.data,
                  self.leaves.ctypes.data, self.roots.ctypes.data, self.outputs.ctypes.data, len(self.roots),
                  self.n_outputs, out.ctypes.data)  # fmt: skip
        return out


def _trees(text: str) -> list[dict[str, str]]:
    """Each tree of a LightGBM text model as its `key=value` lines."""
    if "\nnum_tree_per_iteration=1\n" not in text:
        raise ValueError("the walker reads models of one tree per iteration")
    body = text.split("\nend of trees")[0]
    return [dict(ln.split("=", 1) for ln in block.splitlines()[1:] if "=" in ln) for block in body.split("\nTree=")[1:]]


def _add_tree(tree: dict[str, str], nodes: list, words: list[int], leaves: list[float], roots: list[int]) -> None:
    """Append one tree: its splits to `nodes` (children as indices into all the trees' nodes and leaves), the
    left sets of its categorical splits to `words`, its leaves to `leaves` and its root to `roots`."""
    if tree.get("is_linear", "0") != "0":
        raise ValueError("the walker does not evaluate linear trees")
    first_node, first_leaf = len(nodes), len(leaves)
    leaves.extend(float(v) for v in tree["leaf_value"].split())
    if int(tree["num_leaves"]) == 1:
        roots.append(~first_leaf)
        return
    roots.append(first_node)

    def ints(key: str) -> list[int]:
        return [int(v) for v in tree.get(key, "").split()]

    def child(c: int) -> int:
        return first_node + c if c >= 0 else ~(first_leaf + ~c)

    bounds, bitsets = ints("cat_boundaries"), ints("cat_threshold")
    thresholds = [float(v) for v in tree["threshold"].split()]
    columns = ("split_feature", "decision_type", "left_child", "right_child")
    splits = zip(thresholds, *(ints(key) for key in columns), strict=True)
    for threshold, feature, decision, left, right in splits:
        cat_start, cat_len = 0, 0
        if decision & 1:  # categorical: the threshold is the index of its left set
            k = int(threshold)
            cat_start, cat_len = len(words), bounds[k + 1] - bounds[k]
            words.extend(bitsets[bounds[k] : bounds[k + 1]])
        nodes.append((threshold, feature, child(left), child(right), cat_start, cat_len, decision & 0x0F, 0))


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
