"""Hyper-parameter tuning with Optuna and manual MLflow logging (the course's `modelling_tuning.py`).

Stratified cross-validation on the train split chooses the model family (HistGradientBoosting or
LightGBM), its parameters, whether to average the best of each family, and whether to calibrate;
the test split is only scored at the end. One parent run, one nested child run per trial; autolog
stays off and the parent logs the same `training_*` metrics autolog would, computed the way autolog
computes them.

Both families read categories natively: the model's transformer keeps numbers as they are and turns
each category into an ordinal code (missing and unknown → NaN), and the estimator is told which
columns are categorical. Why LightGBM as the second family (measured on this split, issue 15): near-
default LightGBM reached test ROC-AUC 0.9268 in ~2 s per fit from a 3.5 MB wheel; CatBoost 0.9272 in
50–89 s per fit (a ~100 MB wheel), which leaves no room for a search within 3 minutes on 2 cores.

Its length (~530 lines): the search space, the objective, the refit of the best trial, the ensemble of the
families and the calibration choice read one another's results; each is a short function, kept in search order.
"""

from __future__ import annotations

import csv
import os
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import mlflow
import numpy as np
import optuna
import pandas as pd
from sklearn.calibration import CalibratedClassifierCV
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier, VotingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss, roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, OrdinalEncoder

from msml.config import (
    DECISION_THRESHOLD,
    DEFAULT_HEARTBEAT_SECONDS,
    DEFAULT_SEED,
    DEFAULT_TIME_BUDGET,
    DEFAULT_TRIALS,
    Settings,
)
from msml.data.contract import Contract
from msml.data.preprocessing import TRAIN_FILE, encode_target
from msml.errors import DataError, PipelineError
from msml.tracking.client import check_server, setup_tracking
from msml.training import workers as workers_mod
from msml.training.evaluation import (
    calibration_metrics,
    classifier_metrics,
    positive_class_metrics,
    write_evaluation_artifacts,
)
from msml.training.train import RunSummary, load_data, log_model, log_training_dataset

DEFAULT_CV_FOLDS = 3
FAMILY_NAMES = {"hgb": "HistGradientBoosting", "lightgbm": "LightGBM"}  # family key -> the estimator it searches
FAMILIES = tuple(FAMILY_NAMES)
ENSEMBLE = "ensemble"  # the mean probability of the best trial of each family
# Calibration is applied only when it lowers the CV log loss by at least this much (noise on ~39k rows).
CALIBRATION_MIN_GAIN = 1e-3


def make_pruner() -> optuna.pruners.BasePruner:
    """A trial whose first folds are below the median of earlier trials at the same fold stops there."""
    return optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=0)


def native_transformer(contract: Contract) -> Pipeline:
    """The unfitted transformer of the tree families: numbers as they are, categories as pandas categoricals.

    Each category becomes its position in the contract's list (missing and unknown → NaN) with a fixed
    categorical dtype, so both families find the categorical columns from the dtype (HGB `from_dtype`,
    LightGBM `auto`) and the codes never depend on which categories a batch happens to contain. Only
    sklearn and pandas callables: the pickled model needs no msml code.
    """
    cats = contract.categorical_features
    columns = ColumnTransformer(
        # numbers as float64 whatever the rows' dtype (JSON rows with a null arrive as object columns)
        [
            ("num", FunctionTransformer(pd.DataFrame.astype, kw_args={"dtype": np.float64}), contract.numeric_features),
            (
                "cat",
                OrdinalEncoder(
                    categories=[list(contract.column(c).values) for c in cats],
                    handle_unknown="use_encoded_value",
                    unknown_value=np.nan,
                    dtype=np.float64,
                ),
                cats,
            ),
        ],
        verbose_feature_names_out=False,
    )
    missing_to_nan = FunctionTransformer(pd.DataFrame.where, kw_args={"cond": pd.notna, "other": np.nan})
    as_categories = FunctionTransformer(
        pd.DataFrame.astype,
        kw_args={"dtype": {c: pd.CategoricalDtype(list(range(len(contract.column(c).values)))) for c in cats}},
    )
    return Pipeline(
        [("missing_to_nan", missing_to_nan), ("columns", columns), ("as_categories", as_categories)]
    ).set_output(transform="pandas")


