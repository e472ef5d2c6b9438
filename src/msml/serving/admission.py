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

Shedding: when requests arrive at least `SHED_OFFERED` times as fast as the gateway has lately
answered them (over the last second, against the best second of the last five) and some were
refused, the load is over capacity, not a moment's stall, and for the next window of `SHED_WINDOW`
seconds the limits tighten: the requests in hand (admitted, not yet answered: `count` to `release`)
are held to `max_in_hand` (the gateway's: two whole batches for each model call that can be in
flight), and the loop-lag and queue-delay limits are `SHED_SCALE` of their values. The accept queue's
limit is not tightened: a client filling its connection pool fills that queue for a moment at any
load (scaled, it refused 490 requests at the start of a soak at 80 % of capacity). Offered against
answered, not the share refused: the tighter limits refuse work themselves, and a share-of-refusals
rule kept shedding going at loads the gateway serves in full (measured: 1,258–1,627 good/s at 2,000
offered).

In hand, not the queue's delay: a turn of the event loop reads, and admits, hundreds of requests
before any of them reaches the batcher's queue, so the oldest queued request's wait admitted whole
bursts (traced at 12,000 req/s offered: 200–300 rows queued behind a call of 128, the oldest waiting
84–120 ms against a limit of one call, ~20 ms). Counted from admission, a burst cannot overshoot.
Measured at 12,000 req/s offered (2 cores shared with the load client), two rounds, alternating:
4,194 and 4,532 good/s, accepted p99 117 and 107 ms with the one-call queue limit; 4,684 and 5,011
good/s, 80 and 66 ms with the in-hand limit.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import sys
from collections import deque

# struct tcp_info (linux/tcp.h): 8 one-byte fields, then u32 rto, ato, snd_mss, rcv_mss, unacked, sacked
_TCP_INFO = struct.Struct("8B6I")
_UNACKED = 12  # index of tcpi_unacked: on a listening socket, the accept queue's length
SHED_SCALE = 0.3  # the loop-lag and queue-delay limits while shedding, as a share of their values (at most)
SHED_OFFERED = 1.25  # shedding while requests arrive at least this many times as fast as the best answered rate
SHED_WINDOW = 0.25  # seconds
_SECOND = 4  # windows: answers are counted over rolling seconds (of SHED_WINDOW) ...
_PEAK = 20  # ... and the best of the last five is the rate the gateway is known to keep up with

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
        max_in_hand: int | None = None,
    ) -> None:
        self.max_loop_lag = max_loop_lag
        self.max_accept_queue = max_accept_queue
        self.listener = listener
        self.interval = interval
        self.shed_scale = shed_scale
        self.shed_window = shed_window
        self.max_in_hand = max_in_hand  # requests admitted and not yet answered, at most, while shedding
        self.in_hand = 0
        self.lag = 0.0  # seconds the ticker woke late last time
        # connections in the accept queue at both of the last two ticks: a client filling its connection pool
        # puts a burst there that the loop accepts in its next turn, not a backlog (60 s soaks at 80 % of
        # capacity, one run each: 600 refusals at 6,231 req/s on the last tick's sample, 82 at 5,875 on two)
        self.queued = 0
        self._sampled = 0  # at the last tick
        self._due: float | None = None
        self._task: asyncio.Task | None = None
        self.scale = 1.0  # the share of their values the limits are at now: `shed_scale` while shedding
        self._asked = self._refused = 0  # admission answers in this window
        self.answered = 0  # requests answered by the model in this window (the gateway counts them)
        self._answers: deque[int] = deque(maxlen=_SECOND)  # answered per window, over the last second
        self._best: deque[int] = deque(maxlen=_PEAK)  # answered in each rolling second of the last five
        self._window_end: float | None = None

    def count(self, refused: bool) -> None:
        """One admission answer (a request admitted or refused, by any limit): they decide shedding. An admitted
        request is in hand until `release`d."""
        self._asked += 1
        self._refused += refused
        self.in_hand += not refused

    def release(self) -> None:
        """An admitted request has been answered, or will not be handled."""
        self.in_hand -= 1

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
                sample = accept_queue(self.listener) or 0
                self.queued, self._sampled = min(sample, self._sampled), sample

    def close_window(self, now: float) -> None:
        """Decide shedding for the next window: this window's arrival rate against the best answered rate of the
        last five seconds (answers come a batch at a time, so they are counted over rolling seconds)."""
        self._answers.append(self.answered)
        self._best.append(sum(self._answers))
        best = max(self._best) / _SECOND  # answered per window, at best
        shedding = self._refused > 0 and self._asked >= SHED_OFFERED * best
        if shedding != (self.scale < 1.0):
            log.warning(
                "%s shedding: %d requests in the last %.2f s, %d refused; at best %.0f answered in as long lately",
                "started" if shedding else "stopped",
                self._asked,
                self.shed_window,
                self._refused,
                best,
            )
        self.scale = self.shed_scale if shedding else 1.0
        self._asked = self._refused = self.answered = 0
        self._window_end = now + self.shed_window

    def queue_delay_limit(self, max_delay: float) -> float:
        """How long the oldest queued request may have waited for a new one to be admitted: `max_delay` × `scale`."""
        return max_delay * self.scale

    def too_busy(self) -> str | None:
        """Why a new request would wait too long before being read, or None (the loop-lag limit at `scale`; the
        accept queue's is not scaled: a client filling its connection pool fills it for a moment at any load)."""
        if self.queued > self.max_accept_queue and self.listener is not None:
            # the tick's sample is up to `interval` old and a loop that keeps up accepts a burst of connects
            # (a client filling its pool) in one turn: read the queue again before refusing on it (0.58 µs,
            # and only while the sample is over the limit: on every request it would be on the request path)
            self.queued = accept_queue(self.listener) or 0
        if self.queued > self.max_accept_queue:
            return f"{self.queued} connections wait to be accepted (limit {self.max_accept_queue})"
        if self._due is not None:
            lag = max(self.lag, asyncio.get_running_loop().time() - self._due)
            if lag > (max_lag := self.max_loop_lag * self.scale):
                return f"requests wait {lag * 1000:.0f} ms to be read (limit {max_lag * 1000:.0f} ms)"
        if self.scale < 1.0 and self.max_in_hand is not None and self.in_hand >= self.max_in_hand:
            return f"{self.in_hand} requests are in hand (limit {self.max_in_hand} while shedding)"
        return None
