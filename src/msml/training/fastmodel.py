"""Compile a fitted tree pipeline into the fast model's spec, and log it with both flavors.

The tuned champion (tuning.native_transformer → HistGradientBoosting, LightGBM, their soft vote, optionally
calibrated) becomes a spec the standalone runtime (`fastmodel_runtime`) evaluates: the transformer's column
lists, one LightGBM text model per tree ensemble (HistGradientBoosting's trees rewritten node for node:
same thresholds, leaf values and missing/unknown-category directions, on the same matrix), and an expression
that turns their margins into P(positive) exactly as the sklearn estimators do.

The logged model keeps its sklearn flavor (`mlflow.sklearn.load_model` gives the fitted Pipeline back); its
python_function flavor — what `mlflow models serve`, `build-docker` and `mlflow.pyfunc.load_model` run — loads
the runtime from the model's own `code/` folder. An estimator the compiler does not know (the baseline's
LogisticRegression) raises NotCompilable and is logged as the plain sklearn model it was.

Its length (~400 lines): one compiler per estimator sklearn can nest here (vote, calibration, both tree
families, HistGradientBoosting's trees rewritten node by node), then the checked compile, the walker's build
and the flavor; they share the spec's vocabulary, and splitting them would spread one format over modules.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np

from msml.training import fastmodel_runtime as runtime

log = logging.getLogger(__name__)

SPEC_DIR = "fast"  # inside the logged model's folder
RUNTIME_MODULE = "msml_fast_model"  # the runtime's name in the model's code/ folder (not msml: that is not there)
WALKER_SOURCE = Path(__file__).with_name("fastwalk.c")
WALKER_LIBRARY = "fastwalk.so"  # built into SPEC_DIR beside its source
RUNTIME_TAG = "msml.model_runtime"  # a run tag: "compiled" or "sklearn", what the pyfunc flavor runs
# the compiled model's probabilities may differ from the pipeline's by rounding only (measured: 2.2e-16)
TOLERANCE = 1e-9


class NotCompilable(Exception):
    """The pipeline holds a step the fast runtime does not evaluate; it is served as the sklearn model."""


def compile_pipeline(pipeline) -> tuple[dict, dict[str, str]]:
    """(spec, {file name: LightGBM model text}) of a fitted Pipeline(transform=native transformer, model=...)."""
    from sklearn.pipeline import Pipeline

    if not isinstance(pipeline, Pipeline) or list(pipeline.named_steps) != ["transform", "model"]:
        raise NotCompilable("not a Pipeline of a transform and a model")
    numeric, categorical = _transform_columns(pipeline.named_steps["transform"])
    columns = [*numeric, *(name for name, _ in categorical)]
    boosters: list[str] = []
    output = _compile_estimator(pipeline.named_steps["model"], columns, categorical, boosters)
    files = {f"booster_{i}.txt": text for i, text in enumerate(boosters)}
    spec = {
        "format": runtime.FORMAT,
        "numeric": numeric,
        "categorical": [[name, values] for name, values in categorical],
        "boosters": list(files),
        "output": output,
    }
    return spec, files


def _transform_columns(transform) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """The native transformer's numeric columns and (categorical column, fitted categories), in output order."""
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer, OrdinalEncoder

    steps = getattr(transform, "named_steps", {})
    if not isinstance(transform, Pipeline) or list(steps) != ["missing_to_nan", "columns", "as_categories"]:
        raise NotCompilable("the transform is not tuning.native_transformer's")
    columns = steps["columns"]
    if not isinstance(columns, ColumnTransformer) or [n for n, _, _ in columns.transformers_ if n != "remainder"] != [
        "num",
        "cat",
    ]:
        raise NotCompilable("the column transformer is not (num, cat)")
    fitted = dict((n, (t, c)) for n, t, c in columns.transformers_)
    num, numeric = fitted["num"]
    cat, cats = fitted["cat"]
    if not isinstance(num, FunctionTransformer) or not isinstance(cat, OrdinalEncoder):
        raise NotCompilable("the column transformer's steps are not a FunctionTransformer and an OrdinalEncoder")
    if not (cat.handle_unknown == "use_encoded_value" and np.isnan(cat.unknown_value)):
        raise NotCompilable("the ordinal encoder does not map unknown categories to NaN")
    if fitted.get("remainder", ("drop",))[0] != "drop":
        raise NotCompilable("the column transformer passes other columns through")
    categorical = [(name, [str(v) for v in values]) for name, values in zip(cats, cat.categories_, strict=True)]
    return list(numeric), categorical


