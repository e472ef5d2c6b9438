"""Adaptive micro-batching with a bounded queue: concurrent requests coalesced into one model-server call.

Handlers `submit` their validated rows and await a future; a single consumer task drains the queue
into batches of at most `max_batch_rows` and sends each with `call`, at most `max_concurrent` at a
time, then hands every caller its own slice of the results. A call that ends while a whole batch
waits starts that batch itself, before its own callers are answered (`_hand_over`); a whole batch
that waits while every slot is calling starts at once, as the one call beyond them (`_pipeline`).

Adaptive: an idle gateway sends a lone request at once (no added latency at concurrency 1). It
waits only while other requests have been accepted but not yet queued (`arriving`), or while the
batch is smaller than the previous one: the callers of that batch are answered just as this one is
collected, and their next requests come back within milliseconds. Without that wait a closed loop of
clients splits into two alternating batches (one full, one of stragglers), each paying a whole model
call (measured at c=32: 444 req/s). It waits `max_wait` × the share of those rows still missing: a
batch that is nearly whole (an open loop near capacity) goes at once rather than leave the model
server idle.

Resizable: `resize` changes how many calls may be in flight (the gateway follows the healthy replicas); a
smaller limit takes no slot from a call already made, it only waits for calls to end.

Bounded (as MLServer's adaptive batcher bounds its queue and BentoML's dispatcher refuses work it
cannot finish within its latency target): `submit` raises `QueueFull` at once when the queue holds
`max_queued_rows` rows or when its oldest item has waited longer than `max_queue_delay` — the queue
is then not draining fast enough for a new request to be answered in time, and a quick 503 with
Retry-After serves the client better than a slow one. Items whose caller has gone (the future is
cancelled: deadline passed, client disconnected) are dropped before they reach the model.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

Rows = list[list[Any]]


class _Slots:
    """A semaphore whose size can change: `used` calls hold a slot, new ones wait while `used >= limit`."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._freed = asyncio.Event()

    async def acquire(self) -> None:
        while self.used >= self.limit:
            self._freed.clear()
            await self._freed.wait()
        self.used += 1

    def release(self) -> None:
        self.used -= 1
        self._freed.set()

    def resize(self, limit: int) -> None:
        self.limit = limit
        self._freed.set()


