"""Prediction ids and ground-truth feedback without a server or a model (msml.serving.feedback): ids are
unguessable and consumed once, live accuracy and the feedback counters follow the labels received, bad feedback
is a 4xx naming the item, and a configured token is required."""

from __future__ import annotations

import asyncio
import math
import time

import pytest

from msml.monitoring.metrics import FEEDBACK, LIVE_ACCURACY, GatewayMetrics
from msml.serving.errors import ClientError
from msml.serving.feedback import ID_BYTES, MAX_UNKNOWN_LISTED, FeedbackBook


@pytest.fixture
def book(contract) -> FeedbackBook:
    return FeedbackBook(contract, GatewayMetrics(), window=4, max_tracked=50, max_items=10)


def sample(book: FeedbackBook, name: str, **labels: str) -> float | None:
    return book.metrics.registry.get_sample_value(name, labels)


NOW = time.time()  # when the predictions were made (label delay is measured from it)


def record(book: FeedbackBook, payload) -> dict:
    """`FeedbackBook.record` is a coroutine (it writes labels to the loop store off the event loop)."""
    return asyncio.run(book.record(payload))


def feedback(*items) -> dict:
    return {"feedback": [{"id": pid, "label": label} for pid, label in items]}


def test_ids_are_random_hex_one_per_prediction(book):
    ids = book.remember([0, 1, 1], NOW)
    assert len(ids) == 3 == len(set(ids))
    assert all(len(pid) == 2 * ID_BYTES and int(pid, 16) >= 0 for pid in ids)
    assert set(ids).isdisjoint(book.remember([0, 1, 1], NOW))


def test_feedback_scores_predictions_once_and_sets_live_accuracy(book, contract):
    assert math.isnan(sample(book, LIVE_ACCURACY))  # no evidence, no value
    negative_id, positive_id = book.remember([0, 1], NOW)
    # the contract's labels (padded as a CSV gives them) and 0/1 both name the truth
    answer = record(book, feedback((negative_id, f" {contract.negative} "), (positive_id, 0)))
    assert answer == {
        "accepted": 2,
        "unknown_ids": [],
        "unknown_count": 0,
        "duplicate_count": 0,
        "live_accuracy": 0.5,
        "window": 2,
    }
    assert sample(book, FEEDBACK, outcome="correct") == sample(book, FEEDBACK, outcome="incorrect") == 1
    assert sample(book, LIVE_ACCURACY) == 0.5
    again = record(book, feedback((negative_id, contract.positive)))  # consumed: its label cannot be sent twice
    assert (again["accepted"], again["unknown_count"], again["unknown_ids"]) == (0, 1, [negative_id])
    assert sample(book, FEEDBACK, outcome="unknown_id") == 1 and sample(book, LIVE_ACCURACY) == 0.5


def test_live_accuracy_covers_the_recent_window_only(book, contract):
    ids = book.remember([1] * 6, NOW)
    record(book, feedback(*((pid, 0) for pid in ids[:2])))  # two wrong
    answer = record(book, feedback(*((pid, contract.positive) for pid in ids[2:])))  # four right
    assert (answer["live_accuracy"], answer["window"]) == (1.0, 4)


def test_the_oldest_predictions_are_forgotten_beyond_max_tracked(book):
    first = book.remember([1], NOW)[0]
    book.remember([0] * book.max_tracked, NOW)
    assert record(book, feedback((first, 1)))["unknown_count"] == 1


def test_unknown_ids_are_counted_and_only_the_first_listed(contract):
    book = FeedbackBook(contract, GatewayMetrics(), max_items=100)
    answer = record(book, feedback(*((f"id-{i}", 1) for i in range(30))))
    assert answer["unknown_count"] == 30 and len(answer["unknown_ids"]) == MAX_UNKNOWN_LISTED


@pytest.mark.parametrize(
    ("payload", "status", "reason"),
    [
        ([], 422, "wrong_type"),
        ({"feedback": []}, 422, "wrong_type"),
        ({"feedback": [], "other": 1}, 422, "wrong_type"),
        ({"feedback": [{"id": "a"}]}, 422, "wrong_type"),
        ({"feedback": [{"id": 7, "label": 1}]}, 422, "wrong_type"),
        ({"feedback": [{"id": "a", "label": "maybe"}]}, 422, "unknown_category"),
        ({"feedback": [{"id": "a", "label": 2}]}, 422, "unknown_category"),
        ({"feedback": [{"id": "a", "label": True}]}, 422, "unknown_category"),
        ({"feedback": [{"id": "a", "label": 1}] * 11}, 413, "too_many_rows"),
    ],
    ids=[
        "not-an-object",
        "no-items",
        "extra-key",
        "no-label",
        "id-not-a-string",
        "unknown-label",
        "not-0-or-1",
        "boolean",
        "too-many",
    ],
)
def test_bad_feedback_is_refused_and_nothing_is_recorded(book, payload, status, reason):
    kept = book.remember([1], NOW)[0]
    with pytest.raises(ClientError) as info:
        record(book, payload)
    assert (info.value.status, info.value.details[0]["reason"]) == (status, reason)
    assert sample(book, FEEDBACK, outcome="correct") is None  # nothing counted ...
    assert record(book, feedback((kept, 1)))["accepted"] == 1  # ... and no prediction consumed


def test_one_bad_item_refuses_the_request_and_names_it(book):
    good = book.remember([1], NOW)[0]
    with pytest.raises(ClientError) as info:
        record(book, {"feedback": [{"id": good, "label": 1}, {"id": "x", "label": "maybe"}]})
    assert info.value.details[0]["row"] == 1 and "item 1" in info.value.message
    assert record(book, feedback((good, 1)))["accepted"] == 1


def test_a_configured_token_is_required(contract):
    FeedbackBook(contract, GatewayMetrics()).authorise(None)  # no token configured: open
    book = FeedbackBook(contract, GatewayMetrics(), token="s3cret")
    book.authorise("Bearer s3cret")
    for given in (None, "", "Bearer wrong", "s3cre"):
        with pytest.raises(ClientError) as info:
            book.authorise(given)
        assert info.value.status == 401 and "s3cret" not in info.value.message