def suggest_params(trial: optuna.Trial) -> dict:
    """The search space: the family, then that family's parameters (`family` is one of FAMILIES)."""
    family = trial.suggest_categorical("family", FAMILIES)
    # one Optuna parameter across both families (the same distribution under one name), drawn before the rest
    learning_rate = trial.suggest_float("learning_rate", 0.02, 0.2, log=True)
    if family == "hgb":
        return {
            "family": family,
            "learning_rate": learning_rate,
            "max_iter": trial.suggest_int("max_iter", 100, 400, step=50),
            "max_leaf_nodes": trial.suggest_int("max_leaf_nodes", 8, 64, log=True),
            "min_samples_leaf": trial.suggest_int("min_samples_leaf", 10, 120, log=True),
            "l2_regularization": trial.suggest_float("l2_regularization", 1e-3, 10.0, log=True),
            "max_features": trial.suggest_float("max_features", 0.2, 1.0),
        }
    return {
        "family": family,
        "learning_rate": learning_rate,
        "n_estimators": trial.suggest_int("n_estimators", 100, 800, step=50),
        "num_leaves": trial.suggest_int("num_leaves", 8, 64, log=True),
        "min_child_samples": trial.suggest_int("min_child_samples", 10, 120, log=True),
        "reg_lambda": trial.suggest_float("reg_lambda", 1e-3, 10.0, log=True),
        "colsample_bytree": trial.suggest_float("colsample_bytree", 0.3, 1.0),
        "subsample": trial.suggest_float("subsample", 0.5, 1.0),
        "cat_smooth": trial.suggest_float("cat_smooth", 1.0, 50.0, log=True),
    }


def estimated_cost(params: dict) -> float:
    """Relative fit cost of a parameter set (trees × leaves), for picking cheap trials in tests."""
    if params["family"] == "hgb":
        return params["max_iter"] * params["max_leaf_nodes"] * params["max_features"]
    return params["n_estimators"] * params["num_leaves"] * params["colsample_bytree"]


def make_estimator(params: dict, seed: int):
    """The estimator of one parameter set; categorical columns are found from their pandas dtype."""
    params = dict(params)
    family = params.pop("family", "hgb")
    if family == "hgb":
        # early stopping off: the iteration count is a tuned parameter, and results stay reproducible
        return HistGradientBoostingClassifier(
            **params, categorical_features="from_dtype", early_stopping=False, random_state=seed
        )
    if family == "lightgbm":
        from lightgbm import LGBMClassifier

        # subsample_freq=1: bagging every iteration (LightGBM ignores `subsample` otherwise); deterministic and
        # row-wise histograms: the same seed gives the same model on any thread count
        return LGBMClassifier(
            **params, subsample_freq=1, random_state=seed, deterministic=True, force_row_wise=True, verbose=-1
        )
    raise ValueError(f"unknown model family {family!r}; expected one of {', '.join(FAMILIES)}")


def make_model(choice: dict, seed: int, folds) -> object:
    """The final estimator: one family, or the soft vote of the best of each; calibrated when chosen."""
    if choice["family"] == ENSEMBLE:
        model = VotingClassifier([(f, make_estimator(p, seed)) for f, p in choice["members"].items()], voting="soft")
    else:
        model = make_estimator(choice["params"], seed)
    if choice["calibration"] != "none":
        model = CalibratedClassifierCV(model, method=choice["calibration"], cv=folds)
    return model


def fold_scores(y: np.ndarray, proba: np.ndarray, folds, X) -> np.ndarray:
    """ROC-AUC of each CV fold's out-of-fold predictions (what cross_val_score reports)."""
    return np.array([roc_auc_score(y[test], proba[test]) for _, test in folds.split(X, y)])


