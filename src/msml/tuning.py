"""Hyper-parameter tuning with Optuna and manual MLflow logging (the course's `modelling_tuning.py`).

Stratified cross-validation on the train split chooses the parameters; the test split is only
scored at the end. One parent run, one nested child run per trial; autolog stays off and the
parent logs the same `training_*` metrics autolog would, computed the way autolog computes them.
"""

from __future__ import annotations

import csv
import os
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import mlflow
import optuna
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.model_selection import StratifiedKFold, cross_val_score

from msml import tuning_workers as workers_mod
from msml.config import DEFAULT_TRIALS, Settings
from msml.evaluation import classifier_metrics, write_evaluation_artifacts
from msml.preprocessing import TRAIN_FILE
from msml.training import RunSummary, load_data, log_model, log_training_dataset, test_metrics
from msml.tracking import check_server, setup_tracking

DEFAULT_CV_FOLDS = 3


def suggest_params(trial: optuna.Trial) -> dict:
    """The search space for HistGradientBoostingClassifier."""
    return {
        "learning_rate": trial.suggest_float("learning_rate", 0.02, 0.2, log=True),
        "max_iter": trial.suggest_int("max_iter", 100, 400, step=50),
        "max_leaf_nodes": trial.suggest_int("max_leaf_nodes", 8, 64, log=True),
        "min_samples_leaf": trial.suggest_int("min_samples_leaf", 10, 120, log=True),
        "l2_regularization": trial.suggest_float("l2_regularization", 1e-3, 10.0, log=True),
        "max_features": trial.suggest_float("max_features", 0.2, 1.0),
    }


def make_estimator(params: dict, seed: int) -> HistGradientBoostingClassifier:
    # early stopping off: the iteration count is a tuned parameter, and results stay reproducible
    return HistGradientBoostingClassifier(**params, early_stopping=False, random_state=seed)


def objective(trial: optuna.Trial, X, y, folds, seed: int) -> float:
    """One trial inside its (nested) run: suggest, log the params, cross-validate, log and return the CV ROC-AUC."""
    params = suggest_params(trial)
    mlflow.log_params(params)
    scores = cross_val_score(make_estimator(params, seed), X, y, cv=folds, scoring="roc_auc")
    mlflow.log_metrics({"cv_roc_auc_mean": scores.mean(), "cv_roc_auc_std": scores.std()})
    return float(scores.mean())


