"""Adaptive micro-batching: concurrent requests coalesced into one model-server call.

Handlers `submit` their validated rows and await a future; a single consumer task drains the queue
into batches of at most `max_batch_rows` and sends each with `call`, at most `max_concurrent` at a
time, then hands every caller its own slice of the results.

Adaptive: an idle gateway sends a lone request at once (no added latency at concurrency 1). It
waits — at most `max_wait` seconds — only while other requests have been accepted but not yet
queued (`arriving`), so under load batches fill up while the model server is busy.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Sequence

Rows = list[list[Any]]


@dataclass(slots=True)
class _Item:
    rows: Rows
    future: asyncio.Future = field(repr=False)


class MicroBatcher:
    def __init__(self, call: Callable[[Rows], Awaitable[Sequence[Any]]], max_batch_rows: int = 256,
                 max_wait: float = 0.002, max_concurrent: int = 1,
                 on_batch: Callable[[int], None] | None = None) -> None:
        if max_batch_rows < 1 or max_concurrent < 1 or max_wait < 0:
            raise ValueError("max_batch_rows and max_concurrent must be ≥ 1, max_wait ≥ 0")
        self.call = call
        self.max_batch_rows = max_batch_rows
        self.max_wait = max_wait
        self.max_concurrent = max_concurrent
        self.on_batch = on_batch
        self.arriving = 0  # requests accepted by a handler and not yet submitted (set by the gateway)
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._slots = asyncio.Semaphore(max_concurrent)
        self._consumer: asyncio.Task | None = None
        self._calls: set[asyncio.Task] = set()
        self._carry: _Item | None = None

    async def start(self) -> None:
        if self._consumer is None:
            self._consumer = asyncio.create_task(self._run(), name="micro-batcher")

    async def stop(self) -> None:
        if self._consumer is not None:
            self._consumer.cancel()
            await asyncio.gather(self._consumer, *self._calls, return_exceptions=True)
            self._consumer = None
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if not item.future.done():
                item.future.set_exception(RuntimeError("gateway is shutting down"))

    async def submit(self, rows: Rows) -> list[Any]:
        """Score `rows` (lists of feature values); returns one result per row, in order."""
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Item(rows, future))
        return await future

    async def _next(self, timeout: float | None) -> _Item | None:
        if self._carry is not None:
            item, self._carry = self._carry, None
            return item
        if timeout is None:
            return await self._queue.get()
        try:
            return self._queue.get_nowait()
        except asyncio.QueueEmpty:
            if timeout <= 0:
                return None
        try:
            return await asyncio.wait_for(self._queue.get(), timeout)
        except (asyncio.TimeoutError, TimeoutError):
            return None

    async def _collect(self) -> list[_Item]:
        loop = asyncio.get_running_loop()
        first = await self._next(None)
        batch, n = [first], len(first.rows)
        deadline = loop.time() + self.max_wait
        while n < self.max_batch_rows:
            wait = deadline - loop.time() if self.arriving > 0 else 0.0
            item = await self._next(wait)
            if item is None:
                break
            if n + len(item.rows) > self.max_batch_rows:
                self._carry = item  # starts the next batch
                break
            batch.append(item)
            n += len(item.rows)
        return batch

    async def _run(self) -> None:
        while True:
            await self._slots.acquire()
            try:
                batch = await self._collect()
            except BaseException:
                self._slots.release()
                raise
            task = asyncio.create_task(self._send(batch))
            self._calls.add(task)
            task.add_done_callback(self._calls.discard)

    async def _send(self, batch: list[_Item]) -> None:
        rows: Rows = [row for item in batch for row in item.rows]
        try:
            if self.on_batch is not None:
                self.on_batch(len(rows))
            results = await self.call(rows)
            if len(results) != len(rows):
                raise ValueError(f"model server returned {len(results)} predictions for {len(rows)} rows")
        except BaseException as exc:  # every caller of the batch gets the failure
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        finally:
            self._slots.release()
        start = 0
        for item in batch:
            end = start + len(item.rows)
            if not item.future.done():  # the caller may have gone away
                item.future.set_result(list(results[start:end]))
            start = end