def choose_calibration(y: np.ndarray, proba: np.ndarray, folds, X) -> tuple[str, dict[str, float]]:
    """Does a sigmoid or isotonic map, fitted on other folds' out-of-fold predictions, lower the log loss?

    Returns the choice ("none", "sigmoid" or "isotonic") and the CV log loss of each option.
    """
    from sklearn.isotonic import IsotonicRegression

    clipped = np.clip(proba, 1e-6, 1 - 1e-6)
    logit = np.log(clipped / (1 - clipped)).reshape(-1, 1)
    losses = {"none": log_loss(y, clipped)}
    sigmoid = cross_val_predict(LogisticRegression(), logit, y, cv=folds, method="predict_proba")[:, 1]
    losses["sigmoid"] = log_loss(y, sigmoid)
    isotonic = np.zeros_like(clipped)
    for train, test in folds.split(X, y):
        iso = IsotonicRegression(out_of_bounds="clip", y_min=1e-6, y_max=1 - 1e-6).fit(clipped[train], y[train])
        isotonic[test] = iso.predict(clipped[test])
    losses["isotonic"] = log_loss(y, isotonic)
    best = min(losses, key=losses.get)
    if losses["none"] - losses[best] < CALIBRATION_MIN_GAIN:
        best = "none"
    return best, losses


def search_data(data, contract: Contract):
    """The transformer (fitted on the train split) and the train/test matrices and targets the search uses."""
    transformer = native_transformer(contract).fit(data.train_clean[contract.features])
    X = transformer.transform(data.train_clean[contract.features])
    X_test = transformer.transform(data.test_clean[contract.features])
    y = encode_target(data.train_clean[contract.target], contract)
    y_test = encode_target(data.test_clean[contract.target], contract)
    return transformer, X, y, X_test, y_test


def out_of_fold_proba(
    params: dict, X, y: np.ndarray, fold_indices, seed: int, trial: optuna.Trial | None = None
) -> np.ndarray:
    """Out-of-fold P(positive) of one parameter set; with `trial`, each fold's running CV ROC-AUC is reported
    and the trial is pruned (optuna.TrialPruned) when the pruner says so."""
    proba = np.zeros(len(y))
    scores = []
    for step, (train, test) in enumerate(fold_indices):
        model = make_estimator(params, seed).fit(X.iloc[train], y[train])
        proba[test] = model.predict_proba(X.iloc[test])[:, 1]
        scores.append(roc_auc_score(y[test], proba[test]))
        if trial is not None:
            trial.report(float(np.mean(scores)), step)
            if step < len(fold_indices) - 1 and trial.should_prune():
                mlflow.log_metrics({"cv_roc_auc_partial": float(np.mean(scores)), "cv_folds_done": step + 1})
                mlflow.set_tag("optuna.state", "pruned")
                raise optuna.TrialPruned(
                    f"{params['family']} pruned after fold {step + 1} (cv roc_auc {np.mean(scores):.4f})"
                )
    return proba


def objective(
    trial: optuna.Trial, X, y: np.ndarray, fold_indices, seed: int, out_of_fold: dict[int, np.ndarray] | None = None
) -> float:
    """One trial inside its nested run (whichever process runs it): suggest the family and its parameters,
    cross-validate with pruning, log, return the CV ROC-AUC. `out_of_fold` collects the predictions."""
    params = suggest_params(trial)
    started = time.perf_counter()
    mlflow.set_tag("msml.family", params["family"])
    mlflow.log_params(params)
    proba = out_of_fold_proba(params, X, y, fold_indices, seed, trial)
    scores = np.array([roc_auc_score(y[test], proba[test]) for _, test in fold_indices])
    mlflow.log_metrics(
        {
            "cv_roc_auc_mean": scores.mean(),
            "cv_roc_auc_std": scores.std(),
            "cv_log_loss": log_loss(y, proba),
            "fit_seconds": time.perf_counter() - started,
        }
    )
    if out_of_fold is not None:
        out_of_fold[trial.number] = proba
    return float(scores.mean())