def tune(
    settings: Settings,
    n_trials: int = DEFAULT_TRIALS,
    seed: int = 42,
    cv_folds: int = DEFAULT_CV_FOLDS,
    run_info: str | Path | None = None,
    progress=print,
    storage: str | None = None,
    study_name: str | None = None,
    workers: int = 1,
    join: bool = False,
) -> RunSummary | None:
    """Search, refit the best parameters on the whole train split, evaluate on test, log everything.

    `storage` (an Optuna RDB URL) keeps the study in a database: with `postgresql://…`, `workers`
    processes here and any `msml tune` started elsewhere with the same storage and `study_name`
    share its trials (msml.tuning_workers). When the study already exists this process joins it
    as a worker and returns None: the process that created it refits and logs the model. With
    `join` it never creates the study: it waits for it (worker pods started beside the creator).
    """
    if workers > 1 and not workers_mod.is_distributed(storage):
        raise workers_mod.TuningError("--workers above 1 needs --storage postgresql://…: an in-memory or SQLite "
                                      "study serves one process")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rdb = workers_mod.open_storage(storage)
    study_name = study_name or f"{settings.model_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    existing = workers_mod.find_study(rdb, study_name, wait=workers_mod.JOIN_WAIT_SECONDS if join else 0.0)
    if join and existing is None:
        raise workers_mod.TuningError(f"--join: no study {study_name!r} in the storage after "
                                      f"{workers_mod.JOIN_WAIT_SECONDS:.0f} s; start its creator first")
    if existing is not None:
        _join(settings, existing, storage, workers, progress)
        return None

    data = load_data(settings)
    contract = settings.contract
    X, y = data.splits.X_train, data.splits.y_train
    experiment_id = setup_tracking(settings)
    mlflow.sklearn.autolog(disable=True)
    folds = StratifiedKFold(n_splits=cv_folds, shuffle=True, random_state=seed)
    try:
        study = optuna.create_study(storage=rdb, study_name=study_name, direction="maximize",
                                    sampler=optuna.samplers.TPESampler(seed=seed))
    except optuna.exceptions.DuplicatedStudyError:
        raise workers_mod.TuningError(f"study {study_name!r} was created by another process at the same moment; "
                                      "start workers with --join") from None
    started = time.perf_counter()

    with mlflow.start_run(run_name="tuning-hgb") as parent:
        mlflow.set_tags({"msml.stage": "tuning", "msml.contract": contract.name, "msml.optuna_study": study_name})
        mlflow.log_params({"n_trials": n_trials, "cv_folds": cv_folds, "seed": seed, "sampler": "TPE",
                           "workers": workers})
        spec = workers_mod.StudySpec(parent.info.run_id, experiment_id, n_trials, cv_folds, seed,
                                     workers_mod.file_sha256(data.train_path))
        spec.save(study)
        log_training_dataset(data, contract)
        if workers == 1:
            workers_mod.work(study, spec, lambda trial: objective(trial, X, y, folds, seed), storage, progress)
        else:
            command = workers_mod.worker_command(storage, study_name, settings.processed_dir, contract.path)
            workers_mod.run_workers(workers, command, settings.tracking_uri, progress)
        workers_mod.wait_for_trials(study, n_trials, progress)
        search_seconds = time.perf_counter() - started

        progress("  refitting the best parameters on the whole train split")
        best = make_estimator(study.best_params, seed).fit(X, y)
        mlflow.log_params({f"best_{k}": v for k, v in study.best_params.items()})
        metrics = {
            **classifier_metrics(best, X, y, prefix="training_"),  # the names autolog uses
            **test_metrics(best, data),
            "best_cv_roc_auc": study.best_value,
            "search_seconds": search_seconds,
        }
        mlflow.log_metrics(metrics)

        with TemporaryDirectory() as tmp:
            out = Path(tmp)
            proba = best.predict_proba(data.splits.X_test)[:, 1]
            groups = data.test_clean[list(contract.sensitive)]
            write_evaluation_artifacts(data.splits.y_test, proba, contract.labels, groups, out / "evaluation")
            _write_trials(study, out / "tuning" / "trials.csv")
            _plot_history(study, out / "tuning" / "optimization_history.png")
            (out / "model_card.md").write_text(_model_card(settings, study, metrics, n_trials, cv_folds, seed))
            mlflow.log_artifacts(str(out))
        model_uri = log_model(best, data, contract)

    summary = RunSummary(parent.info.run_id, model_uri, experiment_id,
                         mlflow.get_run(parent.info.run_id).data.metrics)
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
        raise workers_mod.TuningError(f"{train_path} differs from the training file study {study.study_name!r} "
                                      "was created with: preprocess the same raw data with the same seed")
    check_server(settings.tracking_uri)
    mlflow.set_tracking_uri(settings.tracking_uri)
    progress(f"joining study {study.study_name!r} (parent run {spec.parent_run_id}, {spec.n_trials} trials)")
    if workers > 1:
        command = workers_mod.worker_command(storage, study.study_name, settings.processed_dir, settings.contract.path)
        workers_mod.run_workers(workers, command, settings.tracking_uri, progress)
        return
    mlflow.sklearn.autolog(disable=True)
    # each worker samples with its own random state: one seed in every worker would repeat the same trials
    study.sampler = optuna.samplers.TPESampler(constant_liar=True)
    data = load_data(settings)
    X, y = data.splits.X_train, data.splits.y_train
    folds = StratifiedKFold(n_splits=spec.cv_folds, shuffle=True, random_state=spec.seed)
    done = workers_mod.work(study, spec, lambda trial: objective(trial, X, y, folds, spec.seed), storage, progress)
    progress(f"  worker {os.getpid()} ran {done} trial(s); the study's creator refits the best one")


def _write_trials(study: optuna.Study, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    names = sorted(study.best_params)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["trial", "cv_roc_auc", *names])
        for t in study.trials:
            writer.writerow([t.number, t.value, *(t.params.get(n) for n in names)])


def _plot_history(study: optuna.Study, path: Path) -> None:
    import matplotlib.pyplot as plt

    values = [t.value for t in study.trials]
    running = [max(values[: i + 1]) for i in range(len(values))]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(values, "o", alpha=0.5, label="trial")
    ax.plot(running, "-", label="best so far")
    ax.set(xlabel="trial", ylabel="CV ROC-AUC (train split)", title="Optuna optimisation history")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _model_card(settings: Settings, study, metrics: dict, n_trials: int, cv_folds: int, seed: int) -> str:
    contract = settings.contract
    lines = [
        f"# Model card — {settings.model_name}",
        "",
        f"**Task**: predict `{contract.target}` = `{contract.positive}` from {len(contract.features)} features "
        f"({contract.title}; source {contract.source}; licence {contract.licence}).",
        "**Model**: scikit-learn Pipeline = fitted transformer (median impute + standard scale numerics, "
        "constant impute + one-hot categories, fitted on the train split only) → HistGradientBoostingClassifier.",
        f"**Selection**: Optuna TPE (seed {seed}), {n_trials} trials, {cv_folds}-fold stratified CV ROC-AUC on "
        "the train split only; the test split was scored once, after selection.",
        "",
        "## Best parameters",
        "",
        *[f"- `{k}` = {v}" for k, v in sorted(study.best_params.items())],
        "",
        "## Test-split metrics",
        "",
        *[f"- {k}: {v:.4f}" for k, v in sorted(metrics.items()) if k.startswith("test_")],
        "",
        "## Caveats",
        "",
        f"- Per-group metrics for {', '.join(contract.sensitive)} are in `evaluation/metrics_by_group.json`; "
        "census data carries historical bias, so review them before any decision about people.",
        "- Predictions are probabilities of the positive class; the class uses a 0.5 threshold.",
    ]
    return "\n".join(lines) + "\n"
