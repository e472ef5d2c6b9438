"""One source for every dashboard panel, recording rule and alert.

The Prometheus rules, the promtool unit tests, the Alertmanager route, the Grafana dashboard and the
Grafana alert rules are all rendered from these definitions (`msml monitoring render`); every metric
name comes from `msml.monitoring.metrics`, never retyped.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from msml.monitoring.metrics import (
    BATCH_ROWS,
    DRIFT_PSI,
    FEATURE_MISSING,
    IN_FLIGHT,
    LIVE_ACCURACY,
    MODEL_INFO,
    MODEL_REQUEST_SECONDS,
    MODEL_UP,
    PREDICTIONS,
    PROBABILITY,
    PROCESS_CPU,
    PROCESS_MEMORY,
    REQUEST_SECONDS,
    REQUESTS,
    ROWS_SCORED,
    VALIDATION_FAILURES,
)

# Scrape job names (Prometheus `job` label).
GATEWAY_JOB = "gateway"
MLFLOW_JOB = "mlflow"
PROMETHEUS_JOB = "prometheus"

# Rate window of every rate() below: 4 samples at the production 15 s scrape interval.
WINDOW = "1m"
DRIFT_PSI_THRESHOLD = 0.2  # the usual "significant shift" line for the population stability index


def _base(counter: str) -> str:
    return counter.removesuffix("_total")


@dataclass(frozen=True)
class RecordingRule:
    record: str
    expr: str


def _quantile_rule(q: int, histogram: str, by: str) -> RecordingRule:
    level = by.replace(", ", "_")
    return RecordingRule(
        record=f"{level}:{histogram}:p{q}_rate{WINDOW}",
        expr=f"histogram_quantile(0.{q:02d}, sum by ({by}, le) (rate({histogram}_bucket[{WINDOW}])))",
    )


# The heavy queries, precomputed every evaluation interval (dashboards and alerts read these).
REQUEST_RATE = RecordingRule(
    record=f"job_endpoint_status:{_base(REQUESTS)}:rate{WINDOW}",
    expr=f"sum by (job, endpoint, status) (rate({REQUESTS}[{WINDOW}]))",
)
ERROR_RATIO = RecordingRule(
    record=f"job:{_base(REQUESTS)}_5xx:ratio_rate{WINDOW}",
    # `or ... * 0`: a gateway without any 5xx yet has no such series; its error ratio is 0, not "no data"
    expr=(
        f'(sum by (job) (rate({REQUESTS}{{status=~"5.."}}[{WINDOW}])) or sum by (job) (rate({REQUESTS}[{WINDOW}])) * 0)'
        f" / sum by (job) (rate({REQUESTS}[{WINDOW}]))"
    ),
)
LATENCY_P50 = _quantile_rule(50, REQUEST_SECONDS, "job, endpoint")
LATENCY_P95 = _quantile_rule(95, REQUEST_SECONDS, "job, endpoint")
LATENCY_P99 = _quantile_rule(99, REQUEST_SECONDS, "job, endpoint")
MODEL_LATENCY_P50 = _quantile_rule(50, MODEL_REQUEST_SECONDS, "job")
MODEL_LATENCY_P95 = _quantile_rule(95, MODEL_REQUEST_SECONDS, "job")
MISSING_RATIO = RecordingRule(
    record=f"job_feature:{_base(FEATURE_MISSING)}:ratio_rate{WINDOW}",
    expr=(
        f"sum by (job, feature) (rate({FEATURE_MISSING}[{WINDOW}]))"
        f" / ignoring (feature) group_left sum by (job) (rate({ROWS_SCORED}[{WINDOW}]))"
    ),
)
RECORDING_RULES: tuple[RecordingRule, ...] = (
    REQUEST_RATE, ERROR_RATIO, LATENCY_P50, LATENCY_P95, LATENCY_P99, MODEL_LATENCY_P50, MODEL_LATENCY_P95,
    MISSING_RATIO,
)


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""


@dataclass(frozen=True)
class Panel:
    """One dashboard panel. `key` names its evidence files (`1.monitoring_<key>`)."""

    key: str
    title: str
    queries: tuple[Query, ...]
    unit: str
    kind: str = "timeseries"  # timeseries | stat | heatmap
    description: str = ""
    thresholds: tuple[float, ...] = ()  # red above the first value (stat/timeseries threshold lines)


PANELS: tuple[Panel, ...] = (
    Panel("throughput", "Throughput by endpoint", (Query(f"sum by (endpoint) ({REQUEST_RATE.record})", "{{endpoint}}"),),
          "reqps", description="HTTP requests per second handled by the gateway."),
    Panel("error_rate", "Error rate (5xx share)", (Query(f"max({ERROR_RATIO.record})", "5xx share"),), "percentunit",
          description="Share of gateway responses that were server errors.", thresholds=(0.05,)),
    Panel("latency", "Gateway latency p50 / p95 / p99",
          (Query(f"max by (endpoint) ({LATENCY_P50.record})", "p50 {{endpoint}}"),
           Query(f"max by (endpoint) ({LATENCY_P95.record})", "p95 {{endpoint}}"),
           Query(f"max by (endpoint) ({LATENCY_P99.record})", "p99 {{endpoint}}")), "s",
          description="End-to-end request latency quantiles from the gateway's histogram."),
    Panel("model_latency", "Model-server latency p50 / p95",
          (Query(f"max({MODEL_LATENCY_P50.record})", "p50"), Query(f"max({MODEL_LATENCY_P95.record})", "p95")), "s",
          description="Latency of the gateway's calls to the model server's /invocations."),
    Panel("batch_size", "Rows per model batch (mean)",
          (Query(f"sum(rate({BATCH_ROWS}_sum[{WINDOW}])) / sum(rate({BATCH_ROWS}_count[{WINDOW}]))", "rows/batch"),),
          "short", description="Mean rows per micro-batch sent to the model server."),
    Panel("in_flight", "Requests in flight", (Query(f"sum({IN_FLIGHT})", "in flight"),), "short",
          description="Prediction requests being handled right now."),
    Panel("predictions", "Predictions by class", (Query(f"sum by (label) (rate({PREDICTIONS}[{WINDOW}]))", "{{label}}"),),
          "short", description="Predicted rows per second, by predicted class label."),
    Panel("probability", "Predicted probability distribution",
          (Query(f"sum by (le) (increase({PROBABILITY}_bucket[{WINDOW}]))", "{{le}}"),), "short", kind="heatmap",
          description="Histogram of the predicted probability of the positive class."),
    Panel("drift_psi", "Drift PSI per feature", (Query(f"max by (feature) ({DRIFT_PSI})", "{{feature}}"),), "short",
          description="Population stability index of recent rows against the training reference.",
          thresholds=(DRIFT_PSI_THRESHOLD,)),
    Panel("missing_rate", "Missing-value rate per feature",
          (Query(f"max by (feature) ({MISSING_RATIO.record})", "{{feature}}"),), "percentunit",
          description="Share of scored rows with the feature missing."),
    Panel("validation_failures", "Validation failures by field",
          (Query(f"sum by (field, reason) (rate({VALIDATION_FAILURES}[{WINDOW}]))", "{{field}}: {{reason}}"),),
          "short", description="Request rows rejected by the contract, per second."),
    Panel("model_up", "Model server up", (Query(f"min({MODEL_UP})", "up"),), "short", kind="stat",
          description="1 when the model server answered the gateway's last /ping."),
    Panel("live_accuracy", "Live accuracy", (Query(f"min({LIVE_ACCURACY})", "accuracy"),), "percentunit",
          description="Accuracy of the predictions that received ground-truth feedback."),
    Panel("cpu", "Gateway CPU", (Query(f'sum(rate({PROCESS_CPU}{{job="{GATEWAY_JOB}"}}[{WINDOW}]))', "cores"),),
          "short", description="CPU seconds per second used by the gateway process."),
    Panel("memory", "Gateway memory (RSS)", (Query(f'sum({PROCESS_MEMORY}{{job="{GATEWAY_JOB}"}})', "rss"),), "bytes",
          description="Resident memory of the gateway process."),
    Panel("model_info", "Model served", (Query(f"max by (name, version, alias) ({MODEL_INFO}_info)",
                                                "{{name}} v{{version}} @{{alias}}"),), "short", kind="stat",
          description="Name, version and alias of the model the gateway serves."),
)


@dataclass(frozen=True)
class AlertCase:
    """Input series for a promtool unit test: `series` maps a selector to promtool's expanding notation."""

    series: dict[str, str]