def tune(
    settings: Settings,
    n_trials: int = DEFAULT_TRIALS,
    seed: int = DEFAULT_SEED,
    cv_folds: int = DEFAULT_CV_FOLDS,
    run_info: str | Path | None = None,
    progress=print,
    time_budget: float | None = DEFAULT_TIME_BUDGET,
    storage: str | None = None,
    study_name: str | None = None,
    workers: int = 1,
    join: bool = False,
    heartbeat_seconds: int = DEFAULT_HEARTBEAT_SECONDS,
) -> RunSummary | None:
    """Search families and parameters, pick the best (or the mean of each family's best) by CV ROC-AUC,
    calibrate if that lowers CV log loss, refit on the whole train split, evaluate on test, log everything.

    `time_budget` (seconds, None for none) stops this process starting trials on a slow machine; with it
    unreached the result depends only on `seed`. `storage` (an Optuna RDB URL) keeps the study in a database:
    with `postgresql://…`, `workers` processes here and any `msml tune` started elsewhere with the same storage
    and `study_name` share its trials (msml.training.workers). When the study already exists this process joins it
    as a worker and returns None: the process that created it refits and logs the model. With `join` it never
    creates the study: it waits for it (worker pods started beside the creator). On a shared study every running
    trial beats every `heartbeat_seconds` (the creator's value, for all workers): one whose worker died is failed,
    its MLflow run marked KILLED, and its parameters retried by another worker.
    """
    if workers > 1 and not workers_mod.is_distributed(storage):
        raise DataError(  # a usage mistake, not a failed pipeline step
            "--workers above 1 needs --storage postgresql://…: an in-memory or SQLite study serves one process"
        )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rdb = workers_mod.open_storage(storage)
    study_name = study_name or f"{settings.model_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    existing = workers_mod.find_study(rdb, study_name, wait=workers_mod.JOIN_WAIT_SECONDS if join else 0.0)
    if join and existing is None:
        raise workers_mod.TuningError(
            f"--join: no study {study_name!r} in the storage after "
            f"{workers_mod.JOIN_WAIT_SECONDS:.0f} s; start its creator first"
        )
    if existing is not None:
        _join(settings, existing, storage, workers, progress)
        return None

    data = load_data(settings)
    contract = settings.contract
    transformer, X, y, X_test, y_test = search_data(data, contract)
    experiment_id = setup_tracking(settings)
    mlflow.sklearn.autolog(disable=True)
    folds = StratifiedKFold(n_splits=cv_folds, shuffle=True, random_state=seed)
    fold_indices = list(folds.split(X, y))
    try:
        study = optuna.create_study(
            storage=rdb,
            study_name=study_name,
            direction="maximize",
            sampler=optuna.samplers.TPESampler(seed=seed),
            pruner=make_pruner(),
        )
    except optuna.exceptions.DuplicatedStudyError:
        raise workers_mod.TuningError(
            f"study {study_name!r} was created by another process at the same moment; start workers with --join"
        ) from None
    started = time.perf_counter()
    out_of_fold: dict[int, np.ndarray] = {}  # trial number → out-of-fold P(positive), this process's trials

    with mlflow.start_run(run_name="tuning") as parent:
        mlflow.set_tags({"msml.stage": "tuning", "msml.data.contract": contract.name, "msml.optuna_study": study_name})
        mlflow.log_params(
            {
                "n_trials": n_trials,
                "cv_folds": cv_folds,
                "seed": seed,
                "sampler": "TPE",
                "pruner": "median",
                "families": ",".join(FAMILIES),
                "time_budget_s": time_budget,
                "workers": workers,
            }
        )
        spec = workers_mod.StudySpec(
            parent.info.run_id,
            experiment_id,
            n_trials,
            cv_folds,
            seed,
            workers_mod.file_sha256(data.train_path),
            heartbeat_seconds,
        )
        spec.save(study)
        study, beating = workers_mod.with_heartbeat(study, storage, spec, study.sampler, study.pruner, progress)
        log_training_dataset(data, contract)
        run_here = lambda deadline=None: workers_mod.work(  # noqa: E731
            study,
            spec,
            lambda trial: objective(trial, X, y, fold_indices, seed, out_of_fold),
            storage,
            progress,
            deadline=deadline,
            storage=beating,
        )
        if workers == 1:
            run_here(started + time_budget if time_budget else None)
        else:
            command = workers_mod.worker_command(storage, study_name, settings.processed_dir, contract.path)
            workers_mod.run_workers(workers, command, settings.tracking_uri, progress)
            run_here()  # what the workers left: a retry queued after the last of them had gone (usually nothing)
        workers_mod.wait_for_trials(study, n_trials, progress, started_only=workers == 1)
        search_seconds = time.perf_counter() - started

        choice, candidates = choose_model(study, out_of_fold, X, y, folds, seed)
        progress(
            f"  chosen: {choice['family']} (cv roc_auc {choice['cv_roc_auc']:.4f}), calibration "
            f"{choice['calibration']}; refitting on the whole train split"
        )
        best = make_model(choice, seed, folds).fit(X, y)
        mlflow.log_params({f"best_{k}": v for k, v in study.best_params.items()})
        mlflow.log_params(
            {
                "chosen_family": choice["family"],
                "calibration": choice["calibration"],
                "trials_completed": len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))),
            }
        )
        mlflow.set_tag("msml.family", choice["family"])
        proba_test = best.predict_proba(X_test)[:, 1]
        metrics = {
            **classifier_metrics(best, X, y, prefix="training_"),  # the names autolog uses
            **positive_class_metrics(y_test, proba_test, "test_"),
            **{f"cv_{k}": v for k, v in calibration_metrics(y, choice["proba"]).items()},
            "best_cv_roc_auc": choice["cv_roc_auc"],
            "search_seconds": search_seconds,
            **{f"cv_roc_auc_{name}": c["cv_roc_auc"] for name, c in candidates.items()},
            **{f"cv_log_loss_calibration_{k}": v for k, v in choice["calibration_losses"].items()},
        }
        mlflow.log_metrics(metrics)

        with TemporaryDirectory() as tmp:
            out = Path(tmp)
            groups = data.test_clean[list(contract.sensitive)]
            write_evaluation_artifacts(y_test, proba_test, contract.labels, groups, out / "evaluation")
            _write_trials(study, out / "tuning" / "trials.csv")
            _plot_history(study, out / "tuning" / "optimization_history.png")
            (out / "model_card.md").write_text(_model_card(settings, choice, metrics, n_trials, cv_folds, seed))
            mlflow.log_artifacts(str(out))
        model_uri = log_model(best, data, contract, transformer=transformer)

    summary = RunSummary(parent.info.run_id, model_uri, experiment_id, mlflow.get_run(parent.info.run_id).data.metrics)
    if run_info:
        summary.write(run_info)
    return summary


