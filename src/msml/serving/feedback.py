"""Prediction ids and ground-truth feedback: live accuracy that only the caller who got a prediction can steer.

Each scored row gets an id of 128 random bits (unguessable, unlike a counter), remembered with its
predicted class until feedback consumes it (once) or it ages out of the `max_tracked` most recent.
`/feedback` takes at most `max_items` labels per request and, when a token is configured
(`MSML_FEEDBACK_TOKEN`), only with `Authorization: Bearer <token>`.
"""

from __future__ import annotations

import hmac
import os
from collections import OrderedDict, deque
from typing import Any

from msml.data.contract import Contract
from msml.monitoring.metrics import GatewayMetrics
from msml.serving.errors import BODY, ClientError, body_error, short

ID_BYTES = 16  # 128 bits
MAX_UNKNOWN_LISTED = 20  # unknown ids echoed back per answer (the count is always given)


class FeedbackBook:
    def __init__(
        self,
        contract: Contract,
        metrics: GatewayMetrics,
        window: int = 1000,
        max_tracked: int = 100_000,
        max_items: int = 1000,
        token: str | None = None,
    ) -> None:
        self.contract = contract
        self.metrics = metrics
        self.max_tracked = max_tracked
        self.max_items = max_items
        self.token = token.encode() if token else None
        self._predictions: OrderedDict[str, int] = OrderedDict()  # id → predicted class (0/1)
        self._outcomes: deque[int] = deque(maxlen=window)

    def remember(self, classes: list[int]) -> list[str]:
        """New ids for these predicted classes (one urandom call for the whole batch)."""
        raw = os.urandom(ID_BYTES * len(classes)).hex()
        step = 2 * ID_BYTES
        ids = [raw[k : k + step] for k in range(0, len(raw), step)]
        predictions = self._predictions
        for pid, cls in zip(ids, classes, strict=True):
            predictions[pid] = cls
        while len(predictions) > self.max_tracked:
            predictions.popitem(last=False)
        return ids

    def authorise(self, authorization: str | None) -> None:
        if self.token is None:
            return
        given = (authorization or "").removeprefix("Bearer ").strip().encode()
        if not hmac.compare_digest(given, self.token):
            raise body_error(
                401,
                "unauthorised",
                "feedback needs 'Authorization: Bearer <token>' (the gateway's MSML_FEEDBACK_TOKEN)",
            )

    def record(self, payload: Any) -> dict[str, Any]:
        """Score feedback `{"feedback": [{"id": ..., "label": ...}, ...]}` against the remembered predictions."""
        items = self._parse(payload)
        correct = incorrect = 0
        unknown = []
        for pid, truth in items:
            predicted = self._predictions.pop(pid, None)
            if predicted is None:
                unknown.append(pid)
                continue
            ok = int(predicted == truth)
            correct += ok
            incorrect += 1 - ok
            self._outcomes.append(ok)
        m = self.metrics
        for outcome, n in (("correct", correct), ("incorrect", incorrect), ("unknown_id", len(unknown))):
            if n:
                m.feedback.labels(outcome=outcome).inc(n)
        accuracy = sum(self._outcomes) / len(self._outcomes) if self._outcomes else None
        if accuracy is not None:
            m.live_accuracy.set(accuracy)
        return {
            "accepted": correct + incorrect,
            "unknown_ids": [short(u) for u in unknown[:MAX_UNKNOWN_LISTED]],
            "unknown_count": len(unknown),
            "live_accuracy": accuracy,
            "window": len(self._outcomes),
        }

    def _parse(self, payload: Any) -> list[tuple[str, int]]:
        shape = "feedback must be {'feedback': [{'id': ..., 'label': ...}, ...]}"
        if (
            not isinstance(payload, dict)
            or set(payload) != {"feedback"}
            or not isinstance(payload["feedback"], list)
            or not payload["feedback"]
        ):
            raise body_error(422, "wrong_type", shape)
        raw = payload["feedback"]
        if len(raw) > self.max_items:
            raise body_error(
                413, "too_many_rows", f"{len(raw)} feedback items is over the limit of {self.max_items} per request"
            )
        items, details = [], []
        for i, item in enumerate(raw):
            if not isinstance(item, dict) or set(item) != {"id", "label"} or not isinstance(item["id"], str):
                details.append(
                    {
                        "row": i,
                        "field": BODY,
                        "reason": "wrong_type",
                        "message": "an item must be an object with exactly 'id' (string) and 'label'",
                    }
                )
                continue
            truth = self._truth(item["label"])
            if truth is None:
                details.append(
                    {
                        "row": i,
                        "field": "label",
                        "reason": "unknown_category",
                        "message": f"label must be one of {list(self.contract.labels)} or 0/1, "
                        f"got {short(item['label'])!r}",
                    }
                )
                continue
            items.append((item["id"], truth))
        if details:
            raise ClientError(
                422,
                f"{len(details)} bad feedback item(s); first: item {details[0]['row']}: {details[0]['message']}",
                details,
            )
        return items

    def _truth(self, label: Any) -> int | None:
        if isinstance(label, bool):
            return None
        if isinstance(label, int) and label in (0, 1):
            return label
        if isinstance(label, str):
            label = label.strip()
            if label in self.contract.labels:
                return int(label == self.contract.positive)
        return None
