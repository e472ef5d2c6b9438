"""The micro-batcher in-process (no sockets): coalescing, its bounds, callers that leave, failures."""

from __future__ import annotations

import asyncio

import pytest

from msml.serving.batching import MicroBatcher, QueueFull


class Model:
    """A stand-in `call`: records each batch; blocks while `gate` is clear; answers row[0] * 10."""

    def __init__(self, fail: Exception | None = None) -> None:
        self.batches: list[list[list[int]]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail = fail

    async def __call__(self, rows):
        self.batches.append(rows)
        await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return [r[0] * 10 for r in rows]


def run(coro):
    return asyncio.run(coro)


def test_concurrent_submits_share_a_call_and_each_gets_its_own_slice():
    async def main():
        model = Model()
        model.gate.clear()  # the first call blocks, so the rest queue up behind it
        b = MicroBatcher(model, max_batch_rows=4, max_wait=0.01)
        await b.start()
        first = b.submit([[0]])
        await asyncio.sleep(0)
        futures = [b.submit([[i], [i + 100]]) for i in range(1, 5)]  # 8 rows: two batches of 4
        model.gate.set()
        results = await asyncio.gather(first, *futures)
        await b.stop()
        return model.batches, results

    batches, results = run(main())
    assert results == [[0], *[[i * 10, (i + 100) * 10] for i in range(1, 5)]]
    assert [len(x) for x in batches] == [1, 4, 4]


def test_queue_full_by_rows():
    async def main():
        model = Model()
        model.gate.clear()
        b = MicroBatcher(model, max_batch_rows=4, max_queued_rows=3, max_queue_delay=60)
        await b.start()
        b.submit([[1]])
        await asyncio.sleep(0)  # taken by the (blocked) call: no longer queued
        b.submit([[2], [3]])
        b.submit([[4]])
        with pytest.raises(QueueFull, match="3 rows are queued"):
            b.submit([[5]])
        model.gate.set()
        await b.stop()

    run(main())


def test_queue_full_when_the_oldest_item_waited_too_long():
    async def main():
        model = Model()
        model.gate.clear()
        b = MicroBatcher(model, max_queue_delay=0.05)
        await b.start()
        b.submit([[1]])
        await asyncio.sleep(0)
        b.submit([[2]])  # queued behind the blocked call
        b.admit(1)  # fine: it has only just arrived
        await asyncio.sleep(0.08)
        with pytest.raises(QueueFull, match="has waited"):
            b.submit([[3]])
        model.gate.set()
        await b.stop()

    run(main())


def test_withdrawn_items_never_reach_the_model_and_are_counted():
    """Queued behind a call: [gone, live, gone, live]. The next batch is both live ones, whether the gone one is at
    the head or behind a live one (which once dropped the live item after it: its caller waited for a 504)."""

    async def main():
        model = Model()
        model.gate.clear()
        dropped = []
        b = MicroBatcher(model, max_batch_rows=10, on_dropped=dropped.append)
        await b.start()
        first = b.submit([[1]])
        await asyncio.sleep(0)
        queued = [b.submit([[i]]) for i in (2, 3, 4, 5)]
        for gone in queued[0::2]:
            gone.cancel()  # the caller left (deadline or disconnect) while queued
        model.gate.set()
        answers = await asyncio.wait_for(asyncio.gather(first, *queued[1::2]), 5)
        await b.stop()
        return answers, model.batches, sum(dropped)

    answers, batches, dropped = run(main())
    assert answers == [[10], [30], [50]] and batches == [[[1]], [[3], [5]]] and dropped == 2


def test_a_failed_call_fails_every_caller_of_the_batch_and_the_batcher_goes_on():
    async def main():
        model = Model(fail=RuntimeError("model broke"))
        model.gate.clear()
        b = MicroBatcher(model, max_batch_rows=10)
        await b.start()
        first = b.submit([[1]])
        await asyncio.sleep(0)
        others = [b.submit([[i]]) for i in range(2, 5)]
        model.gate.set()
        outcomes = await asyncio.gather(first, *others, return_exceptions=True)
        model.fail = None
        after = await b.submit([[7]])
        await b.stop()
        return outcomes, after, model.batches

    outcomes, after, batches = run(main())
    assert all(isinstance(o, RuntimeError) for o in outcomes)
    assert after == [70] and [len(x) for x in batches] == [1, 3, 1]


def test_a_lone_request_is_sent_at_once():
    async def main():
        model = Model()
        b = MicroBatcher(model, max_wait=5.0)  # would be seen if it waited
        await b.start()
        loop = asyncio.get_running_loop()
        start = loop.time()
        assert await b.submit([[1]]) == [10]
        elapsed = loop.time() - start
        await b.stop()
        return elapsed

    assert run(main()) < 1.0


def test_a_whole_batch_waiting_behind_busy_slots_starts_at_once_as_one_extra_call():
    """While every slot's call is in flight, a whole batch starts at once (one call beyond the slots, no more),
    so the model scores it while the gateway answers the call before; a part batch waits for a slot."""

    async def main():
        model = Model()
        model.gate.clear()  # every call blocks until the end
        b = MicroBatcher(model, max_batch_rows=4, max_wait=0.01)
        await b.start()
        futures = [b.submit([[0]])]
        await asyncio.sleep(0.02)  # a lone row goes at once: the one slot is calling
        futures += [b.submit([[i]]) for i in range(1, 4)]
        await asyncio.sleep(0.02)
        part = [len(x) for x in model.batches]  # 3 rows wait for the slot
        futures += [b.submit([[i]]) for i in range(4, 13)]
        await asyncio.sleep(0.02)
        whole = [len(x) for x in model.batches]  # 4 rows went at once; the other 8 wait: one extra call at most
        model.gate.set()
        results = await asyncio.gather(*futures)
        await b.stop()
        return part, whole, [len(x) for x in model.batches], results

    part, whole, sizes, results = run(main())
    assert part == [1] and whole == [1, 4] and sizes == [1, 4, 4, 4]
    assert results == [[i * 10] for i in range(13)]


def test_the_wait_for_stragglers_shrinks_as_the_batch_fills():
    """After a batch of 10, a batch of 9 waits for the 10th at most max_wait × 1/10; a batch of 1, longer."""

    async def main():
        model = Model()
        b = MicroBatcher(model, max_wait=2.0)
        await b.start()
        await asyncio.gather(*(b.submit([[i]]) for i in range(10)))  # one call of 10 rows
        loop = asyncio.get_running_loop()
        start = loop.time()
        await asyncio.gather(*(b.submit([[i]]) for i in range(9)))
        nine = loop.time() - start
        start = loop.time()
        await b.submit([[1]])  # the previous batch had 9: waits up to 2 s × 8/9 for them
        one = loop.time() - start
        await b.stop()
        return [len(x) for x in model.batches], nine, one

    sizes, nine, one = run(main())
    assert sizes == [10, 9, 1]
    assert 0.15 < nine < 0.6 and one > 1.5


def test_stop_fails_what_is_still_queued():
    async def main():
        model = Model()
        model.gate.clear()
        b = MicroBatcher(model)
        await b.start()
        in_flight = b.submit([[1]])
        await asyncio.sleep(0)
        queued = b.submit([[2]])
        await b.stop()
        for future in (in_flight, queued):
            with pytest.raises(RuntimeError, match="shutting down"):
                await future

    run(main())


def test_the_in_flight_limit_can_shrink_and_grow():
    """`resize` (the gateway follows the replicas up): fewer slots take none from calls in flight, so a smaller
    limit holds once they end; more slots start waiting batches at once."""

    class Counting(Model):
        def __init__(self) -> None:
            super().__init__()
            self.now = self.most = 0

        async def __call__(self, rows):
            self.now += 1
            self.most = max(self.most, self.now)
            try:
                return await super().__call__(rows)
            finally:
                self.now -= 1

    async def main():
        model = Counting()
        model.gate.clear()
        b = MicroBatcher(model, max_batch_rows=1, max_wait=0, max_concurrent=3)
        await b.start()
        futures = [b.submit([[i]]) for i in range(12)]
        await asyncio.sleep(0.02)
        three = model.now  # 3 slots (all submitted before any call started: no extra call yet)
        b.resize(1)
        model.gate.set()
        await asyncio.sleep(0)
        model.gate.clear()  # the calls in flight end; from now on one slot (and the extra call) at most
        model.most = model.now
        await asyncio.sleep(0.02)
        one = model.most
        b.resize(2)
        await asyncio.sleep(0.02)
        two = model.now
        model.gate.set()
        results = await asyncio.gather(*futures)
        await b.stop()
        return three, one, two, results

    three, one, two, results = run(main())
    assert (three, one, two) == (3, 2, 3)  # then one slot and the extra call; then two and the extra
    assert results == [[i * 10] for i in range(12)]
    with pytest.raises(ValueError):
        MicroBatcher(Model()).resize(0)
