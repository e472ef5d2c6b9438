"""Admission's backlog signals on real sockets and a real event loop: the accept queue and loop lag."""

from __future__ import annotations

import asyncio
import socket
import sys
import time

import pytest

from msml.serving.admission import Pressure, accept_queue

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="TCP_INFO's accept queue is Linux's")


def _pending(n: int) -> tuple[socket.socket, list[socket.socket]]:
    """A listening socket with `n` connections the kernel completed and nobody accepted."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=64)
    port = listener.getsockname()[1]
    return listener, [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]


@linux_only
def test_accept_queue_counts_connections_not_yet_accepted():
    listener, clients = _pending(5)
    try:
        assert accept_queue(listener) == 5
        listener.accept()[0].close()
        assert accept_queue(listener) == 4
    finally:
        for c in [*clients, listener]:
            c.close()


@linux_only
def test_a_full_accept_queue_refuses_until_it_drains():
    listener, clients = _pending(3)

    async def main():
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

    try:
        busy, drained = asyncio.run(main())
    finally:
        for c in [*clients, listener]:
            c.close()
    assert busy == "3 connections wait to be accepted (limit 2)"
    assert drained is None


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


def test_a_window_with_enough_refusals_tightens_the_loop_lag_limit_for_the_next():
    """Shedding: 2 refused of 10 in a window (≥ SHED_SHARE) tighten the limit for the next one (a loop 40 ms behind
    with a limit of 50 ms passes before and not during), and a window without enough refusals relaxes it."""

    async def main():
        pressure = Pressure(max_loop_lag=0.05, max_accept_queue=64, shed_scale=0.5)
        pressure.lag, pressure._due = 0.04, asyncio.get_running_loop().time() + 60  # as the ticker measured it
        calm = pressure.too_busy()
        for refused in [True] * 2 + [False] * 8:
            pressure.count(refused)
        pressure.close_window(now=1.0)
        shedding = pressure.too_busy()
        for refused in [True] + [False] * 100:  # 1 in 101: under the share
            pressure.count(refused)
        pressure.close_window(now=1.25)
        return calm, shedding, pressure.too_busy()

    calm, shedding, relaxed = asyncio.run(main())
    assert calm is None and relaxed is None
    assert shedding == "requests wait 40 ms to be read (limit 25 ms)"