class QueueFull(Exception):
    """The batcher cannot take more work now; `why` says which bound was hit."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


@dataclass(slots=True)
class _Item:
    rows: Rows
    future: asyncio.Future = field(repr=False)
    queued_at: float = 0.0


class MicroBatcher:
    def __init__(
        self,
        call: Callable[[Rows], Awaitable[Sequence[Any]]],
        max_batch_rows: int = 256,
        max_wait: float = 0.002,
        max_concurrent: int = 1,
        max_queued_rows: int = 4096,
        max_queue_delay: float = 0.25,
        on_batch: Callable[[int], None] | None = None,
        on_dropped: Callable[[int], None] | None = None,
    ) -> None:
        if max_batch_rows < 1 or max_concurrent < 1 or max_wait < 0 or max_queued_rows < 1 or max_queue_delay <= 0:
            raise ValueError(
                "max_batch_rows, max_concurrent, max_queued_rows must be ≥ 1; max_wait ≥ 0; max_queue_delay > 0"
            )
        self.call = call
        self.max_batch_rows = max_batch_rows
        self.max_wait = max_wait
        self.max_queued_rows = max_queued_rows
        self.max_queue_delay = max_queue_delay
        self.on_batch = on_batch
        self.on_dropped = on_dropped  # called with the number of requests dropped because their caller left
        self.arriving = 0  # requests accepted by a handler and not yet submitted (set by the gateway)
        self.queued_rows = 0
        self._last_rows = 0  # rows in the batch sent last
        self._queue: deque[_Item] = deque()
        self._wakeup = asyncio.Event()
        self._slots = _Slots(max_concurrent)
        self._consumer: asyncio.Task | None = None
        self._calls: dict[asyncio.Task, list[_Item]] = {}  # model calls in flight and their batches
        self._extra = False  # the one call beyond the slots is in flight (`_pipeline`)

    @property
    def max_concurrent(self) -> int:
        """Model calls at a time (the slots), not counting the one for a whole batch beyond them."""
        return self._slots.limit

    def resize(self, max_concurrent: int) -> None:
        """Allow `max_concurrent` calls at a time from now on (≥ 1); calls in flight finish as they are."""
        if max_concurrent < 1:
            raise ValueError(f"max_concurrent must be ≥ 1, got {max_concurrent}")
        self._slots.resize(max_concurrent)

    @property
    def max_calls(self) -> int:
        """Model calls in flight at most: one a slot, and the one for a whole batch beyond them (`_pipeline`)."""
        return self.max_concurrent + 1

    async def start(self) -> None:
        if self._consumer is None:
            self._consumer = asyncio.create_task(self._run(), name="micro-batcher")

    async def stop(self) -> None:
        if self._consumer is not None:
            for task in (self._consumer, *self._calls):  # in-flight calls too: their callers get the failure
                task.cancel()
            batches = [item for batch in self._calls.values() for item in batch]
            await asyncio.gather(self._consumer, *self._calls, return_exceptions=True)
            self._consumer = None
        else:
            batches = []
        _fail([*batches, *self._queue], RuntimeError("gateway is shutting down"))  # a call cancelled before it ran
        self._queue.clear()
        self.queued_rows = 0

    def admit(self, n_rows: int, max_delay: float | None = None) -> None:
        """Raise QueueFull unless `n_rows` more rows can be queued and still be answered in time: the oldest
        queued item has waited at most `max_delay` seconds (default `max_queue_delay`)."""
        max_delay = self.max_queue_delay if max_delay is None else max_delay
        if self.queued_rows + n_rows > self.max_queued_rows:
            raise QueueFull(f"{self.queued_rows} rows are queued (limit {self.max_queued_rows})")
        self._drop_gone()  # callers that left do not hold the queue up
        if self._queue:
            waited = asyncio.get_running_loop().time() - self._queue[0].queued_at
            if waited > max_delay:
                raise QueueFull(
                    f"the oldest queued request has waited {waited * 1000:.0f} ms (limit {max_delay * 1000:.0f} ms)"
                )

    def submit(self, rows: Rows) -> asyncio.Future:
        """Queue `rows` (lists of feature values); the future gets one result per row, in order.

        Raises QueueFull when over a bound. Cancel the future to withdraw the rows (dropped if not yet sent).
        """
        self.admit(len(rows))
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.append(_Item(rows, future, loop.time()))
        self.queued_rows += len(rows)
        self._wakeup.set()
        self._pipeline()
        return future

    def _drop_gone(self) -> None:
        """Drop the leading items whose callers have gone (deadline passed, client disconnected); counted."""
        dropped = 0
        while self._queue and self._queue[0].future.done():
            self.queued_rows -= len(self._queue.popleft().rows)
            dropped += 1
        if dropped and self.on_dropped is not None:
            self.on_dropped(dropped)

    def _take(self, batch: list[_Item], n: int) -> int:
        """Move queued items into `batch` (holding `n` rows) while they fit; the rows it holds then. The first
        item is taken whatever its size; callers that left are dropped on the way."""
        while True:
            self._drop_gone()
            if not self._queue or (batch and n + len(self._queue[0].rows) > self.max_batch_rows):
                return n
            item = self._queue.popleft()
            self.queued_rows -= len(item.rows)
            batch.append(item)
            n += len(item.rows)

    async def _wait(self, timeout: float | None) -> bool:
        """Wait for something to be queued; False on timeout."""
        self._wakeup.clear()
        if timeout is None:
            await self._wakeup.wait()
            return True
        if timeout <= 0:
            return False
        try:
            async with asyncio.timeout(timeout):
                await self._wakeup.wait()
            return True
        except TimeoutError:
            return False

    async def _collect(self) -> list[_Item]:
        loop = asyncio.get_running_loop()
        batch: list[_Item] = []
        while not (n := self._take(batch, 0)):
            await self._wait(None)
        start = loop.time()
        while n < self.max_batch_rows and not self._queue:  # a queued item that did not fit starts the next batch
            # the rows still due: the previous batch's (its callers come back, in a closed loop) or those being
            # read now; waited for `max_wait` × the share of them still missing
            due = min(max(self._last_rows, n + self.arriving), self.max_batch_rows)
            budget = self.max_wait * (1 - n / due)
            if not (budget > 0 and await self._wait(start + budget - loop.time())):
                break
            n = self._take(batch, n)
        self._last_rows = n
        return batch

    async def _run(self) -> None:
        while True:
            await self._slots.acquire()
            try:
                batch = await self._collect()
            except BaseException:
                self._slots.release()
                raise
            self._start(batch)

    def _start(self, batch: list[_Item], extra: bool = False) -> None:
        task = asyncio.create_task(self._send(batch, extra))
        self._calls[task] = batch
        task.add_done_callback(self._calls.pop)

    def _pipeline(self) -> None:
        """While every slot is calling the model and a whole batch waits, that batch starts at once as the one
        call beyond the slots: the model server scores it while the gateway answers the call before, where with
        one call at a time each waited for the other (bench_gateway's capacity on 2 cores: 6,113 req/s, then
        7,789 with this call). A part batch waits for a slot instead, and grows meanwhile: at a light load one
        call at a time keeps batches large (two slots for any batch, `--max-concurrent-batches 2`, halved them
        and took the model server to 0.98 of a core at 2,718 req/s; with this rule it used 0.65 at 2,990)."""
        if self._extra or self.queued_rows < self.max_batch_rows or len(self._calls) < self.max_concurrent:
            return
        batch: list[_Item] = []
        if self._take(batch, 0):
            self._extra = True
            self._start(batch, extra=True)

    def _ended(self, extra: bool) -> None:
        """A call has ended: its slot (or the extra call's place) goes to what waits."""
        if extra:
            self._extra = False
        else:
            self._hand_over()
        self._pipeline()

    def _hand_over(self) -> None:
        """A call has ended: when a whole batch (the size of the last) is already queued, its slot goes straight
        to it, started before the ended call's callers are answered; else back to the consumer (`_run`), which
        waits for stragglers. Under load each hop through the event loop waits behind a turn of handlers (tens of
        ms at capacity), and the model server idles meanwhile."""
        if self._slots.used <= self._slots.limit and self.queued_rows >= min(self._last_rows, self.max_batch_rows):
            batch: list[_Item] = []
            if n := self._take(batch, 0):
                self._last_rows = n
                self._start(batch)
                return
        self._slots.release()

    async def _send(self, batch: list[_Item], extra: bool) -> None:
        rows: Rows = [row for item in batch for row in item.rows]
        try:
            if self.on_batch is not None:
                self.on_batch(len(rows))
            results = await self.call(rows)
            if len(results) != len(rows):
                raise ValueError(f"model server returned {len(results)} predictions for {len(rows)} rows")
        except asyncio.CancelledError:  # stopping: nothing more is started
            if not extra:
                self._slots.release()
            _fail(batch, RuntimeError("gateway is shutting down"))
            raise
        except BaseException as exc:
            self._ended(extra)
            _fail(batch, exc)
            return
        self._ended(extra)
        start = 0
        for item in batch:
            end = start + len(item.rows)
            if not item.future.done():  # the caller may have gone away
                item.future.set_result(list(results[start:end]))
            start = end


def _fail(batch: list[_Item], exc: BaseException) -> None:
    """Every caller of the batch still waiting gets the failure."""
    for item in batch:
        if not item.future.done():
            item.future.set_exception(exc)