def _join(settings: Settings, study: optuna.Study, storage: str, workers: int, progress) -> None:
    """Work on a study another `msml tune` created: its trial budget, folds, seed and parent run."""
    spec = workers_mod.StudySpec.load(study)
    train_path = settings.processed_dir / TRAIN_FILE
    if not train_path.is_file():
        raise workers_mod.TuningError(f"{train_path} not found: run `msml preprocess` (or pass --data) first")
    if workers_mod.file_sha256(train_path) != spec.train_sha256:
        raise workers_mod.TuningError(
            f"{train_path} differs from the training file study {study.study_name!r} "
            "was created with: preprocess the same raw data with the same seed"
        )
    check_server(settings.tracking_uri)
    mlflow.set_tracking_uri(settings.tracking_uri)
    progress(f"joining study {study.study_name!r} (parent run {spec.parent_run_id}, {spec.n_trials} trials)")
    if workers > 1:
        command = workers_mod.worker_command(storage, study.study_name, settings.processed_dir, settings.contract.path)
        workers_mod.run_workers(workers, command, settings.tracking_uri, progress)
        return
    mlflow.sklearn.autolog(disable=True)
    # each worker samples with its own random state: one seed in every worker would repeat the same trials
    sampler = optuna.samplers.TPESampler(constant_liar=True)
    study, beating = workers_mod.with_heartbeat(study, storage, spec, sampler, make_pruner(), progress)
    _, X, y, _, _ = search_data(load_data(settings), settings.contract)
    folds = StratifiedKFold(n_splits=spec.cv_folds, shuffle=True, random_state=spec.seed)
    fold_indices = list(folds.split(X, y))
    done = workers_mod.work(
        study, spec, lambda trial: objective(trial, X, y, fold_indices, spec.seed), storage, progress, storage=beating
    )
    progress(f"  worker {os.getpid()} ran {done} trial(s); the study's creator refits the best one")


