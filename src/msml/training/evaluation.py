"""Metrics, plots and sliced metrics — shared by training and tuning."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: no display on servers and CI
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve

from msml.config import DECISION_THRESHOLD

# The metric names sklearn autolog logs for a classifier, without their "training_" prefix.
AUTOLOG_METRICS = ("accuracy_score", "precision_score", "recall_score", "f1_score", "log_loss", "roc_auc", "score")


def classifier_metrics(estimator, X, y, prefix: str) -> dict[str, float]:
    """The classifier metrics exactly as MLflow 2.19's sklearn autolog computes them.

    Autolog passes pos_label=None, so precision/recall/F1 are the *weighted* averages over both
    classes (not the positive class alone); `score` is the estimator's own `score(X, y)`.
    """
    y_pred = estimator.predict(X)
    proba = estimator.predict_proba(X)
    values = {
        "accuracy_score": skm.accuracy_score(y, y_pred, normalize=True),
        "precision_score": skm.precision_score(y, y_pred, average="weighted"),
        "recall_score": skm.recall_score(y, y_pred, average="weighted"),
        "f1_score": skm.f1_score(y, y_pred, average="weighted"),
        "log_loss": skm.log_loss(y, proba),
        "roc_auc": skm.roc_auc_score(y, proba[:, 1], average="weighted", multi_class="ovo"),
        "score": estimator.score(X, y),
    }
    return {f"{prefix}{name}": float(values[name]) for name in AUTOLOG_METRICS}


def positive_class_metrics(y, proba: np.ndarray, prefix: str) -> dict[str, float]:
    """Metrics about the positive class (what the course and the promotion gate read)."""
    y_pred = (proba >= DECISION_THRESHOLD).astype(int)
    return {
        f"{prefix}roc_auc": float(skm.roc_auc_score(y, proba)),
        f"{prefix}accuracy": float(skm.accuracy_score(y, y_pred)),
        f"{prefix}precision_pos": float(skm.precision_score(y, y_pred, zero_division=0)),
        f"{prefix}recall_pos": float(skm.recall_score(y, y_pred)),
        f"{prefix}f1_pos": float(skm.f1_score(y, y_pred)),
        f"{prefix}log_loss": float(skm.log_loss(y, proba)),
        f"{prefix}average_precision": float(skm.average_precision_score(y, proba)),
        f"{prefix}brier": float(skm.brier_score_loss(y, proba)),
        f"{prefix}ece": expected_calibration_error(y, proba),
    }


def expected_calibration_error(y, proba: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error: the row-weighted mean |observed positive rate − mean predicted probability|
    over `bins` equal-width probability bins."""
    y = np.asarray(y, dtype=float)
    proba = np.asarray(proba, dtype=float)
    which = np.minimum((proba * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            total += mask.sum() * abs(y[mask].mean() - proba[mask].mean())
    return float(total / len(y))


def calibration_metrics(y, proba: np.ndarray) -> dict[str, float]:
    """Calibration quality of probabilities for the positive class: log loss, Brier score and ECE."""
    return {
        "log_loss": float(skm.log_loss(y, proba)),
        "brier": float(skm.brier_score_loss(y, proba)),
        "ece": expected_calibration_error(y, proba),
    }


def metrics_by_group(y, proba: np.ndarray, groups: pd.DataFrame) -> dict[str, dict[str, dict[str, float]]]:
    """Per-group metrics for each sensitive column (fairness slices)."""
    y = np.asarray(y)
    y_pred = (proba >= DECISION_THRESHOLD).astype(int)
    result: dict[str, dict[str, dict[str, float]]] = {}
    for column in groups.columns:
        values = groups[column].fillna("(missing)").to_numpy()
        result[column] = {}
        for group in sorted(set(values)):
            mask = values == group
            both_classes = len(set(y[mask])) == 2
            result[column][str(group)] = {
                "rows": int(mask.sum()),
                "positive_rate_true": float(y[mask].mean()),
                "positive_rate_predicted": float(y_pred[mask].mean()),
                "accuracy": float(skm.accuracy_score(y[mask], y_pred[mask])),
                "roc_auc": float(skm.roc_auc_score(y[mask], proba[mask])) if both_classes else None,
            }
    return result


def write_evaluation_artifacts(
    y, proba: np.ndarray, labels: tuple[str, str], groups: pd.DataFrame, out: Path
) -> list[Path]:
    """Plots and reports autolog does not make, for the test split. Returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    y = np.asarray(y)
    y_pred = (proba >= DECISION_THRESHOLD).astype(int)
    files = []

    fig, ax = plt.subplots(figsize=(5, 4.5))
    skm.ConfusionMatrixDisplay.from_predictions(y, y_pred, display_labels=list(labels), ax=ax, colorbar=False)
    ax.set_title("Confusion matrix (test split)")
    files.append(_save(fig, out / "confusion_matrix.png"))

    fig, ax = plt.subplots(figsize=(5, 4.5))
    skm.RocCurveDisplay.from_predictions(y, proba, ax=ax, name="model")
    ax.plot([0, 1], [0, 1], "--", color="grey")
    ax.set_title("ROC curve (test split)")
    files.append(_save(fig, out / "roc_curve.png"))

    fig, ax = plt.subplots(figsize=(5, 4.5))
    skm.PrecisionRecallDisplay.from_predictions(y, proba, ax=ax, name="model")
    ax.set_title("Precision-recall curve (test split)")
    files.append(_save(fig, out / "pr_curve.png"))

    fig, ax = plt.subplots(figsize=(5, 4.5))
    observed, predicted = calibration_curve(y, proba, n_bins=10, strategy="quantile")
    ax.plot(predicted, observed, "o-", label="model")
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect")
    ax.set(xlabel="mean predicted probability", ylabel="observed positive rate", title="Calibration (test)")
    ax.legend()
    files.append(_save(fig, out / "calibration_curve.png"))

    report = skm.classification_report(y, y_pred, target_names=list(labels), output_dict=True)
    files.append(_write_json(report, out / "classification_report.json"))
    files.append(_write_json(metrics_by_group(y, proba, groups), out / "metrics_by_group.json"))
    return files


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _write_json(data, path: Path) -> Path:
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path
