"""The gateway's metric objects export no number without evidence, under Prometheus-style names."""

from __future__ import annotations

import math

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from msml.monitoring import metrics as M
from msml.monitoring.metrics import GatewayMetrics


def _samples(m: GatewayMetrics) -> dict[tuple[str, tuple], float]:
    text = generate_latest(m.registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_live_accuracy_is_nan_until_feedback_then_the_value_set():
    m = GatewayMetrics()
    assert M.LIVE_ACCURACY.endswith("_ratio")
    assert math.isnan(_samples(m)[(M.LIVE_ACCURACY, ())])
    m.live_accuracy.set(0.8)
    assert _samples(m)[(M.LIVE_ACCURACY, ())] == 0.8


def test_predictions_are_labelled_by_predicted_class_through_the_gateways_call():
    m = GatewayMetrics()
    m.predictions.labels(">50K").inc(3)  # the call the gateway makes
    assert _samples(m)[(M.PREDICTIONS, ((M.PREDICTED_CLASS, ">50K"),))] == 3


def test_drift_window_rows_follow_the_window_once_tracked():
    m = GatewayMetrics()
    assert math.isnan(_samples(m)[(M.DRIFT_WINDOW_ROWS, ())])  # no drift window: no count
    window: list = []
    m.track_drift_window(window)
    window.extend(range(7))
    assert _samples(m)[(M.DRIFT_WINDOW_ROWS, ())] == 7
    assert not any(name == M.DRIFT_PSI for name, _ in _samples(m))  # PSI only exists once the gateway sets it