def _compile_estimator(est, columns: list[str], categorical, boosters: list[str]) -> dict:
    """The output-expression node giving `est`'s P(positive) (sklearn's predict_proba[:, 1])."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.ensemble import VotingClassifier

    _check_binary(est)
    if isinstance(est, VotingClassifier):
        if est.voting != "soft":
            raise NotCompilable("a hard vote")
        members = [_compile_estimator(m, columns, categorical, boosters) for m in est.estimators_]
        node = {"op": "mean", "of": members}
        if est.weights is not None:
            node["weights"] = [float(w) for w in est.weights]
        return node
    if isinstance(est, CalibratedClassifierCV):
        folds = est.calibrated_classifiers_
        return {"op": "mean", "of": [_compile_calibrated(c, columns, categorical, boosters) for c in folds]}
    return {"op": "sigmoid", "of": _margin(est, columns, categorical, boosters)}


def _compile_calibrated(calibrated, columns, categorical, boosters) -> dict:
    """One fold of CalibratedClassifierCV: its calibrator applied to the base's decision_function (else P)."""
    from sklearn.calibration import _SigmoidCalibration
    from sklearn.isotonic import IsotonicRegression

    base = calibrated.estimator
    if hasattr(base, "decision_function"):  # sklearn's _get_response_values prefers it
        score = _margin(base, columns, categorical, boosters)
    else:
        score = _compile_estimator(base, columns, categorical, boosters)
    (calibrator,) = calibrated.calibrators
    if isinstance(calibrator, _SigmoidCalibration):
        return {"op": "platt", "a": float(calibrator.a_), "b": float(calibrator.b_), "of": score}
    if isinstance(calibrator, IsotonicRegression) and calibrator.out_of_bounds == "clip":
        return {
            "op": "isotonic",
            "x": [float(v) for v in calibrator.X_thresholds_],
            "y": [float(v) for v in calibrator.y_thresholds_],
            "of": score,
        }
    raise NotCompilable(f"calibrator {type(calibrator).__name__}")


def _check_binary(est) -> None:
    classes = getattr(est, "classes_", None)
    if classes is None or list(classes) != [0, 1]:
        raise NotCompilable(f"{type(est).__name__} is not a binary classifier of 0/1")


def _margin(est, columns, categorical, boosters: list[str]) -> dict:
    """A tree ensemble's raw score as a LightGBM text model over the transformer's matrix."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    _check_binary(est)
    if isinstance(est, HistGradientBoostingClassifier):
        text = _hgb_to_lightgbm(est, columns, categorical)
    elif type(est).__name__ == "LGBMClassifier":
        text = _lightgbm_text(est, columns, categorical)
    else:
        raise NotCompilable(f"{type(est).__name__} is not a tree ensemble the runtime walks")
    boosters.append(text)
    return {"op": "margin", "booster": len(boosters) - 1}


def _lightgbm_text(est, columns, categorical) -> str:
    """The LGBMClassifier's own model, after checking it reads the matrix as the runtime builds it."""
    booster = est.booster_
    if booster.feature_name() != columns:
        raise NotCompilable("LightGBM was fitted on other columns")
    # fitted on pandas categoricals whose categories are the codes 0..K-1: a code is its own category
    expected = [list(range(len(values))) for _, values in categorical]
    if booster.pandas_categorical not in (None, expected):
        raise NotCompilable("LightGBM's categories are not the transformer's codes")
    text = booster.model_to_string()
    if "\nobjective=binary sigmoid:1\n" not in text:
        raise NotCompilable("LightGBM's objective is not binary with sigmoid 1")
    return text


