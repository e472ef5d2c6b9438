"""uvicorn's HTTP protocol (httptools) with the gateway's refusal answered before any ASGI work.

Under overload most requests are refused, and a refusal through ASGI costs a task, a scope, a
request-response cycle and uvicorn's header checks, taken from the gateway's single core and so from
the requests it is serving. So `POST /invocations` is asked `Gateway.refusal()` before any of that:
- a segment read that is exactly one such request (`whole_invocation`: Content-Length body, no
  Transfer-Encoding, Connection or Expect header), on a connection with no request in flight, is asked
  before it is parsed at all; a refused one is answered from here and never reaches the parser;
- any other (split over reads, pipelined, closing…) is asked once its headers are parsed, and the body
  that follows is skipped by uvicorn's parser as for any request answered before its body was read.
Either way the 503 is written in one piece and the connection kept alive (or closed) as uvicorn would.
Every response goes out as one send (`_CoalescingTransport`). Everything else is uvicorn's. Measured
gateway CPU per refusal (closed loop at c=32, two runs, alternating): through ASGI 117–123 µs, after the
headers are parsed 99–110 µs, a bare uvicorn app answering a fixed 503 81–84 µs. Before parsing, at
4,200 req/s offered (2× capacity, open loop, two 10 s runs alternating with the after-headers path):
2,030 and 1,805 good/s against 1,862 and 1,676, accepted p99 295 and 328 ms against 393 and 379. It
subclasses uvicorn's protocol (pinned in the lock): the tests that refuse over keep-alive, pipelined,
split and closing connections say when an upgrade breaks it.
"""

from __future__ import annotations

import asyncio
import re
import time

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle

from msml.serving.errors import GatewayError, error_parts, request_id

_INVOCATION = b"POST /invocations HTTP/1.1\r\n"
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d{1,9})[ \t]*(?=\r\n)")  # (?=): lines share a "\r\n"
_OTHER_FRAMING = re.compile(rb"\r\n(?:transfer-encoding|connection|expect)[ \t]*:")


def whole_invocation(data: bytes) -> bool:
    """Whether `data` is exactly one complete `POST /invocations` HTTP/1.1 request framed by a single
    Content-Length (nothing that would make a parser read it differently: no Transfer-Encoding, Connection
    or Expect header), so that answering it without parsing leaves the connection at a request boundary."""
    if not data.startswith(_INVOCATION):
        return False
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return False
    head = data[len(_INVOCATION) - 2 : end + 2].lower()  # "\r\n" + header lines, each ending "\r\n"
    if _OTHER_FRAMING.search(head):
        return False
    lengths = _CONTENT_LENGTH.findall(head)
    return len(lengths) == 1 and end + 4 + int(lengths[0]) == len(data)


class _CoalescingTransport:
    """A transport whose writes go out together: at the end of a response or of the event loop's turn.

    uvicorn writes a response's status line and headers, then its body, as two sends, and on loopback a
    send wakes the reader each time: at concurrency 1 on this 2-core VM the two took 224 + 149 µs of the
    gateway's time per request, the one 263 µs (a few writes of one request, measured in place).
    """

    __slots__ = ("_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._pending: list[bytes] = []
        self._loop = loop

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self.flush)  # a streamed body is not held past this turn
        self._pending.append(data)

    def writelines(self, lines) -> None:
        for data in lines:
            self.write(data)

    def flush(self) -> None:
        if self._pending:
            data = b"".join(self._pending)
            self._pending.clear()
            self._transport.write(data)

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending.clear()
        self._transport.abort()

    def __getattr__(self, name: str):
        return getattr(self._transport, name)


class _Refusals:
    """Refusal answers kept as bytes around their request id. Shedding refuses thousands of requests a second
    with one message; building each answer's JSON and head anew, the gateway took 14.8–15.0 µs of CPU per
    refusal, against 12.0–12.1 µs now (closed loop at c=32, every request refused, three rounds alternating)."""

    _SLOT = "#" * len(request_id())  # where the request id goes: as long as one, so Content-Length holds

    def __init__(self) -> None:
        self._headers: list[tuple[bytes, bytes]] | None = None
        self._answers: dict[tuple[str, bool], list[bytes]] = {}

    def answer(self, refused: GatewayError, keep_alive: bool, default_headers: list[tuple[bytes, bytes]]) -> bytes:
        # uvicorn renews its default headers (Date) every second: the answers kept are those of this second
        if default_headers is not self._headers or len(self._answers) > 64:
            self._headers = default_headers
            self._answers.clear()
        key = (refused.message, keep_alive)  # a refusal is an Overloaded: its message decides its answer
        if (parts := self._answers.get(key)) is None:
            headers, body = error_parts(refused, self._SLOT)
            if not keep_alive:
                headers.append((b"connection", b"close"))
            head = b"".join(name + b": " + value + b"\r\n" for name, value in [*default_headers, *headers])
            answer = b"".join((STATUS_LINE[refused.status], head, b"\r\n", body))
            parts = self._answers[key] = answer.split(self._SLOT.encode())
        return request_id().encode().join(parts)


def refusing_protocol(gateway) -> type[HttpToolsProtocol]:
    """The protocol class for `gateway` (msml.serving.gateway.Gateway): uvicorn.Config(http=...)."""

    refusals = _Refusals()

    class RefusingProtocol(HttpToolsProtocol):
        _between_requests = True  # the parser holds no part of a request
        _admitted = False  # the request being parsed was admitted before parsing

        def connection_made(self, transport: asyncio.Transport) -> None:
            super().connection_made(_CoalescingTransport(transport, self.loop))

        def on_response_complete(self) -> None:
            self.transport.flush()
            super().on_response_complete()

        def data_received(self, data: bytes) -> None:
            if (
                self._between_requests
                and (self.cycle is None or self.cycle.response_complete)
                and whole_invocation(data)
            ):
                start = time.perf_counter()
                if (refused := gateway.refusal()) is not None:
                    self._unset_keepalive_if_required()
                    self._refuse(refused, keep_alive=True, start=start)
                    self.on_response_complete()  # the keep-alive timer, as after any response
                    return
                self._admitted = True
                super().data_received(data)
                if self._admitted:  # admitted, yet no request was started (the parser refused it)
                    self._admitted = False
                    gateway.pressure.release()
                return
            super().data_received(data)

        def on_message_begin(self) -> None:
            self._between_requests = False
            super().on_message_begin()

        def on_message_complete(self) -> None:
            self._between_requests = True
            super().on_message_complete()

        def _start_asgi_task(self, cycle: RequestResponseCycle, app) -> None:
            scope = cycle.scope
            admitted, self._admitted = self._admitted, False
            if admitted or scope["method"] != "POST" or scope["path"] != "/invocations":
                return super()._start_asgi_task(cycle, app)
            start = time.perf_counter()
            if (refused := gateway.refusal()) is None:  # admitted: the app does not ask again (create_app)
                return super()._start_asgi_task(cycle, app)
            self._refuse(refused, cycle.keep_alive, start)
            # what RequestResponseCycle.send does once a response is complete
            cycle.response_started = cycle.response_complete = True
            cycle.message_event.set()
            cycle.on_response()

        def _refuse(self, refused: GatewayError, keep_alive: bool, start: float) -> None:
            gateway.count(refused)
            self.transport.write(refusals.answer(refused, keep_alive, self.server_state.default_headers))
            if not keep_alive:
                self.transport.close()
            gateway.observe_request("/invocations", refused.status, time.perf_counter() - start)

    return RefusingProtocol
