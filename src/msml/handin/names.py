"""The course's names and numbering, in one place: folders, files and evidence images as the course writes them.

Spelling is the course's ("screenshoot", "Monitoring dan Logging", "bukti"). Evidence images are numbered 1., 2.,
3. ... within each folder (`1.monitoring_<a>.jpg`, `2.monitoring_<b>.jpg`; `1.rules_<a>.jpg`, `2.notifikasi_<a>.jpg`),
their stems derived from `msml.monitoring.definitions` (panels and alerts), never a hand-typed list.
"""

from __future__ import annotations

import re

# --- the three units and the submission folder ----------------------------------------------------------------
WORKFLOW_CI = "Workflow-CI"
MEMBANGUN = "Membangun_model"
MONITORING = "Monitoring dan Logging"
SUBMIT_FILE = "SUBMIT.md"  # the ordered path to submission, at the top of the export
MISSING_FILE = "MISSING_EVIDENCE.md"
REQUIREMENTS = "requirements.txt"


def eksperimen_name(student: str) -> str:
    return f"Eksperimen_SML_{student}"


def submission_name(student: str) -> str:
    return f"SMSML_{student}"


def notebook_name(student: str) -> str:
    return f"Eksperimen_{student}.ipynb"


def automate_name(student: str) -> str:
    return f"automate_{student}.py"


def raw_dir(dataset: str) -> str:
    return f"{dataset}_raw"


def processed_dir(dataset: str) -> str:
    return f"{dataset}_preprocessing"


# --- Kriteria 2: Membangun_model/ ---------------------------------------------------------------------------
MODELLING = "modelling.py"
MODELLING_TUNING = "modelling_tuning.py"
MLFLOW_DASHBOARD = "screenshoot_dashboard.jpg"
MLFLOW_ARTIFACTS = "screenshoot_artifak.jpg"
DAGSHUB_FILE = "DagsHub.txt"

# --- Kriteria 4: Monitoring dan Logging/ --------------------------------------------------------------------
SERVING_IMAGE = "1.bukti_serving.jpg"
PROMETHEUS_YML = "2.prometheus.yml"
PROMETHEUS_RULES = "2.prometheus_rules.yml"  # the rule file 2.prometheus.yml loads, shipped beside it
RUNBOOKS = "2.alert_runbooks.md"  # what to do when each alert of 2.prometheus_rules.yml fires
EXPORTER = "3.prometheus_exporter.py"
PROMETHEUS_DIR = "4.bukti monitoring Prometheus"
GRAFANA_DIR = "5.bukti monitoring Grafana"
ALERTING_DIR = "6.bukti alerting Grafana"
INFERENCE = "7.inference.py"

# --- Kriteria 3: Workflow-CI/ ------------------------------------------------------------------------------
ARTIFACTS_BRANCH = "mlflow-artifacts"  # the branch the training workflow commits each run's artifacts to
COMMIT_ARTIFACTS = ".github/scripts/commit_artifacts.sh"

# Student and user names become folder, repository and image names.
NAME = re.compile(r"[A-Za-z0-9_-]+")


# --- evidence numbering ------------------------------------------------------------------------------------------


def numbered(stems: list[str]) -> list[str]:
    """`1.<stem>.jpg`, `2.<stem>.jpg`, ...: the course numbers the files of each folder from 1."""
    return [f"{i}.{stem}.jpg" for i, stem in enumerate(stems, start=1)]


def prometheus_stems(notified: list[str] | None = None) -> list[str]:
    """`4.bukti monitoring Prometheus/`: a graph per dashboard panel, the rules and alerts pages, then the
    Alertmanager notification of each alert key in `notified` (default: every alert)."""
    from msml.monitoring.definitions import ALERTS, PANELS

    keys = [a.key for a in ALERTS if notified is None or a.key in notified]
    return (
        [f"monitoring_{p.key}" for p in PANELS]
        + ["rules_prometheus", "alerts_prometheus"]
        + [f"notifikasi_alertmanager_{k}" for k in keys]
    )


def grafana_panel_stems() -> list[str]:
    """`5.bukti monitoring Grafana/`: one Grafana panel per dashboard metric."""
    from msml.monitoring.definitions import PANELS

    return [f"monitoring_{p.key}" for p in PANELS]


def grafana_alert_stems(alert_keys: list[str]) -> list[str]:
    """`6.bukti alerting Grafana/`: each alert's Grafana rule page, then its notification."""
    return [stem for key in alert_keys for stem in (f"rules_{key}", f"notifikasi_{key}")]