# decision_type bits of a LightGBM split (LightGBM's tree.h): categorical, default left, missing type NaN
_CATEGORICAL, _DEFAULT_LEFT, _MISSING_NAN = 1, 2, 2 << 2


def _hgb_to_lightgbm(est, columns: list[str], categorical) -> str:
    """HistGradientBoostingClassifier's trees as a LightGBM text model over the transformer's matrix.

    HGB reorders its input (categorical columns first) and re-encodes each category as its rank among those
    seen in training; a split's feature index and category sets are mapped back to the matrix's columns and
    codes here. Every code's direction is decided as HGB's predictor decides it (in the left set → left; known
    → right; unknown → the missing direction), and NaN's by the missing direction; LightGBM sends NaN right at
    a categorical split, so a split whose missing values go left has its children swapped and its set inverted.
    The baseline is added to the first tree's leaves: LightGBM sums ((0 + (b + t1)) + t2) + …, HGB
    ((b + t1) + t2) + …, the same floating-point additions.
    """
    if est.n_trees_per_iteration_ != 1:
        raise NotCompilable("HistGradientBoosting with more than one tree per iteration")
    if list(getattr(est, "feature_names_in_", [])) != columns:
        raise NotCompilable("HistGradientBoosting was fitted on other columns")
    n_codes = {columns.index(name): len(values) for name, values in categorical}
    if est.is_categorical_ is None:  # no categorical column: HGB reads the matrix as it is
        internal_to_column = np.arange(len(columns))
        code_maps: dict[int, np.ndarray] = {}
    else:
        is_cat = np.asarray(est.is_categorical_, dtype=bool)
        internal_to_column = np.concatenate([np.flatnonzero(is_cat), np.flatnonzero(~is_cat)])
        encoder = est._preprocessor.named_transformers_["encoder"]
        code_maps = {}
        for column, seen in zip(np.flatnonzero(is_cat), encoder.categories_, strict=True):
            seen = [v for v in seen if not (isinstance(v, float) and np.isnan(v))]
            if int(column) not in n_codes:
                raise NotCompilable(f"HistGradientBoosting treats column {columns[column]} as categorical")
            # our code c → HGB's code (its rank among the categories seen in training), NaN when unseen
            rank = {float(v): float(i) for i, v in enumerate(seen)}
            code_maps[int(column)] = np.array([rank.get(float(c), np.nan) for c in range(n_codes[int(column)])])
    known_bitsets, f_idx_map = est._bin_mapper.make_known_categories_bitsets()
    baseline = float(np.ravel(est._baseline_prediction)[0])
    trees = []
    for i, (predictor,) in enumerate(est._predictors):
        trees.append(
            _hgb_tree(predictor, internal_to_column, code_maps, known_bitsets, f_idx_map, baseline if i == 0 else 0.0)
        )
    header = [
        "tree",
        "version=v4",
        "num_class=1",
        "num_tree_per_iteration=1",
        "label_index=0",
        f"max_feature_idx={len(columns) - 1}",
        "objective=binary sigmoid:1",
        "feature_names=" + " ".join(columns),
        "feature_infos=" + " ".join("none" for _ in columns),
        "",
    ]
    body = [f"Tree={i}\n{tree}\n" for i, tree in enumerate(trees)]
    return "\n".join(header) + "\n" + "\n".join(body) + "\nend of trees\n\npandas_categorical:null\n"


