"""Every Prometheus metric the gateway exports — names, help, labels and buckets in one place.

The gateway updates these from real requests only; the dashboards and alert rules refer to
them through the name constants below, never by retyping a string.
"""

from __future__ import annotations

import contextlib

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
)

PREFIX = "msml"

# Names as Prometheus exposes them (counters gain `_total`, histograms `_bucket/_sum/_count`).
REQUESTS = f"{PREFIX}_requests_total"
REQUEST_SECONDS = f"{PREFIX}_request_duration_seconds"
MODEL_REQUEST_SECONDS = f"{PREFIX}_model_request_duration_seconds"
MODEL_ERRORS = f"{PREFIX}_model_errors_total"
IN_FLIGHT = f"{PREFIX}_requests_in_flight"
BATCH_ROWS = f"{PREFIX}_batch_rows"
VALIDATION_FAILURES = f"{PREFIX}_validation_failures_total"
ROWS_SCORED = f"{PREFIX}_rows_scored_total"
PREDICTIONS = f"{PREFIX}_predictions_total"
PROBABILITY = f"{PREFIX}_prediction_probability"
FEATURE_MISSING = f"{PREFIX}_feature_missing_total"
DRIFT_PSI = f"{PREFIX}_feature_drift_psi"
DRIFT_WINDOW_ROWS = f"{PREFIX}_drift_window_rows"
MODEL_UP = f"{PREFIX}_model_up"
MODEL_REPLICA_UP = f"{PREFIX}_model_replica_up"
MODEL_REPLICA_CALLS = f"{PREFIX}_model_replica_calls_total"
REPLICA = "replica"  # label of the per-replica series: the model server's URL
MODEL_INFO = f"{PREFIX}_model"  # Info metric: exposed as msml_model_info
FEEDBACK = f"{PREFIX}_feedback_total"
LIVE_ACCURACY = f"{PREFIX}_live_accuracy_ratio"  # a 0-1 ratio: Prometheus names say the unit
REJECTED = f"{PREFIX}_requests_rejected_total"
# The prediction log and labels (msml.loop): rows committed to the loop store, rows not logged, rows waiting
PREDICTION_LOG_ROWS = f"{PREFIX}_prediction_log_rows_total"
PREDICTION_LOG_DROPPED = f"{PREFIX}_prediction_log_dropped_total"
PREDICTION_LOG_PENDING = f"{PREFIX}_prediction_log_pending_rows"
LABEL_DELAY = f"{PREFIX}_label_delay_seconds"
# the closed loop's, exported by the webhook receiver (msml.monitoring.receiver)
RETRAIN_DECISIONS = f"{PREFIX}_retrain_decisions_total"
CHAMPION_VERSION = f"{PREFIX}_champion_version"
# From prometheus_client's own process collector (read from /proc, no psutil in the scrape path)
PROCESS_CPU = "process_cpu_seconds_total"
PROCESS_MEMORY = "process_resident_memory_bytes"

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
PROBABILITY_BUCKETS = tuple(round(0.1 * i, 1) for i in range(1, 11))
# label delay: ground truth arrives from seconds (a demo, a click) to weeks (a loan repaid) after the prediction
LABEL_DELAY_BUCKETS = (1, 10, 60, 300, 900, 3600, 4 * 3600, 86400, 7 * 86400, 30 * 86400)
PREDICTED_CLASS = "predicted_class"  # label of PREDICTIONS: `{predicted_class=">50K"}` reads as what it is


def _strip_total(name: str) -> str:
    # prometheus_client appends _total to counters itself
    return name.removesuffix("_total")


