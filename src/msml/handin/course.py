"""The course's standalone files, filled from msml's own definitions at export time.

Templates in `templates/` hold each file's code; `course_values` fills them from the data contract, the settings
and msml's definitions, so each exported file runs with PyPI packages only and still says what msml says:
the exporter's metrics are `msml.monitoring.metrics.GatewayMetrics` (names, help, labels, buckets) and its drift
code is `msml.monitoring.drift`'s own source, inlined. Parity tests run the results against msml itself.
"""

from __future__ import annotations

import inspect
import pprint
import re
from pathlib import Path

from msml.config import DECISION_THRESHOLD, DEFAULT_PORTS, DEFAULT_SEED, DEFAULT_TEST_SIZE, DEFAULT_TRIALS, Settings
from msml.errors import ExportError
from msml.handin.names import ARTIFACTS_BRANCH, EXPORTER, INFERENCE, MODELLING, MODELLING_TUNING, automate_name
from msml.handin.requirements import PYTHON

TEMPLATES = Path(__file__).parent / "templates"


def fill(text: str, values: dict[str, object]) -> str:
    """Replace every `<<key>>` in `text`; an unknown key is an error, not a silent blank."""

    def substitute(match: re.Match) -> str:
        key = match.group(1)
        if key not in values:
            raise KeyError(f"template key <<{key}>> has no value")
        return str(values[key])

    return re.sub(r"<<([\w-]+)>>", substitute, text)


def template(name: str, values: dict[str, object]) -> str:
    return fill((TEMPLATES / name).read_text(), values)


def pinned_actions(root: Path) -> dict[str, str]:
    """{action short name: `owner/name@sha # vX`} from this repository's workflows (one place pins them)."""
    pins = {}
    for path in sorted((root / ".github" / "workflows").glob("*.yml")):
        for match in re.finditer(r"uses:\s*(\S+?/(\S+?))@([0-9a-f]{40})\s*#\s*(\S+)", path.read_text()):
            full, short, sha, version = match.groups()
            pins[short] = f"{full}@{sha} # {version}"
    return pins


def template_values(settings: Settings, root: Path) -> dict[str, object]:
    from msml.ops.ci import SERVING_ENV
    from msml.ops.project import CI_TRIALS

    return {
        "student": settings.student,
        "dataset": settings.dataset,
        "experiment": settings.experiment,
        "model_name": settings.model_name,
        "image": settings.image,
        "trials": CI_TRIALS,
        "seed": DEFAULT_SEED,
        "test_size": DEFAULT_TEST_SIZE,
        "tuning_trials": DEFAULT_TRIALS,
        "threshold": DECISION_THRESHOLD,
        "gateway_port": DEFAULT_PORTS.gateway,
        "model_port": DEFAULT_PORTS.model_server,
        "mlflow_port": DEFAULT_PORTS.mlflow,
        "python": PYTHON,
        "artifacts_branch": ARTIFACTS_BRANCH,
        "serving_env": " ".join(f"{k}={v}" for k, v in SERVING_ENV.items()),
        **pinned_actions(root),
    }


def _literal(value: object) -> str:
    """Python source for a constant written into a course file (readable, one item per line when long)."""
    if not isinstance(value, dict):  # 100: room for the `NAME = ` before it within 120 columns
        return pprint.pformat(value, width=100, sort_dicts=False, compact=True)
    lines = ["{"]
    for key, item in value.items():
        head = f"    {key!r}: "
        text = pprint.pformat(item, width=114 - len(head), sort_dicts=False, compact=True)
        lines.append(head + text.replace("\n", "\n" + " " * len(head)) + ",")
    return "\n".join([*lines, "}"])


_SIGNATURE_TYPES = {"int": "long", "float": "double", "category": "string"}


def metric_definitions(measured: tuple[str, ...]) -> str:
    """prometheus_client definitions of the gateway's metrics (`msml.monitoring.metrics.GatewayMetrics`), as source.

    `measured` names the GatewayMetrics attributes the standalone exporter updates; each becomes an upper-case
    constant with the gateway's exact name, help, labels and buckets, so a rename there flows into the exporter.
    """
    from prometheus_client import Counter, Gauge, Histogram, Info

    from msml.monitoring.metrics import GatewayMetrics

    metrics = GatewayMetrics()
    lines = []
    for attr in measured:
        metric = getattr(metrics, attr, None)
        if metric is None:
            raise ExportError(f"msml.monitoring.metrics.GatewayMetrics has no metric {attr!r}: update {EXPORTER}")
        kind = next(k for k in (Counter, Histogram, Gauge, Info) if isinstance(metric, k)).__name__
        args = [repr(metric._name), repr(metric._documentation)]
        if metric._labelnames:
            args.append(repr(list(metric._labelnames)))
        if kind == "Histogram":
            args.append(f"buckets={tuple(b for b in metric._upper_bounds if b != float('inf'))!r}")
        lines.append(f"{attr.upper()} = {kind}(\n    " + ",\n    ".join([*args, "registry=REGISTRY"]) + ",\n)")
    return "\n".join(lines)


# The GatewayMetrics the standalone exporter measures from its own requests, in the order its docstring lists them.
# Left out: the gateway's replica metrics (the exporter calls one model server) and its admission refusals (the
# exporter has no queue to shed from).
EXPORTER_METRICS = (
    "requests",
    "request_seconds",
    "model_request_seconds",
    "model_errors",
    "in_flight",
    "batch_rows",
    "validation_failures",
    "rows_scored",
    "predictions",
    "probability",
    "feature_missing",
    "drift_psi",
    "drift_window_rows",
    "feedback",
    "live_accuracy",
    "model_up",
    "model_info",
)


