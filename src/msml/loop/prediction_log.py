"""The gateway's prediction log: every served row appended to the loop store, off the request path.

The request path does one thing: `append` puts a reference to the request's rows, answers and ids on a bounded
buffer (a deque append and two integer updates; nothing is copied, encoded or written there). A writer thread takes
up to `batch_rows` rows at a time, encodes them and writes them in one transaction (`LoopStore.log_predictions`).

Bounded: when `max_buffered_rows` rows are waiting (the store is slow or down), a request's rows are not buffered
and are counted in `msml_prediction_log_dropped_total` (whole requests: a request is logged entirely or not at all);
serving never waits for the store. A batch the store refused stays with the writer and is retried (with backoff;
the insert ignores ids already written, so a retry after an ambiguous commit writes each row once).
`msml_prediction_log_rows_total` counts rows only once their transaction has committed: what it counts survives a
restart. `stop` flushes the buffer (within its timeout; what it cannot write by then is counted as dropped).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

from msml.loop.store import LoopStore, Prediction

log = logging.getLogger("msml.loop")

# Writes of 1,000 rows, one transaction each. Measured on SQLite (20,000 Adult rows): 4 us of CPU and 16 us of wall
# time per row, so at the gateway's capacity (~7,000 rows/s) the writer takes ~3 % of a core and is idle ~90 % of
# the time (store.LoopStore.log_predictions has the comparison that chose the driver-level insert).
DEFAULT_BATCH_ROWS = 1000
# ~60 s of rows at 1,000 rows/s (or ~8 s at capacity) ride out a slow store; ~0.5 KB each, ~30 MB at most.
DEFAULT_MAX_BUFFERED_ROWS = 60_000
FLUSH_INTERVAL = 0.25  # seconds between the writer's looks at a buffer holding less than a batch
RETRY_BACKOFF = (0.25, 0.5, 1.0, 2.0, 5.0)  # seconds before retrying a refused batch (the last repeats)
# One write attempt's longest wait: SQLite's busy timeout (2 s), PostgreSQL's connect and statement timeouts (5 s).
ATTEMPT_GRACE = 10.0


class PredictionLog:
    """`append` from the event loop; `start`/`stop` the writer; `logged`, `dropped`: the row counters."""

    def __init__(
        self,
        store: LoopStore,
        contract_hash: str,
        logged,  # Counter: rows committed
        dropped,  # Counter: rows not logged
        max_buffered_rows: int = DEFAULT_MAX_BUFFERED_ROWS,
        batch_rows: int = DEFAULT_BATCH_ROWS,
        flush_interval: float = FLUSH_INTERVAL,
    ) -> None:
        self.store = store
        self.contract_hash = contract_hash
        self.max_buffered_rows = max_buffered_rows
        self.batch_rows = batch_rows
        self.flush_interval = flush_interval
        self._logged, self._dropped = logged, dropped
        self._buffer: deque[tuple] = deque()
        # rows appended (written by the event loop only) and rows done, written or dropped (by the writer only):
        # their difference is the buffer's size, with no lock between the two threads
        self._appended = 0
        self._done = 0
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._deadline = float("inf")  # set by `stop`: the writer gives up on a refusing store after it
        self.failing_since: float | None = None  # when the store began refusing writes (None: it is writing)

    @property
    def pending(self) -> int:
        """Rows appended and not yet written or dropped (the buffer plus the batch in the writer's hands)."""
        return self._appended - self._done

    def append(
        self,
        ids: Sequence[str],
        rows: Sequence[dict[str, Any]],
        probabilities: Sequence[float],
        classes: Sequence[int],
        model: Any,
        now: float,
    ) -> bool:
        """Buffer one request's answered rows, served at `now` by `model` (anything with `name` and `version`, the
        gateway's registry facts, or None); False (and counted as dropped) when the buffer is full."""
        n = len(ids)
        if self._appended - self._done + n > self.max_buffered_rows:
            self._dropped.inc(n)
            return False
        self._buffer.append((now, ids, rows, probabilities, classes, model))
        self._appended += n
        return True

    # ---- the writer -------------------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Write what is buffered, trying for `timeout` seconds; the writer counts what the store did not take by
        then as dropped. Waits for the attempt in flight (bounded by the store's timeouts), so a row is either
        counted logged or dropped, never both."""
        if self._thread is None:
            return
        self._deadline = time.monotonic() + timeout
        self._stopping.set()
        self._thread.join(timeout + ATTEMPT_GRACE)
        if self._thread.is_alive():
            log.error("prediction log: the store hangs; %d rows neither logged nor counted as dropped", self.pending)
        self._thread = None

    def _drop(self, held: list[Prediction]) -> None:
        rest = len(held)
        while self._buffer:
            rest += len(self._buffer.popleft()[1])
        self._dropped.inc(rest)
        self._done += rest

    def _take(self) -> list[Prediction]:
        """Up to about `batch_rows` rows off the buffer (whole requests), as store records."""
        batch: list[Prediction] = []
        buffer, contract_hash = self._buffer, self.contract_hash
        while buffer and len(batch) < self.batch_rows:
            t, ids, rows, probabilities, classes, model = buffer.popleft()
            name, version = (model.name, model.version) if model is not None else (None, None)
            batch += [
                Prediction(pid, t, name, version, contract_hash, row, p, c)
                for pid, row, p, c in zip(ids, rows, probabilities, classes, strict=True)
            ]
        return batch

    def _run(self) -> None:
        held: list[Prediction] = []  # the batch being written; a refused one is retried before anything newer
        failures = 0
        stopping = self._stopping
        while True:
            if not held:
                if self.pending < self.batch_rows and not stopping.is_set():
                    stopping.wait(self.flush_interval)  # a part batch waits a little for company
                if not self._buffer:
                    if stopping.is_set():
                        return
                    continue
                held = self._take()
            try:
                self.store.log_predictions(held)
            except Exception as exc:  # the store is down, locked or refusing: keep the batch, serve on
                failures += 1
                if self.failing_since is None:
                    self.failing_since = time.time()
                    log.warning("prediction log: the store refused %d rows (%s); retrying", len(held), exc)
                backoff = RETRY_BACKOFF[min(failures, len(RETRY_BACKOFF)) - 1]
                if not stopping.is_set():
                    stopping.wait(backoff)  # wakes early when `stop` is called
                elif time.monotonic() < self._deadline:
                    time.sleep(min(backoff, self._deadline - time.monotonic()))
                else:  # shutting down and the store still refuses: what it did not take is dropped
                    self._drop(held)
                    return
                continue
            if self.failing_since is not None:
                log.warning("prediction log: the store took rows again after %.1f s", time.time() - self.failing_since)
            failures, self.failing_since = 0, None
            self._logged.inc(len(held))
            self._done += len(held)
            held = []
