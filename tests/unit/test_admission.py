"""Admission's backlog signals on real sockets and a real event loop: the accept queue and loop lag."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
import time
from collections.abc import Iterator

import pytest

from msml.serving.admission import Pressure, accept_queue

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="TCP_INFO's accept queue is Linux's")


@contextlib.contextmanager
def _pending(n: int) -> Iterator[tuple[socket.socket, list[socket.socket]]]:
    """A listening socket with `n` connections the kernel completed and nobody accepted; all closed after."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=64)
    clients = []
    try:
        clients += [socket.create_connection(("127.0.0.1", listener.getsockname()[1])) for _ in range(n)]
        yield listener, clients
    finally:
        for c in [*clients, listener]:
            c.close()


@linux_only
def test_accept_queue_counts_connections_not_yet_accepted():
    with _pending(5) as (listener, _):
        assert accept_queue(listener) == 5
        listener.accept()[0].close()
        assert accept_queue(listener) == 4


@linux_only
def test_a_full_accept_queue_refuses_until_it_drains():
    async def main(listener, clients):
        pressure = Pressure(max_loop_lag=10.0, max_accept_queue=2, listener=listener)
        pressure.start()
        await asyncio.sleep(0.05)  # a few ticks
        busy = pressure.too_busy()
        for _ in clients:
            listener.accept()[0].close()
        await asyncio.sleep(0.05)
        drained = pressure.too_busy()
        await pressure.stop()
        return busy, drained

    with _pending(3) as (listener, clients):
        busy, drained = asyncio.run(main(listener, clients))
    assert busy == "3 connections wait to be accepted (limit 2)"
    assert drained is None


async def _until(condition) -> None:
    async with asyncio.timeout(5):
        while not condition():
            await asyncio.sleep(0.005)