def exported_names(attrs: tuple[str, ...] = EXPORTER_METRICS) -> dict[str, str]:
    """{name as Prometheus shows it: help} of the given GatewayMetrics (counters with `_total`, Info with `_info`)."""
    from prometheus_client import Counter, Info

    from msml.monitoring.metrics import GatewayMetrics

    metrics = GatewayMetrics()
    names = {}
    for attr in attrs:
        metric = getattr(metrics, attr)
        suffix = "_total" if isinstance(metric, Counter) else "_info" if isinstance(metric, Info) else ""
        names[metric._name + suffix] = metric._documentation
    return names


def metric_list() -> str:
    """The exporter docstring's numbered list of its metrics and their help texts, from the definitions."""
    import textwrap

    names = exported_names()
    width = max(map(len, names)) + 2
    lines = []
    for i, (name, text) in enumerate(names.items(), start=1):
        head = f"    {i:>2} {name:<{width}}"
        lines.append(textwrap.fill(text, 116, initial_indent=head, subsequent_indent=" " * len(head)))
    return "\n".join(lines)


# msml.monitoring.drift's code the exporter runs, inlined as its source: PSI per feature of a sliding window
# against the train split's distribution, computed exactly as the gateway computes it.
DRIFT_CONSTANTS = (
    "REFERENCE_VERSION",
    "DEFAULT_BINS",
    "DEFAULT_WINDOW",
    "MISSING",
    "OTHER",
    "EPSILON",
    "RARE_SHARE",
    "MIN_ROWS",
)


def drift_source() -> str:
    from msml.monitoring import drift

    constants = "\n".join(f"{name} = {getattr(drift, name)!r}" for name in DRIFT_CONSTANTS)
    code = [inspect.getsource(obj) for obj in (drift.build_reference, drift.psi, drift._FeatureBins, drift.SlidingPSI)]
    return constants + "\n\n\n" + "\n\n".join(code).rstrip()


def course_values(settings: Settings, root: Path) -> dict[str, object]:
    """Template values of the standalone course files: the contract and settings as Python constants."""
    from msml.data.contract import DEFAULT_MAX_INVALID_SHARE
    from msml.data.preprocessing import MISSING_CATEGORY
    from msml.monitoring.drift import DEFAULT_WINDOW, MIN_ROWS
    from msml.serving.errors import ROW
    from msml.serving.settings import GatewayConfig as ServingSettings

    contract = settings.contract
    columns = {}
    for col in contract.columns:
        spec: dict[str, object] = {"type": col.type}
        if col.nullable:
            spec["nullable"] = True
        if col.values:
            spec["values"] = list(col.values)
        if col.min is not None:
            spec["min"] = col.min
        if col.max is not None:
            spec["max"] = col.max
        columns[col.name] = spec
    values = template_values(settings, root)
    values.update(
        {
            "dataset_literal": repr(contract.name),
            "target_literal": repr(contract.target),
            "labels_literal": repr((contract.negative, contract.positive)),
            "positive_literal": repr(contract.positive),
            "markers_literal": repr(contract.missing_markers),
            "markers": ", ".join(contract.missing_markers),
            "columns_literal": _literal(columns),
            "features_literal": _literal(contract.features),
            "categorical_literal": _literal(contract.categorical_features),
            "signature_literal": _literal({c.name: (_SIGNATURE_TYPES[c.type], c.nullable) for c in contract.columns}),
            "max_invalid_share": repr(DEFAULT_MAX_INVALID_SHARE),
            "max_invalid_pct": f"{DEFAULT_MAX_INVALID_SHARE * 100:g}",
            "missing_category": MISSING_CATEGORY,
            "metric_definitions": metric_definitions(EXPORTER_METRICS),
            "metric_list": metric_list(),
            "drift_source": drift_source(),
            "drift_window": DEFAULT_WINDOW,
            "drift_min_rows": MIN_ROWS,
            "feedback_window": ServingSettings.feedback_window,
            "max_tracked": ServingSettings.max_tracked_predictions,
            "row_field": ROW,
            "positive_label": contract.positive,
        }
    )
    values["training_common"] = template("training_common.py.tmpl", values)
    return values


def course_files(settings: Settings, root: Path) -> dict[str, str]:
    """{course file name: text} of every standalone course script."""
    values = course_values(settings, root)
    return {
        automate_name(settings.student): template("automate.py.tmpl", values),
        MODELLING: template("modelling.py.tmpl", values),
        MODELLING_TUNING: template("modelling_tuning.py.tmpl", values),
        EXPORTER: template("prometheus_exporter.py.tmpl", values),
        INFERENCE: template("inference.py.tmpl", values),
    }


def notebook_files(settings: Settings, root: Path) -> dict[str, str]:
    """{path relative to the repository: text} of the automation the repository's notebook runs in its last section
    (`notebooks/automate_<student>.py`, committed next to the notebook as in the exported `preprocessing/`)."""
    name = automate_name(settings.student)
    return {f"notebooks/{name}": course_files(settings, root)[name]}


def export_notebook(source: Path, target: Path, settings: Settings) -> None:
    """The experiment notebook, its paths rewritten for the exported layout (raw data one folder up)."""
    text = source.read_text()
    name = settings.dataset
    written_for = source.stem.removeprefix("Eksperimen_")  # the repository's student; the export's may differ
    text = text.replace(f"automate_{written_for}", f"automate_{settings.student}")
    for old, new in (
        (f"../data/{name}_raw/", f"../{name}_raw/"),
        (f"data/{name}_preprocessing/", f"preprocessing/{name}_preprocessing/"),
        (f"data/{name}_raw/", f"{name}_raw/"),
    ):
        text = text.replace(old, new)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
