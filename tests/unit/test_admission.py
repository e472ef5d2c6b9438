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


@linux_only
def test_connections_accepted_since_the_last_sample_are_not_refused_on():
    """A burst of connects seen by a tick and accepted right after (a client filling its pool): the next
    request is not refused on that sample for the rest of the tick's interval."""

    async def main(listener, clients):
        pressure = Pressure(max_loop_lag=10.0, max_accept_queue=2, listener=listener, interval=0.05)
        pressure.start()
        await asyncio.sleep(0.07)  # one tick, which saw 3 waiting
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
    tightens the loop-lag limit (a loop 40 ms behind passes a limit of 50 ms before, not during) and the
    queue-delay limit to one model call; refusals at a load the gateway keeps up with do not."""

    async def main():
        pressure = Pressure(max_loop_lag=0.05, max_accept_queue=64, shed_scale=0.5)
        pressure.lag, pressure._due = 0.04, asyncio.get_running_loop().time() + 60  # as the ticker measured it
        for k in range(8):  # two seconds answering all of 100 requests a window
            _window(pressure, asked=100, refused=0, answered=100, now=k * 0.25)
        calm = pressure.too_busy(), pressure.queue_delay_limit(0.5, call_seconds=0.08)
        _window(pressure, asked=110, refused=30, answered=80, now=2.0)  # a stall: 1.1× the best rate
        stall = pressure.too_busy()
        _window(pressure, asked=200, refused=90, answered=100, now=2.25)  # twice the best rate
        shedding = pressure.too_busy(), pressure.queue_delay_limit(0.5, call_seconds=0.08)
        slow_call = pressure.queue_delay_limit(0.5, call_seconds=0.4)  # never over max_delay × scale
        _window(pressure, asked=100, refused=40, answered=60, now=2.5)  # back to the best rate
        return calm, stall, shedding, slow_call, pressure.too_busy()

    calm, stall, shedding, slow_call, relaxed = asyncio.run(main())
    assert calm == (None, 0.5) and stall is None and relaxed is None
    assert shedding == ("requests wait 40 ms to be read (limit 25 ms)", 0.08)
    assert slow_call == 0.25
