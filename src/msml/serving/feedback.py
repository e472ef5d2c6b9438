"""Prediction ids and ground-truth feedback: live accuracy that only the caller who got a prediction can steer.

Each scored row gets an id of 128 random bits (unguessable, unlike a counter), remembered with its
predicted class until feedback consumes it (once) or it ages out of the `max_tracked` most recent.
`/feedback` takes at most `max_items` labels per request and, when a token is configured
(`MSML_FEEDBACK_TOKEN`), only with `Authorization: Bearer <token>`. With the loop store (msml.loop.store) the
labels are kept there, first write wins, and an id made before a restart is found in the prediction log.
Live accuracy is the share of correct predictions among the last `window` labels written (each prediction
counted once, whichever gateway process receives its label).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import time
from collections import OrderedDict, deque
from typing import Any

from msml.data.contract import Contract
from msml.loop.store import Label, LoopStore
from msml.monitoring.metrics import GatewayMetrics
from msml.serving.errors import BODY, ClientError, Overloaded, body_error, short

log = logging.getLogger("msml.gateway")
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
        store: LoopStore | None = None,
    ) -> None:
        self.contract = contract
        self.metrics = metrics
        self.max_tracked = max_tracked
        self.max_items = max_items
        self.token = token.encode() if token else None
        self.store = store  # where labels are kept (and predictions looked up); None: in memory only
        # id → (predicted class 0/1, prediction time), until its label comes or it ages out
        self._predictions: OrderedDict[str, tuple[int, float]] = OrderedDict()
        self._outcomes: deque[int] = deque(maxlen=window)

    def remember(self, classes: list[int], now: float) -> list[str]:
        """New ids for these predicted classes, made at `now` (one urandom call for the whole batch)."""
        raw = os.urandom(ID_BYTES * len(classes)).hex()
        step = 2 * ID_BYTES
        ids = [raw[k : k + step] for k in range(0, len(raw), step)]
        predictions = self._predictions
        for pid, cls in zip(ids, classes, strict=False):
            predictions[pid] = (cls, now)
        while len(predictions) > self.max_tracked:
            predictions.popitem(last=False)
        return ids

    def resume(self) -> None:
        """Start the live-accuracy window from the store's most recent labels (a restart keeps the evidence)."""
        if self.store is None:
            return
        outcomes = self.store.recent_outcomes(self.contract.positive, self._outcomes.maxlen or 0)
        self._outcomes.extend(outcomes)
        if self._outcomes:
            self.metrics.live_accuracy.set(sum(self._outcomes) / len(self._outcomes))

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

    async def record(self, payload: Any) -> dict[str, Any]:
        """Score feedback `{"feedback": [{"id": ..., "label": ...}, ...]}` against the predictions made.

        With a store, each label is written there first (the first label per id wins; a later one is a
        `duplicate`), and an id this process does not remember (made before a restart, or by another gateway) is
        looked up in the store's prediction log. Only labels this call wrote count towards live accuracy. A
        store that cannot be reached is a 503 with Retry-After and changes nothing (the caller retries)."""
        items = self.parse(payload)
        now = time.time()
        memory = self._predictions
        # id → (predicted class, prediction time); an id repeated in one request counts once (the first label)
        known: dict[str, tuple[int, float]] = {}
        truths: dict[str, int] = {}
        for pid, truth in items:
            if pid not in truths:
                truths[pid] = truth
                if pid in memory:
                    known[pid] = memory[pid]
        labelled: set[str] = set()  # ids not in memory nor (yet) in the log whose label the store already has
        if self.store is None:
            written = set(known)
        else:
            try:
                written, from_store, labelled = await asyncio.to_thread(self._store_labels, truths, known, now)
            except Exception as exc:
                log.warning("feedback: the loop store refused %d labels (%s)", len(truths), exc)
                raise Overloaded(
                    "label_store_down", "the label store cannot be written right now; retry shortly", retry_after=5
                ) from None
            known |= from_store
        correct = incorrect = 0
        delays = []
        for pid in written:
            predicted, made = known[pid]
            ok = int(predicted == truths[pid])
            correct += ok
            incorrect += 1 - ok
            self._outcomes.append(ok)
            delays.append(now - made)
        for pid in known:
            memory.pop(pid, None)
        unknown = [pid for pid, _ in items if pid not in known and pid not in labelled]
        duplicates = len(items) - len(written) - len(unknown)
        m = self.metrics
        for outcome, n in (
            ("correct", correct),
            ("incorrect", incorrect),
            ("unknown_id", len(unknown)),
            ("duplicate", duplicates),
        ):
            if n:
                m.feedback.labels(outcome=outcome).inc(n)
        for delay in delays:
            m.label_delay.observe(max(delay, 0.0))
        accuracy = sum(self._outcomes) / len(self._outcomes) if self._outcomes else None
        if accuracy is not None:
            m.live_accuracy.set(accuracy)
        return {
            "accepted": correct + incorrect,
            "unknown_ids": [short(u) for u in unknown[:MAX_UNKNOWN_LISTED]],
            "unknown_count": len(unknown),
            "duplicate_count": duplicates,
            "live_accuracy": accuracy,
            "window": len(self._outcomes),
        }

    def _store_labels(
        self, truths: dict[str, int], known: dict[str, tuple[int, float]], now: float
    ) -> tuple[set[str], dict[str, tuple[int, float]], set[str]]:
        """(ids whose label this call wrote, the predictions found in the store for ids not in memory, ids found in
        neither whose label the store has: a repeat while the prediction still waits in the log's buffer). Runs in
        a worker thread. A label is written only for a prediction this gateway made (in memory or in the log)."""
        elsewhere = [pid for pid in truths if pid not in known]
        found = {pid: (p.predicted, p.time) for pid, p in self.store.predictions(elsewhere).items()}
        labelled = self.store.labelled([pid for pid in elsewhere if pid not in found])
        positive, negative = self.contract.positive, self.contract.negative
        written = self.store.record_labels(
            [Label(pid, positive if truths[pid] else negative, now) for pid in (*known, *found)]
        )
        return written, found, labelled

    def parse(self, payload: Any) -> list[tuple[str, int]]:
        """The (id, 0/1 truth) items of a feedback body; a ClientError (413/422) naming each bad item."""
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