class GatewayMetrics:
    """The gateway's metrics, on their own registry so several gateways (tests) can coexist."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            with contextlib.suppress(ValueError):  # already on this registry
                r.register(collector)
        self.requests = Counter(
            _strip_total(REQUESTS), "HTTP requests by endpoint and status code.", ["endpoint", "status"], registry=r
        )
        self.request_seconds = Histogram(
            REQUEST_SECONDS,
            "Gateway request latency (seconds), end to end.",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.model_request_seconds = Histogram(
            MODEL_REQUEST_SECONDS,
            "Latency of calls to the model server's /invocations (seconds).",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.model_errors = Counter(
            _strip_total(MODEL_ERRORS), "Failed calls to the model server by kind.", ["kind"], registry=r
        )
        self.in_flight = Gauge(IN_FLIGHT, "Prediction requests admitted and not yet answered.", registry=r)
        self.batch_rows = Histogram(
            BATCH_ROWS, "Rows per batch sent to the model server.", buckets=BATCH_BUCKETS, registry=r
        )
        self.validation_failures = Counter(
            _strip_total(VALIDATION_FAILURES),
            "Rejected request rows by field and reason.",
            ["field", "reason"],
            registry=r,
        )
        self.rows_scored = Counter(_strip_total(ROWS_SCORED), "Rows scored by the model.", registry=r)
        self.predictions = Counter(
            _strip_total(PREDICTIONS), "Predictions by predicted class.", [PREDICTED_CLASS], registry=r
        )
        self.probability = Histogram(
            PROBABILITY, "Predicted probability of the positive class.", buckets=PROBABILITY_BUCKETS, registry=r
        )
        self.feature_missing = Counter(
            _strip_total(FEATURE_MISSING), "Scored rows with this feature missing.", ["feature"], registry=r
        )
        # absent until the drift window holds drift.MIN_ROWS rows (SlidingPSI.values() is empty before)
        self.drift_psi = Gauge(
            DRIFT_PSI,
            "Population stability index of the recent rows against the training reference, per feature.",
            ["feature"],
            registry=r,
        )
        self.drift_window_rows = Gauge(
            DRIFT_WINDOW_ROWS, "Rows in the drift window (PSI is exported once it holds the minimum).", registry=r
        )
        self.drift_window_rows.set(float("nan"))  # until the gateway has a drift window (track_drift_window)
        # 1 while any replica is up: "the stack can score", what ModelServerDown and the dashboards read
        self.model_up = Gauge(
            MODEL_UP,
            "1 while a model server (any replica) is up (not refusing connections, not silent for 2 s), else 0.",
            registry=r,
        )
        self.model_replica_up = Gauge(
            MODEL_REPLICA_UP,
            "1 while this model-server replica is up (not refusing connections, not silent for 2 s), else 0.",
            [REPLICA],
            registry=r,
        )
        self.model_replica_calls = Counter(
            _strip_total(MODEL_REPLICA_CALLS),
            "Batches sent to this model-server replica's /invocations (whatever the outcome).",
            [REPLICA],
            registry=r,
        )
        self.model_info = Info(MODEL_INFO, "The model being served.", registry=r)
        self.feedback = Counter(
            _strip_total(FEEDBACK), "Ground-truth feedback received, by outcome.", ["outcome"], registry=r
        )
        self.live_accuracy = Gauge(
            LIVE_ACCURACY,
            "Accuracy of the predictions that received ground truth, over the recent feedback window (NaN before any).",
            registry=r,
        )
        # NaN, not 0, until feedback arrives: no evidence is no value, and `NaN < 0.75` never fires
        self.live_accuracy.set(float("nan"))
        self.rejected = Counter(
            _strip_total(REJECTED),
            "Prediction requests not scored, by reason: queue_full, "
            "model_down, deadline, client_gone (also counted as status 499), withdrawn "
            "(dropped from the queue before the model call).",
            ["reason"],
            registry=r,
        )

        self.prediction_log_rows = Counter(
            _strip_total(PREDICTION_LOG_ROWS),
            "Served rows written to the loop store (counted once their transaction committed).",
            registry=r,
        )
        self.prediction_log_dropped = Counter(
            _strip_total(PREDICTION_LOG_DROPPED),
            "Served rows not written to the loop store (its buffer was full: the store slow or down).",
            registry=r,
        )
        self.prediction_log_pending = Gauge(
            PREDICTION_LOG_PENDING, "Served rows waiting to be written to the loop store.", registry=r
        )
        self.label_delay = Histogram(
            LABEL_DELAY,
            "Seconds from a prediction to its ground truth (labels stored, first per prediction).",
            buckets=LABEL_DELAY_BUCKETS,
            registry=r,
        )

    def track_drift_window(self, drift) -> None:
        """Export the row count of the gateway's drift window (a `SlidingPSI`, anything with len()), read at each
        scrape. The gateway calls it once it has built its window."""
        self.drift_window_rows.set_function(lambda: len(drift))
