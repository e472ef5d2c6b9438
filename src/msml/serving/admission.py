"""Is the gateway keeping up? Two signals, read before a request is read, that the batcher's queue cannot see.

Under an open-loop overload the backlog does not build up in the batcher's queue but in front of the
handlers: connections the kernel has completed wait in the listening socket's accept queue, and data
already read waits for the event loop. Measured at 2× capacity before these checks: the accept queue
sat full (2,048) for seconds, clients' connects were dropped and retried after 1, 3, 7 s, and the p99
of accepted requests was 35.8 s while the batcher queue itself stayed within its 500 ms bound.

- accept queue: the listening socket's pending connections (Linux `TCP_INFO`: `tcpi_unacked` of a
  listening socket is its accept-queue length), sampled every `interval`;
- event-loop lag: how late a ticker asking to wake every `interval` woke last, or how overdue it is now.

While either is over its limit, new requests are refused (503, Retry-After) on the cheapest path, so
the CPU drains the backlog instead of serving work that would be answered too late.

Shedding: while at least `SHED_SHARE` of the requests asked for in a window of `SHED_WINDOW` seconds
were refused (by these signals or the batcher's queue bounds), the load is over capacity, not a
moment's stall, and for the next window the queue-delay and loop-lag limits are `SHED_SCALE` of their
values: the accepted requests then wait far less than the limits would otherwise let them (still
about twice what they wait at capacity: figures below). A stall under normal load may start shedding
for a window, and at that load the tighter limits refuse too few for it to go on. The accept queue's
limit is not tightened: a client filling its connection pool fills that queue for a moment at any
load (scaled, it refused 490 requests at the start of a soak at 80 % of capacity).

Measured (bench_gateway, 2 cores shared with the load client), accepted p99 at 2× capacity: 994–1,409
ms before shedding, 439–594 ms in four runs with it (against a capacity p99 of 137–215 ms), goodput
69–96 % of capacity. Scale, one run each at 3,600 req/s offered: 0.3 → 1,834 good/s, p99 378 ms;
0.2 → 1,635, 335 ms; 0.15 → 1,520, 252 ms; and 0.2 refused 4,505 of a soak's requests.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import sys

# struct tcp_info (linux/tcp.h): 8 one-byte fields, then u32 rto, ato, snd_mss, rcv_mss, unacked, sacked
_TCP_INFO = struct.Struct("8B6I")
_UNACKED = 12  # index of tcpi_unacked: on a listening socket, the accept queue's length
SHED_SCALE = 0.3  # the limits while shedding, as a share of their values
SHED_SHARE = 0.1  # shedding while at least this share of the requests in a window was refused
SHED_WINDOW = 0.25  # seconds

log = logging.getLogger("msml.gateway")


def accept_queue(listener: socket.socket) -> int | None:
    """Connections waiting in `listener`'s accept queue; None where the system does not say (not Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        info = listener.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO.size)
    except OSError:
        return None
    return _TCP_INFO.unpack_from(info)[_UNACKED]


class Pressure:
    def __init__(
        self,
        max_loop_lag: float,
        max_accept_queue: int,
        listener: socket.socket | None = None,
        interval: float = 0.01,
        shed_scale: float = SHED_SCALE,
        shed_window: float = SHED_WINDOW,
    ) -> None:
        self.max_loop_lag = max_loop_lag
        self.max_accept_queue = max_accept_queue
        self.listener = listener
        self.interval = interval
        self.shed_scale = shed_scale
        self.shed_window = shed_window
        self.lag = 0.0  # seconds the ticker woke late last time
        self.queued = 0  # connections in the accept queue at the last tick
        self._due: float | None = None
        self._task: asyncio.Task | None = None
        self.scale = 1.0  # the share of their values the limits are at now: `shed_scale` while shedding
        self._asked = self._refused = 0  # admission answers in this window
        self._window_end: float | None = None

    def count(self, refused: bool) -> None:
        """One admission answer (a request admitted or refused, by any limit): they decide shedding."""
        self._asked += 1
        self._refused += refused

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._tick(), name="pressure")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._due = loop.time() + self.interval
            await asyncio.sleep(self.interval)
            now = loop.time()
            self.lag = max(0.0, now - self._due)
            if self._window_end is None or now >= self._window_end:
                self.close_window(now)
            if self.listener is not None:
                self.queued = accept_queue(self.listener) or 0

    def close_window(self, now: float) -> None:
        """Decide shedding for the next window from this one's answers (the ticker calls it every `shed_window`)."""
        shedding = self._refused > 0 and self._refused >= SHED_SHARE * self._asked
        if shedding != (self.scale < 1.0):
            log.warning(
                "%s shedding: %d of %d requests refused in the last %.2f s",
                "started" if shedding else "stopped",
                self._refused,
                self._asked,
                self.shed_window,
            )
        self.scale = self.shed_scale if shedding else 1.0
        self._asked = self._refused = 0
        self._window_end = now + self.shed_window

    def too_busy(self) -> str | None:
        """Why a new request would wait too long before being read, or None (the loop-lag limit at `scale`; the
        accept queue's is not scaled: a client filling its connection pool fills it for a moment at any load)."""
        if self.queued > self.max_accept_queue:
            return f"{self.queued} connections wait to be accepted (limit {self.max_accept_queue})"
        if self._due is not None:
            lag = max(self.lag, asyncio.get_running_loop().time() - self._due)
            if lag > (max_lag := self.max_loop_lag * self.scale):
                return f"requests wait {lag * 1000:.0f} ms to be read (limit {max_lag * 1000:.0f} ms)"
        return None