def choose_model(
    study: optuna.Study, out_of_fold: dict[int, np.ndarray], X, y: np.ndarray, folds, seed: int
) -> tuple[dict, dict[str, dict]]:
    """The candidates by CV ROC-AUC (mean over folds of out-of-fold predictions): the best completed trial of
    each family, and the mean of their probabilities when more than one family completed. Returns the chosen
    one (family, params or members, cv_roc_auc, out-of-fold proba, calibration) and every candidate.

    A trial another worker ran has its out-of-fold predictions recomputed here (same folds and seed: the same
    numbers), once per family's best.
    """
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    fold_indices = list(folds.split(X, y))
    if not done:
        raise PipelineError("no tuning trial completed within the time budget: raise --n-trials or the budget")
    candidates: dict[str, dict] = {}
    for family in FAMILIES:
        trials = [t for t in done if t.params["family"] == family]
        if trials:
            t = max(trials, key=lambda t: t.value)
            params = {"family": family, **_family_params(t.params)}
            proba = out_of_fold.get(t.number)
            if proba is None:
                proba = out_of_fold_proba(params, X, y, fold_indices, seed)
            candidates[family] = {"family": family, "params": params, "proba": proba}
    if len(candidates) > 1:
        candidates[ENSEMBLE] = {
            "family": ENSEMBLE,
            "members": {f: c["params"] for f, c in candidates.items()},
            "proba": np.mean([c["proba"] for c in candidates.values()], axis=0),
        }
    for c in candidates.values():
        c["cv_roc_auc"] = float(fold_scores(y, c["proba"], folds, X).mean())
    choice = dict(max(candidates.values(), key=lambda c: c["cv_roc_auc"]))
    choice["calibration"], choice["calibration_losses"] = choose_calibration(y, choice["proba"], folds, X)
    return choice, candidates


def _family_params(params: dict) -> dict:
    return {k: v for k, v in params.items() if k != "family"}


def _write_trials(study: optuna.Study, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    names = sorted({n for t in study.trials for n in t.params})
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["trial", "state", "cv_roc_auc", *names])
        for t in study.trials:
            writer.writerow([t.number, t.state.name.lower(), t.value, *(t.params.get(n) for n in names)])


def _plot_history(study: optuna.Study, path: Path) -> None:
    import matplotlib.pyplot as plt

    values = [t.value for t in study.trials if t.value is not None]
    running = [max(values[: i + 1]) for i in range(len(values))]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(values, "o", alpha=0.5, label="trial")
    ax.plot(running, "-", label="best so far")
    ax.set(xlabel="trial", ylabel="CV ROC-AUC (train split)", title="Optuna optimisation history")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _model_card(settings: Settings, choice: dict, metrics: dict, n_trials: int, cv_folds: int, seed: int) -> str:
    contract = settings.contract
    lines = [
        f"# Model card — {settings.model_name}",
        "",
        f"**Task**: predict `{contract.target}` = `{contract.positive}` from {len(contract.features)} features "
        f"({contract.title}; source {contract.source}; licence {contract.licence}).",
        "**Model**: scikit-learn Pipeline = fitted transformer (numbers as they are, categories as ordinal codes "
        f"with missing/unknown as NaN, fitted on the train split only) → `{choice['family']}` "
        "(HistGradientBoostingClassifier / LightGBM with native categorical splits; `ensemble` = the mean "
        f"probability of the best of each), calibration: {choice['calibration']}.",
        f"**Selection**: Optuna TPE (seed {seed}) over the family and its parameters, up to {n_trials} trials "
        f"(median pruning), {cv_folds}-fold stratified CV ROC-AUC on the train split only; the test split was "
        "scored once, after selection.",
        "",
        "## Chosen parameters",
        "",
        *[f"- `{k}` = {v}" for k, v in sorted((choice.get("params") or choice.get("members")).items())],
        "",
        "## Test-split metrics",
        "",
        *[f"- {k}: {v:.4f}" for k, v in sorted(metrics.items()) if k.startswith("test_")],
        "",
        "## Caveats",
        "",
        f"- Per-group metrics for {', '.join(contract.sensitive)} are in `evaluation/metrics_by_group.json`; "
        "census data carries historical bias, so review them before any decision about people.",
        f"- Predictions are probabilities of the positive class; the class uses a {DECISION_THRESHOLD:g} threshold.",
    ]
    return "\n".join(lines) + "\n"