@dataclass(frozen=True)
class Alert:
    """One alert: `query <op> threshold` held for `for_`. Prometheus gets the comparison in its expression;
    Grafana evaluates `query` and applies the threshold as a server-side expression."""

    name: str
    key: str  # evidence file suffix (`1.rules_<key>`, `2.notifikasi_<key>`)
    query: str
    op: str  # ">" or "<"
    threshold: float
    for_: str
    severity: str
    summary: str
    firing: AlertCase
    healthy: AlertCase
    labels: dict[str, str] = field(default_factory=dict)  # labels the firing test expects on the alert

    @property
    def expr(self) -> str:
        return f"{self.query} {self.op} {self.threshold:g}"

    @property
    def grafana_evaluator(self) -> str:
        return {">": "gt", "<": "lt"}[self.op]


_GW = f'job="{GATEWAY_JOB}",instance="gateway:8000"'
_PREDICT = f'{_GW},endpoint="/invocations"'

ALERTS: tuple[Alert, ...] = (
    Alert(
        "ModelServerDown", "model_server_down", f"min by (job, instance) ({MODEL_UP})", "<", 1, "30s", "critical",
        "The model server is not answering the gateway's /ping.",
        firing=AlertCase({f"{MODEL_UP}{{{_GW}}}": "1 1 0x60"}),
        healthy=AlertCase({f"{MODEL_UP}{{{_GW}}}": "1x60"}),
        labels={"job": GATEWAY_JOB, "instance": "gateway:8000"},
    ),
    Alert(
        "GatewayDown", "gateway_down", f'up{{job="{GATEWAY_JOB}"}}', "<", 1, "1m", "critical",
        "Prometheus cannot scrape the gateway.",
        firing=AlertCase({f"up{{{_GW}}}": "0x60"}),
        healthy=AlertCase({f"up{{{_GW}}}": "1x60"}),
        labels={"job": GATEWAY_JOB, "instance": "gateway:8000"},
    ),
    Alert(
        "HighErrorRate", "error_rate", ERROR_RATIO.record, ">", 0.05, "2m", "critical",
        "More than 5% of gateway responses are server errors.",
        firing=AlertCase({f'{REQUESTS}{{{_PREDICT},status="200"}}': "0+30x60",
                          f'{REQUESTS}{{{_PREDICT},status="503"}}': "0+30x60"}),
        healthy=AlertCase({f'{REQUESTS}{{{_PREDICT},status="200"}}': "0+60x60",
                           f'{REQUESTS}{{{_PREDICT},status="422"}}': "0+5x60"}),
        labels={"job": GATEWAY_JOB},
    ),
    Alert(
        "HighLatencyP95", "latency_p95", LATENCY_P95.record, ">", 0.5, "5m", "warning",
        "Gateway p95 latency is above 500 ms.",
        firing=AlertCase({f'{REQUEST_SECONDS}_bucket{{{_PREDICT},le="0.5"}}': "0+1x60",
                          f'{REQUEST_SECONDS}_bucket{{{_PREDICT},le="1.0"}}': "0+20x60",
                          f'{REQUEST_SECONDS}_bucket{{{_PREDICT},le="+Inf"}}': "0+20x60"}),
        healthy=AlertCase({f'{REQUEST_SECONDS}_bucket{{{_PREDICT},le="0.05"}}': "0+19x60",
                           f'{REQUEST_SECONDS}_bucket{{{_PREDICT},le="0.5"}}': "0+20x60",
                           f'{REQUEST_SECONDS}_bucket{{{_PREDICT},le="+Inf"}}': "0+20x60"}),
        labels={"job": GATEWAY_JOB, "endpoint": "/invocations"},
    ),
    Alert(
        "DataDriftPSI", "drift_psi", f"max by (job, feature) ({DRIFT_PSI})", ">", DRIFT_PSI_THRESHOLD, "10m",
        "warning", "A feature's recent distribution drifted from the training reference (PSI > 0.2).",
        firing=AlertCase({f'{DRIFT_PSI}{{{_GW},feature="age"}}': "0.05 0.35x60",
                          f'{DRIFT_PSI}{{{_GW},feature="hours_per_week"}}': "0.01x60"}),
        healthy=AlertCase({f'{DRIFT_PSI}{{{_GW},feature="age"}}': "0.05x60"}),
        labels={"job": GATEWAY_JOB, "feature": "age"},
    ),
    Alert(
        "LiveAccuracyDrop", "accuracy", f"min by (job) ({LIVE_ACCURACY})", "<", 0.75, "10m", "warning",
        "Accuracy on ground-truth feedback fell below 75%.",
        firing=AlertCase({f"{LIVE_ACCURACY}{{{_GW}}}": "0.85 0.6x60"}),
        healthy=AlertCase({f"{LIVE_ACCURACY}{{{_GW}}}": "0.85x60"}),
        labels={"job": GATEWAY_JOB},
    ),
)


def alert(name: str) -> Alert:
    return next(a for a in ALERTS if a.name == name)


def all_queries() -> dict[str, str]:
    """Every PromQL expression a dashboard panel or an alert evaluates, keyed by where it is used."""
    out = {}
    for panel in PANELS:
        for i, q in enumerate(panel.queries):
            out[f"panel {panel.key}[{i}]"] = q.expr
    for a in ALERTS:
        out[f"alert {a.name}"] = a.query
    return out