def _in_bitset(bitsets: np.ndarray, row: int, value: int) -> bool:
    return bool((int(bitsets[row, value // 32]) >> (value % 32)) & 1)


def _hgb_tree(predictor, internal_to_column, code_maps, known_bitsets, f_idx_map, add: float) -> str:
    """One HGB tree in LightGBM's text format (internal nodes in pre-order, leaves in the order met)."""
    nodes = predictor.nodes
    left_bitsets = predictor.raw_left_cat_bitsets
    internal: list[dict] = []
    leaves: list[float] = []

    def visit(i: int) -> int:  # LightGBM's child reference of HGB node i: internal index, or ~leaf index
        node = nodes[i]
        if node["is_leaf"]:
            leaves.append(float(node["value"]) + add)
            return ~(len(leaves) - 1)
        split = {"feature": int(internal_to_column[node["feature_idx"]]), "gain": float(node["gain"])}
        index = len(internal)
        internal.append(split)
        left, right = int(node["left"]), int(node["right"])
        missing_left = bool(node["missing_go_to_left"])
        if node["is_categorical"]:
            codes = code_maps[split["feature"]]
            goes_left = []
            for hgb_code in codes:
                if np.isnan(hgb_code):
                    goes_left.append(missing_left)
                elif _in_bitset(left_bitsets, int(node["bitset_idx"]), int(hgb_code)):
                    goes_left.append(True)
                elif _in_bitset(known_bitsets, int(f_idx_map[node["feature_idx"]]), int(hgb_code)):
                    goes_left.append(False)
                else:
                    goes_left.append(missing_left)
            if missing_left:  # LightGBM sends NaN right: swap the children, keep the codes' directions
                left, right = right, left
                goes_left = [not g for g in goes_left]
            split["categories"] = [c for c, g in enumerate(goes_left) if g]
            split["decision"] = _CATEGORICAL | _MISSING_NAN
        else:
            split["threshold"] = float(node["num_threshold"])
            split["decision"] = _MISSING_NAN | (_DEFAULT_LEFT if missing_left else 0)
        split["left"] = visit(left)
        split["right"] = visit(right)
        return index

    if nodes[0]["is_leaf"]:  # a stump: LightGBM's text wants a split, so split on nothing (both leaves equal)
        value = float(nodes[0]["value"]) + add
        internal = [{"feature": 0, "gain": 0.0, "threshold": 0.0, "decision": _MISSING_NAN, "left": ~0, "right": ~1}]
        leaves = [value, value]
    else:
        visit(0)
    cat_boundaries, cat_threshold, thresholds = [0], [], []
    for split in internal:
        if "categories" in split:
            words = np.zeros(max(1, (max(split["categories"], default=0) // 32) + 1), dtype=np.uint64)
            for c in split["categories"]:
                words[c // 32] |= np.uint64(1 << (c % 32))
            thresholds.append(str(len(cat_boundaries) - 1))
            cat_threshold.extend(str(int(w)) for w in words)
            cat_boundaries.append(cat_boundaries[-1] + len(words))
        else:
            thresholds.append(repr(split["threshold"]))
    n_internal, n_leaves = len(internal), len(leaves)
    zeros_internal, zeros_leaves = " ".join(["0"] * n_internal), " ".join(["0"] * n_leaves)
    lines = [
        f"num_leaves={n_leaves}",
        f"num_cat={len(cat_boundaries) - 1}",
        "split_feature=" + " ".join(str(s["feature"]) for s in internal),
        "split_gain=" + " ".join(repr(s["gain"]) for s in internal),
        "threshold=" + " ".join(thresholds),
        "decision_type=" + " ".join(str(s["decision"]) for s in internal),
        "left_child=" + " ".join(str(s["left"]) for s in internal),
        "right_child=" + " ".join(str(s["right"]) for s in internal),
        "leaf_value=" + " ".join(repr(v) for v in leaves),
        "leaf_weight=" + zeros_leaves,
        "leaf_count=" + zeros_leaves,
        "internal_value=" + zeros_internal,
        "internal_weight=" + zeros_internal,
        "internal_count=" + zeros_internal,
    ]
    if len(cat_boundaries) > 1:
        lines += ["cat_boundaries=" + " ".join(map(str, cat_boundaries)), "cat_threshold=" + " ".join(cat_threshold)]
    lines += ["is_linear=0", "shrinkage=1"]
    return "\n".join(lines) + "\n"


def compile_checked(pipeline, rows) -> tuple[dict, dict[str, str]] | None:
    """The compiled pipeline, or None when it cannot be compiled or its probabilities on `rows` (raw feature
    rows: the test split) differ from the pipeline's by more than TOLERANCE (then the sklearn model is served;
    a warning says why)."""
    import tempfile

    try:
        compiled = compile_pipeline(pipeline)
    except NotCompilable as exc:
        log.info("served as the sklearn model: %s", exc)
        return None
    slow = pipeline.predict_proba(rows)
    with tempfile.TemporaryDirectory() as tmp:
        write_spec(Path(tmp), *compiled)
        # both ways of walking the trees: the model server falls back to LightGBM's where the walker cannot load
        worst = max(float(np.abs(runtime.FastModel(tmp, walker=w).predict(rows) - slow).max()) for w in (True, False))
    if not worst <= TOLERANCE:
        log.warning("the compiled model differs from the pipeline by %.3g: served as the sklearn model", worst)
        return None
    return compiled


def write_spec(directory: Path, spec: dict, files: dict[str, str]) -> None:
    """The compiled model's folder: spec.json, the LightGBM text models and, where a C compiler is, the walker."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text)
    walker = build_walker(directory)
    if walker and runtime.TreeWalker.load(directory / walker, list(files.values())) is None:
        walker = None  # it cannot walk these trees (logged): every load would only warn again
    spec = {**spec, "walker": walker} if walker else spec
    (directory / runtime.SPEC_FILE).write_text(json.dumps(spec, indent=1) + "\n")


def build_walker(directory: Path) -> str | None:
    """fastwalk.c built into `directory` (its source beside it); the library's file name, or None (logged) when
    there is no C compiler or it fails: the runtime then walks the trees with LightGBM's predictor.
    Plain -O2, no flags of this CPU: the library must load wherever the model is served on x86-64 Linux."""
    compiler = shutil.which(os.environ.get("CC", "cc"))
    if compiler is None:
        log.warning("no C compiler (cc): the fast model walks its trees with LightGBM's slower predictor")
        return None
    source = shutil.copyfile(WALKER_SOURCE, directory / WALKER_SOURCE.name)
    command = [compiler, "-O2", "-shared", "-fPIC", "-o", str(directory / WALKER_LIBRARY), str(source)]
    built = subprocess.run(command, capture_output=True, text=True)
    if built.returncode != 0:
        log.warning("the walker did not build (%s): LightGBM's predictor walks the trees", built.stderr.strip()[-300:])
        return None
    return WALKER_LIBRARY


class Flavor:
    """What mlflow.models.Model.log calls: the sklearn flavor saved as MLflow saves it, then the compiled
    spec and the runtime added, and the python_function flavor pointed at the runtime."""

    def __init__(self, compiled: tuple[dict, dict[str, str]]) -> None:
        self.compiled = compiled

    def save_model(self, path, mlflow_model, **kwargs) -> None:
        import lightgbm
        import mlflow
        from mlflow import pyfunc

        path = Path(path)
        # LightGBM runs every compiled model, whatever its members: the environment must have it (added to the
        # requirements given, train.model_requirements, or to those MLflow infers when none are given)
        lightgbm_pin = f"lightgbm=={lightgbm.__version__}"
        given = kwargs.pop("pip_requirements", None)
        requirements = (
            {"extra_pip_requirements": [lightgbm_pin]}
            if given is None
            else {"pip_requirements": [*given, lightgbm_pin]}
        )
        mlflow.sklearn.save_model(path=str(path), mlflow_model=mlflow_model, **requirements, **kwargs)
        write_spec(path / SPEC_DIR, *self.compiled)
        (path / "code").mkdir(exist_ok=True)
        shutil.copyfile(runtime.__file__, path / "code" / f"{RUNTIME_MODULE}.py")
        sklearn_pyfunc = mlflow_model.flavors.pop(pyfunc.FLAVOR_NAME)
        pyfunc.add_to_model(
            mlflow_model,
            loader_module=RUNTIME_MODULE,
            data=SPEC_DIR,
            code="code",
            conda_env=sklearn_pyfunc.get(pyfunc.ENV, {}).get("conda", "conda.yaml"),
            python_env=sklearn_pyfunc.get(pyfunc.ENV, {}).get("virtualenv", "python_env.yaml"),
        )
        mlflow_model.save(str(path / "MLmodel"))
