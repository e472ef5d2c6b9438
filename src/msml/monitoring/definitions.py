"""One source for every dashboard panel, recording rule and alert.

The Prometheus rules, the promtool unit tests, the Alertmanager route, the Grafana dashboard and the
Grafana alert rules are all rendered from these definitions (`msml monitoring render`); every metric
name comes from `msml.monitoring.metrics`, never retyped.

Its length (~700 lines) is data: every panel, rule and alert with its PromQL, threshold and promtool cases.
It is one module on purpose: a new metric's panel and alert change this file and nothing else by hand.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from msml.config import DEFAULT_GITHUB_USER, DEFAULT_PORTS
from msml.monitoring.drift import MIN_ROWS as DRIFT_MIN_ROWS
from msml.monitoring.drift import THRESHOLD as DRIFT_PSI_THRESHOLD
from msml.monitoring.metrics import (
    BATCH_ROWS,
    CHAMPION_VERSION,
    DRIFT_PSI,
    DRIFT_WINDOW_ROWS,
    FEATURE_MISSING,
    FEEDBACK,
    IN_FLIGHT,
    LABEL_DELAY,
    LIVE_ACCURACY,
    MODEL_INFO,
    MODEL_REPLICA_CALLS,
    MODEL_REPLICA_UP,
    MODEL_REQUEST_SECONDS,
    MODEL_UP,
    PREDICTED_CLASS,
    PREDICTION_LOG_DROPPED,
    PREDICTION_LOG_ROWS,
    PREDICTIONS,
    PROBABILITY,
    PROCESS_CPU,
    PROCESS_MEMORY,
    REPLICA,
    REQUEST_SECONDS,
    REQUESTS,
    RETRAIN_DECISIONS,
    ROWS_SCORED,
    VALIDATION_FAILURES,
)

# Scrape job names (Prometheus `job` label).
GATEWAY_JOB = "gateway"
MLFLOW_JOB = "mlflow"
PROMETHEUS_JOB = "prometheus"
LOOP_JOB = "loop"  # the webhook receiver, which exports the closed loop's decisions

# Rate window of the recording rules: 4 samples at the production 15 s scrape interval. Dashboard panels that
# rate raw counters use Grafana's $__rate_interval instead (it follows the datasource's scrape interval).
WINDOW = "1m"
# Dashboard variables: the Prometheus datasource and the gateway job(s) shown.
RATE_INTERVAL = "$__rate_interval"
JOB = 'job=~"$job"'
# `$job` offers the jobs that export the gateway's metrics (several gateways can be scraped, each under its own
# job), and "All" is those jobs as Grafana joins them, `(a|b)`: not `.+`, every scraped job, which adds Prometheus's
# own process CPU and memory to the gateway's panels. On msml's own Prometheus, "All" is GATEWAY_JOB.
JOB_VALUES = f"label_values({MODEL_UP}, job)"
# Where each alert's runbook lives: a section of monitoring/README.md, anchored by the alert's name.
RUNBOOK_BASE = f"https://github.com/{DEFAULT_GITHUB_USER}/msml/blob/main/monitoring/README.md"

# Each alert's threshold (and the hold time its text states), named once: the expression compares against it and
# the summary and description format it, so changing the number changes every text that shows it.
MODEL_DOWN_FOR = "30s"
GATEWAY_DOWN_FOR = "1m"
ERROR_RATIO_MAX = 0.05  # share of responses that are 5xx
LATENCY_P95_MAX = 0.5  # seconds
ACCURACY_MIN = 0.75
LABELS_PER_ROW_MIN = 0.001


def _percent(ratio: float) -> str:
    """A 0-1 ratio as the texts show it: 0.05 -> "5%", 0.001 -> "0.1%" (`:g` hides the float's 5.000000000000001)."""
    return f"{ratio * 100:g}%"


def _millis(seconds: float) -> str:
    return f"{seconds * 1000:g}ms"


def promql(expr: str, job: str = GATEWAY_JOB, rate_interval: str = WINDOW) -> str:
    """A dashboard expression as Prometheus evaluates it: the Grafana variables replaced by values (`$job` by
    what its "All" is on msml's own Prometheus, unless `job` names others)."""
    return expr.replace("$__rate_interval", rate_interval).replace("$job", job)


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
    REQUEST_RATE,
    ERROR_RATIO,
    LATENCY_P50,
    LATENCY_P95,
    LATENCY_P99,
    MODEL_LATENCY_P50,
    MODEL_LATENCY_P95,
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
    row: str = ""  # dashboard row (one of ROWS); stats sit above the rows


PANELS: tuple[Panel, ...] = (
    # row "traffic"
    Panel(
        "throughput",
        "Throughput by endpoint",
        (Query(f"sum by (endpoint) ({REQUEST_RATE.record}{{{JOB}}})", "{{endpoint}}"),),
        "reqps",
        description="HTTP requests per second handled by the gateway.",
        row="traffic",
    ),
    Panel(
        "error_rate",
        "Error rate (5xx share)",
        (Query(f"max({ERROR_RATIO.record}{{{JOB}}})", "5xx share"),),
        "percentunit",
        description="Share of gateway responses that were server errors.",
        thresholds=(ERROR_RATIO_MAX,),
        row="traffic",
    ),
    Panel(
        "latency",
        "Gateway latency p50 / p95 / p99",
        (
            Query(f"max by (endpoint) ({LATENCY_P50.record}{{{JOB}}})", "p50 {{endpoint}}"),
            Query(f"max by (endpoint) ({LATENCY_P95.record}{{{JOB}}})", "p95 {{endpoint}}"),
            Query(f"max by (endpoint) ({LATENCY_P99.record}{{{JOB}}})", "p99 {{endpoint}}"),
        ),
        "s",
        description="End-to-end request latency quantiles from the gateway's histogram.",
        row="traffic",
    ),
    Panel(
        "model_latency",
        "Model-server latency p50 / p95",
        (
            Query(f"max({MODEL_LATENCY_P50.record}{{{JOB}}})", "p50"),
            Query(f"max({MODEL_LATENCY_P95.record}{{{JOB}}})", "p95"),
        ),
        "s",
        description="Latency of the gateway's calls to the model server's /invocations.",
        row="traffic",
    ),
    Panel(
        "replica_calls",
        "Model calls per replica",
        (Query(f"sum by ({REPLICA}) (rate({MODEL_REPLICA_CALLS}{{{JOB}}}[{RATE_INTERVAL}]))", f"{{{{{REPLICA}}}}}"),),
        "reqps",
        description="Batches per second the gateway sends to each model-server replica (least busy first).",
        row="traffic",
    ),
    Panel(
        "batch_size",
        "Rows per model batch (mean)",
        (
            Query(
                f"sum(rate({BATCH_ROWS}_sum{{{JOB}}}[{RATE_INTERVAL}])) / "
                f"sum(rate({BATCH_ROWS}_count{{{JOB}}}[{RATE_INTERVAL}]))",
                "rows/batch",
            ),
        ),
        "short",
        description="Mean rows per micro-batch sent to the model server.",
        row="traffic",
    ),
    Panel(
        "in_flight",
        "Requests in flight",
        (Query(f"sum({IN_FLIGHT}{{{JOB}}})", "in flight"),),
        "short",
        description="Prediction requests being handled right now.",
        row="traffic",
    ),
    Panel(
        "cpu",
        "Gateway CPU",
        (Query(f"sum(rate({PROCESS_CPU}{{{JOB}}}[{RATE_INTERVAL}]))", "cores"),),
        "short",
        description="CPU seconds per second used by the gateway process.",
        row="traffic",
    ),
    Panel(
        "memory",
        "Gateway memory (RSS)",
        (Query(f"sum({PROCESS_MEMORY}{{{JOB}}})", "rss"),),
        "bytes",
        description="Resident memory of the gateway process.",
        row="traffic",
    ),
    # row "model"
    Panel(
        "predictions",
        "Predictions by class",
        (
            Query(
                f"sum by ({PREDICTED_CLASS}) (rate({PREDICTIONS}{{{JOB}}}[{RATE_INTERVAL}]))",
                f"{{{{{PREDICTED_CLASS}}}}}",
            ),
        ),
        "short",
        description="Predicted rows per second, by predicted class.",
        row="model",
    ),
    Panel(
        "probability",
        "Predicted probability distribution",
        (Query(f"sum by (le) (increase({PROBABILITY}_bucket{{{JOB}}}[{RATE_INTERVAL}]))", "{{le}}"),),
        "short",
        kind="heatmap",
        description="Histogram of the predicted probability of the positive class.",
        row="model",
    ),
    # `>= 0` drops the NaN a gateway exports before any feedback: the panel shows no data, not 0 %
    Panel(
        "live_accuracy",
        "Live accuracy",
        (Query(f"min({LIVE_ACCURACY}{{{JOB}}} >= 0)", "accuracy"),),
        "percentunit",
        description="Accuracy of the predictions that received ground-truth feedback (no data before any feedback).",
        row="model",
    ),
    # row "data"
    Panel(
        "drift_psi",
        "Drift PSI per feature",
        (Query(f"max by (feature) ({DRIFT_PSI}{{{JOB}}})", "{{feature}}"),),
        "short",
        description="Population stability index of recent rows against the training reference "
        f"(absent until the window holds {DRIFT_MIN_ROWS} rows).",
        thresholds=(DRIFT_PSI_THRESHOLD,),
        row="data",
    ),
    Panel(
        "drift_window_rows",
        "Rows in the drift window",
        (Query(f"max({DRIFT_WINDOW_ROWS}{{{JOB}}})", "rows"),),
        "short",
        description=f"Rows the drift statistic is computed over; PSI is exported from {DRIFT_MIN_ROWS} rows.",
        thresholds=(),
        row="data",
    ),
    Panel(
        "missing_rate",
        "Missing-value rate per feature",
        (Query(f"max by (feature) ({MISSING_RATIO.record}{{{JOB}}})", "{{feature}}"),),
        "percentunit",
        description="Share of scored rows with the feature missing.",
        row="data",
    ),
    Panel(
        "validation_failures",
        "Validation failures by field",
        (
            Query(
                f"sum by (field, reason) (rate({VALIDATION_FAILURES}{{{JOB}}}[{RATE_INTERVAL}]))",
                "{{field}}: {{reason}}",
            ),
        ),
        "short",
        description="Request rows rejected by the contract, per second.",
        row="data",
    ),
    # row "loop": the prediction log and the ground truth that comes back (msml.loop)
    Panel(
        "prediction_log",
        "Prediction log: rows logged / dropped",
        (
            Query(f"sum(rate({PREDICTION_LOG_ROWS}{{{JOB}}}[{RATE_INTERVAL}]))", "logged"),
            Query(f"sum(rate({PREDICTION_LOG_DROPPED}{{{JOB}}}[{RATE_INTERVAL}]))", "dropped"),
        ),
        "short",
        description="Served rows per second written to the loop store, and rows not logged (store slow or down).",
        row="loop",
    ),
    Panel(
        "labels",
        "Labels received by outcome",
        (Query(f"sum by (outcome) (rate({FEEDBACK}{{{JOB}}}[{RATE_INTERVAL}]))", "{{outcome}}"),),
        "short",
        description="Ground-truth labels per second at /feedback: correct and incorrect predictions, repeated "
        "labels (duplicate) and ids the gateway never issued (unknown_id).",
        row="loop",
    ),
    Panel(
        "label_delay",
        "Label delay p50 / p95",
        (
            Query(
                f"histogram_quantile(0.5, sum by (le) (rate({LABEL_DELAY}_bucket{{{JOB}}}[{RATE_INTERVAL}])))", "p50"
            ),
            Query(
                f"histogram_quantile(0.95, sum by (le) (rate({LABEL_DELAY}_bucket{{{JOB}}}[{RATE_INTERVAL}])))", "p95"
            ),
        ),
        "s",
        description="Time from a prediction to its ground truth (first label per prediction).",
        row="loop",
    ),
    # the retraining half of the loop: the webhook receiver's metrics (job "loop")
    Panel(
        "retrain_decisions",
        "Retrain decisions by outcome (last hour)",
        (Query(f'sum by (outcome) (increase({RETRAIN_DECISIONS}{{job="{LOOP_JOB}"}}[1h]))', "{{outcome}}"),),
        "short",
        description="What the loop decided about the alerts it received: started, a guard's skip, duplicate, paged, "
        "and how each retraining ended (promoted, rejected-by-gate, failed).",
        row="loop",
    ),
    Panel(
        "champion_version",
        "Champion version",
        (Query(f'max({CHAMPION_VERSION}{{job="{LOOP_JOB}"}})', "@champion"),),
        "short",
        description="Registry version holding @champion: a step is a promotion or a rollback.",
        row="loop",
    ),
    # stats above the rows
    Panel(
        "model_up",
        "Model server up",
        (Query(f"min({MODEL_UP}{{{JOB}}})", "up"),),
        "short",
        kind="stat",
        description="1 while a model server (any replica) answers the gateway (down: refused, or silent for 2 s).",
    ),
    Panel(
        "replicas_up",
        "Model-server replicas up",
        (Query(f"sum({MODEL_REPLICA_UP}{{{JOB}}})", "replicas up"),),
        "short",
        kind="stat",
        description="Replicas up (answering the gateway); a replica that is down is out until it answers again.",
    ),
    Panel(
        "model_info",
        "Model served",
        (Query(f"max by (name, version, alias) ({MODEL_INFO}_info{{{JOB}}})", "{{name}} v{{version}} @{{alias}}"),),
        "short",
        kind="stat",
        description="Name, version and alias of the model the gateway serves.",
    ),
)
ROWS = ("traffic", "model", "data", "loop")


@dataclass(frozen=True)
class AlertCase:
    """Input series for a promtool unit test: `series` maps a selector to promtool's expanding notation."""

    series: dict[str, str]


@dataclass(frozen=True)
class Alert:
    """One alert: `query <op> threshold` held for `for_`. Prometheus gets the comparison in its expression;
    Grafana evaluates `grafana_query` and applies the threshold as a server-side expression.

    `description` is a Prometheus/Alertmanager template: `{{ $labels.x }}` and `{{ $value }}` name the series
    and the value that fired it. `inhibited_by` lists the alerts that cause this one (same `job`): Alertmanager
    mutes this alert's notification while a cause fires, and the Grafana rule (Grafana has no inhibition)
    drops the series with `unless` instead. `no_data_alerts`: only the alert that owns missing data (the
    gateway cannot be scraped) alerts on it in Grafana; every other rule treats no data as OK.
    """

    name: str
    key: str  # evidence file suffix (`1.rules_<key>`, `2.notifikasi_<key>`)
    query: str
    op: str  # ">" or "<"
    threshold: float
    for_: str
    severity: str
    summary: str
    description: str
    firing: AlertCase
    healthy: AlertCase
    labels: dict[str, str] = field(default_factory=dict)  # labels the firing test expects on the alert
    annotations: dict[str, str] = field(default_factory=dict)  # the description as promtool expects it rendered
    inhibited_by: tuple[str, ...] = ()
    no_data_alerts: bool = False

    @property
    def expr(self) -> str:
        return f"{self.query} {self.op} {self.threshold:g}"

    @property
    def grafana_evaluator(self) -> str:
        return {">": "gt", "<": "lt"}[self.op]

    @property
    def runbook_url(self) -> str:
        return f"{RUNBOOK_BASE}#{self.name.lower()}"

    @property
    def grafana_query(self) -> str:
        query = self.query
        for cause in self.inhibited_by:
            query = f"({query}) unless on (job) ({alert(cause).expr})"
        return query


_GW_INSTANCE = f"gateway:{DEFAULT_PORTS.gateway}"  # the instance label of the promtool test series
_GW = f'job="{GATEWAY_JOB}",instance="{_GW_INSTANCE}"'
_PREDICT = f'{_GW},endpoint="/invocations"'
_VALUE = '{{ $value | printf "%.3g" }}'
_LOOP_INSTANCE = f"receiver:{DEFAULT_PORTS.receiver}"
_LOOP = f'job="{LOOP_JOB}",instance="{_LOOP_INSTANCE}"'
LABELS_WINDOW = "30m"  # labels arrive late and in bursts (a person or a batch job sends them): 30 min of none

ALERTS: tuple[Alert, ...] = (
    Alert(
        "ModelServerDown",
        "model_server_down",
        f"min by (job, instance) ({MODEL_UP})",
        "<",
        1,
        MODEL_DOWN_FOR,
        "critical",
        "The model server is not answering the gateway's /ping.",
        "Gateway {{ $labels.instance }} has had no answer from the model server's /ping for "
        + MODEL_DOWN_FOR
        + " (model_up = "
        + _VALUE
        + ").",
        firing=AlertCase({f"{MODEL_UP}{{{_GW}}}": "1 1 0x60"}),
        healthy=AlertCase({f"{MODEL_UP}{{{_GW}}}": "1x60"}),
        labels={"job": GATEWAY_JOB, "instance": _GW_INSTANCE},
        annotations={
            "description": f"Gateway {_GW_INSTANCE} has had no answer from the model server's /ping "
            "for 30s (model_up = 0)."
        },
    ),
    Alert(
        "GatewayDown",
        "gateway_down",
        f'up{{job="{GATEWAY_JOB}"}}',
        "<",
        1,
        GATEWAY_DOWN_FOR,
        "critical",
        "Prometheus cannot scrape the gateway.",
        "Prometheus could not scrape {{ $labels.instance }} (job {{ $labels.job }}) for "
        + GATEWAY_DOWN_FOR
        + " (up = {{ $value }}): every gateway metric is missing, so no other gateway alert can be trusted.",
        firing=AlertCase({f"up{{{_GW}}}": "0x60"}),
        healthy=AlertCase({f"up{{{_GW}}}": "1x60"}),
        labels={"job": GATEWAY_JOB, "instance": _GW_INSTANCE},
        annotations={
            "description": f"Prometheus could not scrape {_GW_INSTANCE} (job gateway) for 1m (up = 0): every "
            "gateway metric is missing, so no other gateway alert can be trusted."
        },
        no_data_alerts=True,
    ),
    Alert(
        "HighErrorRate",
        "error_rate",
        ERROR_RATIO.record,
        ">",
        ERROR_RATIO_MAX,
        "2m",
        "critical",
        f"More than {_percent(ERROR_RATIO_MAX)} of gateway responses are server errors.",
        "{{ $value | humanizePercentage }} of {{ $labels.job }} responses were 5xx over the last "
        + WINDOW
        + f" (threshold {_percent(ERROR_RATIO_MAX)}).",
        firing=AlertCase(
            {f'{REQUESTS}{{{_PREDICT},status="200"}}': "0+30x60", f'{REQUESTS}{{{_PREDICT},status="503"}}': "0+30x60"}
        ),
        healthy=AlertCase(
            {f'{REQUESTS}{{{_PREDICT},status="200"}}': "0+60x60", f'{REQUESTS}{{{_PREDICT},status="422"}}': "0+5x60"}
        ),
        labels={"job": GATEWAY_JOB},
        annotations={"description": "50% of gateway responses were 5xx over the last 1m (threshold 5%)."},
        inhibited_by=("ModelServerDown",),
    ),
    Alert(
        "HighLatencyP95",
        "latency_p95",
        LATENCY_P95.record,
        ">",
        LATENCY_P95_MAX,
        "5m",
        "warning",
        f"Gateway p95 latency is above {_millis(LATENCY_P95_MAX)}.",
        "p95 latency of {{ $labels.endpoint }} on {{ $labels.job }} is {{ $value | humanizeDuration }} "
        f"(threshold {_millis(LATENCY_P95_MAX)}).",
        firing=AlertCase(
            {
                f'{REQUEST_SECONDS}_bucket{{{_PREDICT},le="0.5"}}': "0+1x60",
                f'{REQUEST_SECONDS}_bucket{{{_PREDICT},le="1.0"}}': "0+20x60",
                f'{REQUEST_SECONDS}_bucket{{{_PREDICT},le="+Inf"}}': "0+20x60",
            }
        ),
        healthy=AlertCase(
            {
                f'{REQUEST_SECONDS}_bucket{{{_PREDICT},le="0.05"}}': "0+19x60",
                f'{REQUEST_SECONDS}_bucket{{{_PREDICT},le="0.5"}}': "0+20x60",
                f'{REQUEST_SECONDS}_bucket{{{_PREDICT},le="+Inf"}}': "0+20x60",
            }
        ),
        labels={"job": GATEWAY_JOB, "endpoint": "/invocations"},
        annotations={"description": "p95 latency of /invocations on gateway is 973.7ms (threshold 500ms)."},
    ),
    Alert(
        "DataDriftPSI",
        "drift_psi",
        f"max by (job, feature) ({DRIFT_PSI})",
        ">",
        DRIFT_PSI_THRESHOLD,
        "10m",
        "warning",
        f"A feature's recent distribution drifted from the training reference (PSI > {DRIFT_PSI_THRESHOLD:g}).",
        "Feature {{ $labels.feature }} drifted on {{ $labels.job }}: PSI " + _VALUE + f" > {DRIFT_PSI_THRESHOLD:g} "
        f"over the last window of recent rows (PSI is only exported from {DRIFT_MIN_ROWS} rows).",
        firing=AlertCase(
            {
                f'{DRIFT_PSI}{{{_GW},feature="age"}}': "0.05 0.35x60",
                f'{DRIFT_PSI}{{{_GW},feature="hours_per_week"}}': "0.01x60",
            }
        ),
        healthy=AlertCase({f'{DRIFT_PSI}{{{_GW},feature="age"}}': "0.05x60"}),
        labels={"job": GATEWAY_JOB, "feature": "age"},
        annotations={
            "description": f"Feature age drifted on gateway: PSI 0.35 > {DRIFT_PSI_THRESHOLD:g} over the "
            f"last window of recent rows (PSI is only exported from {DRIFT_MIN_ROWS} rows)."
        },
    ),
    Alert(
        # `>= 0` drops the NaN exported before any feedback (no evidence, no alert; also for Grafana's reducer)
        "LiveAccuracyDrop",
        "accuracy",
        f"min by (job) ({LIVE_ACCURACY} >= 0)",
        "<",
        ACCURACY_MIN,
        "10m",
        "warning",
        f"Accuracy on ground-truth feedback fell below {_percent(ACCURACY_MIN)}.",
        "Live accuracy on {{ $labels.job }} is {{ $value | humanizePercentage }} "
        f"(threshold {_percent(ACCURACY_MIN)}) over the recent feedback.",
        firing=AlertCase({f"{LIVE_ACCURACY}{{{_GW}}}": "0.85 0.6x60"}),
        healthy=AlertCase({f"{LIVE_ACCURACY}{{{_GW}}}": "NaN 0.85x60"}),
        labels={"job": GATEWAY_JOB},
        annotations={"description": "Live accuracy on gateway is 60% (threshold 75%) over the recent feedback."},
    ),
    Alert(
        "RetrainFailed",
        "retrain_failed",
        f'sum by (job) (increase({RETRAIN_DECISIONS}{{outcome="failed"}}[1h]))',
        ">",
        0,
        "1m",
        "critical",
        "A retraining the loop started has failed.",
        "Retrainings started by {{ $labels.job }} that failed in the last hour: " + _VALUE + ". The champion was not "
        "replaced. Each log is .run/loop/retrain-<time>.log; `msml loop status` lists the decisions.",
        firing=AlertCase(
            {
                f'{RETRAIN_DECISIONS}{{{_LOOP},reason="DataDriftPSI",outcome="started"}}': "0 1x60",
                f'{RETRAIN_DECISIONS}{{{_LOOP},reason="DataDriftPSI",outcome="failed"}}': "0 0 1x60",
            }
        ),
        healthy=AlertCase(
            {
                f'{RETRAIN_DECISIONS}{{{_LOOP},reason="DataDriftPSI",outcome="started"}}': "0 1x60",
                f'{RETRAIN_DECISIONS}{{{_LOOP},reason="DataDriftPSI",outcome="promoted"}}': "0 0 1x60",
                f'{RETRAIN_DECISIONS}{{{_LOOP},reason="DataDriftPSI",outcome="failed"}}': "0x60",
            }
        ),
        labels={"job": LOOP_JOB},
        annotations={
            "description": f"Retrainings started by {LOOP_JOB} that failed in the last hour: 1. The champion was not "
            "replaced. Each log is .run/loop/retrain-<time>.log; `msml loop status` lists the decisions."
        },
    ),
    Alert(
        # labels per scored row: a gateway that scores nothing expects no labels (0/0 is no series, no alert), and
        # one that never received a label has no counter yet ("stopped", not "never started")
        "LabelsStopped",
        "labels_stopped",
        f"sum by (job) (increase({FEEDBACK}[{LABELS_WINDOW}]))"
        f" / sum by (job) (increase({ROWS_SCORED}[{LABELS_WINDOW}]))",
        "<",
        LABELS_PER_ROW_MIN,
        "10m",
        "warning",
        f"Ground-truth labels stopped arriving: fewer than {_percent(LABELS_PER_ROW_MIN)} of the rows scored over "
        f"{LABELS_WINDOW} got one.",
        f"Labels per scored row on {{{{ $labels.job }}}} over the last {LABELS_WINDOW}: "
        "{{ $value | humanizePercentage }} "
        f"(threshold {_percent(LABELS_PER_ROW_MIN)}): live accuracy is stale and the loop has no new rows to "
        "retrain on.",
        firing=AlertCase(
            {
                f'{FEEDBACK}{{{_GW},outcome="correct"}}': "100x150",
                f"{ROWS_SCORED}{{{_GW}}}": "0+50x150",
            }
        ),
        healthy=AlertCase(
            {
                f'{FEEDBACK}{{{_GW},outcome="correct"}}': "0+5x150",
                f"{ROWS_SCORED}{{{_GW}}}": "0+50x150",
            }
        ),
        labels={"job": GATEWAY_JOB},
        annotations={
            "description": f"Labels per scored row on gateway over the last {LABELS_WINDOW}: 0% (threshold 0.1%): "
            "live accuracy is stale and the loop has no new rows to retrain on."
        },
    ),
)


def alert(name: str) -> Alert:
    return next(a for a in ALERTS if a.name == name)


def runbook_values() -> dict[str, str]:
    """Each threshold and hold time the runbooks state, formatted as the alerts' own texts format it: the
    `<!-- msml:NAME -->` fragments of monitoring/README.md and the `<<NAME>>` placeholders of the hand-in's
    runbook template both read these, so a changed constant changes every runbook that shows it."""
    return {
        "model_down_for": MODEL_DOWN_FOR,
        "error_ratio_max": _percent(ERROR_RATIO_MAX),
        "latency_p95_max": _millis(LATENCY_P95_MAX),
        "latency_p95_for": alert("HighLatencyP95").for_,
        "drift_psi_threshold": f"{DRIFT_PSI_THRESHOLD:g}",
        "accuracy_min": _percent(ACCURACY_MIN),
        "accuracy_for": alert("LiveAccuracyDrop").for_,
        "labels_per_row_min": _percent(LABELS_PER_ROW_MIN),
        "labels_window": LABELS_WINDOW,
    }


def all_queries(job: str = GATEWAY_JOB) -> dict[str, str]:
    """Every PromQL expression a dashboard panel or an alert evaluates, keyed by where it is used (the
    dashboard's variables replaced as `promql` does, `$job` by `job`, so Prometheus can run them)."""
    out = {}
    for panel in PANELS:
        for i, q in enumerate(panel.queries):
            out[f"panel {panel.key}[{i}]"] = promql(q.expr, job=job)
    for a in ALERTS:
        out[f"alert {a.name}"] = a.query
    return out