@linux_only
def test_a_burst_of_connects_seen_by_one_tick_only_is_not_refused_on():
    """A client filling its pool puts a burst of connects in the accept queue that a loop keeping up accepts
    in its next turn: refused on only once two ticks in a row have seen the queue over its limit."""

    async def main(listener, clients):
        pressure = Pressure(max_loop_lag=10.0, max_accept_queue=2, listener=listener, interval=0.02)
        pressure.start()
        await asyncio.sleep(0.05)  # ticks that saw nothing waiting
        port = listener.getsockname()[1]
        clients += [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
        await _until(lambda: pressure._sampled == 3)  # the first tick to see them
        burst = pressure.too_busy() if pressure.queued == 0 else "the second tick came first"
        await _until(lambda: pressure.queued == 3)  # the next one
        backlog = pressure.too_busy()
        await pressure.stop()
        return burst, backlog

    with _pending(0) as (listener, clients):
        burst, backlog = asyncio.run(main(listener, clients))
    assert burst is None
    assert backlog == "3 connections wait to be accepted (limit 2)"


@linux_only
def test_connections_accepted_since_the_last_sample_are_not_refused_on():
    """Connects seen waiting by the ticks and accepted right after: the next request is not refused on those
    samples for the rest of the tick's interval."""

    async def main(listener, clients):
        pressure = Pressure(max_loop_lag=10.0, max_accept_queue=2, listener=listener, interval=0.05)
        pressure.start()
        await _until(lambda: pressure.queued == 3)  # two ticks in a row saw 3 waiting
        sampled = pressure.queued
        for _ in clients:
            listener.accept()[0].close()
        busy = pressure.too_busy()  # the next tick is ~30 ms away
        await pressure.stop()
        return sampled, busy

    with _pending(3) as (listener, clients):
        sampled, busy = asyncio.run(main(listener, clients))
    assert sampled == 3
    assert busy is None


def test_a_blocked_loop_refuses_at_once_and_recovers():
    async def main():
        pressure = Pressure(max_loop_lag=0.05, max_accept_queue=64)
        before = pressure.too_busy()  # not started: nothing known, nothing refused
        pressure.start()
        await asyncio.sleep(0.05)
        calm = pressure.too_busy()
        time.sleep(0.2)  # the loop runs nothing else meanwhile: what a backlog of work does to it
        blocked = pressure.too_busy()  # the ticker is overdue: seen before it even runs
        await asyncio.sleep(0)  # the late tick runs and records its lag
        await asyncio.sleep(0.05)
        recovered = pressure.too_busy()
        await pressure.stop()
        return before, calm, blocked, recovered

    before, calm, blocked, recovered = asyncio.run(main())
    assert before is None and calm is None and recovered is None
    assert blocked is not None and blocked.startswith("requests wait ") and "(limit 50 ms)" in blocked


def _window(pressure: Pressure, asked: int, refused: int, answered: int, now: float) -> None:
    for i in range(asked):
        pressure.count(refused=i < refused)
    pressure.answered = answered
    pressure.close_window(now)


def test_arrivals_well_over_the_answered_rate_tighten_the_limits_for_the_next_window():
    """Shedding: a window whose arrivals are ≥ SHED_OFFERED × the best answered rate of late, with refusals,
    tightens the loop-lag and queue-delay limits (a loop 40 ms behind passes a limit of 50 ms before, not
    during); refusals at a load the gateway keeps up with do not."""

    async def main():
        pressure = Pressure(max_loop_lag=0.05, max_accept_queue=64, shed_scale=0.5)
        pressure.lag, pressure._due = 0.04, asyncio.get_running_loop().time() + 60  # as the ticker measured it
        for k in range(8):  # two seconds answering all of 100 requests a window
            _window(pressure, asked=100, refused=0, answered=100, now=k * 0.25)
        calm = pressure.too_busy(), pressure.queue_delay_limit(0.5)
        _window(pressure, asked=110, refused=30, answered=80, now=2.0)  # a stall: 1.1× the best rate
        stall = pressure.too_busy()
        _window(pressure, asked=200, refused=90, answered=100, now=2.25)  # twice the best rate
        shedding = pressure.too_busy(), pressure.queue_delay_limit(0.5)
        _window(pressure, asked=100, refused=40, answered=60, now=2.5)  # back to the best rate
        return calm, stall, shedding, pressure.too_busy()

    calm, stall, shedding, relaxed = asyncio.run(main())
    assert calm == (None, 0.5) and stall is None and relaxed is None
    assert shedding == ("requests wait 40 ms to be read (limit 25 ms)", 0.25)


def test_while_shedding_the_requests_in_hand_are_bounded_from_their_admission():
    """A loop turn admits all the requests it reads before any of them reaches the batcher's queue, so the
    queue's delay cannot bound a burst: requests are counted from admission until released, and while
    shedding the next one at `max_in_hand` is refused until one is released. Outside shedding: no bound."""

    async def main():
        pressure = Pressure(max_loop_lag=1.0, max_accept_queue=64, max_in_hand=150)
        pressure._due = asyncio.get_running_loop().time() + 60  # as if the ticker ran: no loop lag
        for k in range(8):  # two seconds answering all of 100 requests a window
            _window(pressure, asked=100, refused=0, answered=100, now=k * 0.25)
            for _ in range(100):
                pressure.release()
        _window(pressure, asked=200, refused=0, answered=100, now=2.0)  # 200 in hand, all admitted: not shedding
        calm = pressure.in_hand, pressure.too_busy()
        for _ in range(200):
            pressure.release()
        _window(pressure, asked=200, refused=90, answered=100, now=2.25)  # twice the best rate: shedding
        below = pressure.in_hand, pressure.too_busy()
        for _ in range(40):
            pressure.count(refused=False)
        full = pressure.too_busy()
        pressure.release()
        return calm, below, full, pressure.too_busy()

    calm, below, full, released = asyncio.run(main())
    assert calm == (200, None) and below == (110, None) and released is None
    assert full == "150 requests are in hand (limit 150 while shedding)"
