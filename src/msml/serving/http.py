"""A lean pooled HTTP/1.1 client for the model-server calls (`/invocations`, `/ping`), parsed by httptools.

Why not httpx here: an httpx AsyncClient call costs several times the CPU of this client per call
(`benchmarks/bench_gateway.py` measures httpx, aiohttp and this client in one run and prints the
table), and the gateway's whole budget at concurrency 1 is 2 ms. The response is parsed by httptools
(the maintained llhttp parser uvicorn uses), not by hand: a response is complete only when the parser
says so, so a connection that closes early is an error, never a short answer. Every answer is bounded
(`max_response_bytes`); IPv6 hosts get a bracketed `Host`. One retry when a pooled keep-alive
connection turns out closed before it answered (the server may drop idle connections at any time).
"""

from __future__ import annotations

import asyncio
from collections import deque
from urllib.parse import urlsplit

import httptools


class HTTPError(Exception):
    """Base of the client's errors."""


class ConnectError(HTTPError):
    """The server refused or did not accept the connection in time."""


class TimeoutError_(HTTPError):
    """The server accepted the request but did not answer in time."""


class ProtocolError(HTTPError):
    """The connection broke, the answer is not HTTP/1.x, is truncated, or is over the size limit."""


class _Stale(Exception):
    """A pooled connection closed before any byte of the answer: safe to retry on a fresh one."""


class _Connection(asyncio.Protocol):
    """One keep-alive connection; `exchange` sends a request and waits for the parser's complete message."""

    def __init__(self, max_response_bytes: int) -> None:
        self.max_bytes = max_response_bytes
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._parser = httptools.HttpResponseParser(self)
        self._done: asyncio.Future | None = None
        self._body: list[bytes] = []
        self._size = 0
        self._got_bytes = False

    # -- asyncio.Protocol
    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self._done is None or self._done.done():
            self.transport.close()  # bytes nobody asked for: the connection cannot be trusted
            return
        self._got_bytes = True
        self._size += len(data)
        if self._size > self.max_bytes:
            self._fail(ProtocolError(f"answer is over the limit of {self.max_bytes} bytes"))
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(ProtocolError("server asked for a protocol upgrade"))
        except httptools.HttpParserError as exc:
            self._fail(ProtocolError(f"malformed answer: {exc}"))

    def connection_lost(self, exc) -> None:
        self.closed = True
        if self._done is not None and not self._done.done():
            if not self._got_bytes:
                self._done.set_exception(_Stale())
            else:
                self._done.set_exception(ProtocolError("connection closed before the answer was complete"))

    # -- httptools callbacks
    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._done is not None and not self._done.done():
            self._done.set_result(
                (self._parser.get_status_code(), b"".join(self._body), self._parser.should_keep_alive())
            )

    def _fail(self, exc: Exception) -> None:
        if self._done is not None and not self._done.done():
            self._done.set_exception(exc)
        self.transport.close()

    async def exchange(self, message: bytes) -> tuple[int, bytes, bool]:
        self._done = asyncio.get_running_loop().create_future()
        self._body, self._size, self._got_bytes = [], 0, False
        self.transport.write(message)
        return await self._done


class PooledHTTPClient:
    def __init__(
        self,
        base_url: str,
        connect_timeout: float = 0.5,
        timeout: float = 10.0,
        max_idle: int = 8,
        max_response_bytes: int = 16_000_000,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"model server URL must be http://host:port, got {base_url!r}")
        self.host = parts.hostname
        self.port = parts.port or 80
        self.prefix = parts.path.rstrip("/")
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self.max_idle = max_idle
        self.max_response_bytes = max_response_bytes
        self._idle: deque[_Connection] = deque()
        host = f"[{self.host}]" if ":" in self.host else self.host  # an IPv6 literal is bracketed (RFC 7230 §5.4)
        self._host_header = f"{host}:{self.port}".encode()
        self.where = host + f":{self.port}"

    async def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        content_type: str = "application/json",
        timeout: float | None = None,
    ) -> tuple[int, bytes]:
        """Send one request; returns (status, body). Raises ConnectError, TimeoutError_ or ProtocolError."""
        head = [f"{method} {self.prefix}{path} HTTP/1.1".encode(), b"Host: " + self._host_header]
        if body is not None:
            head.append(b"Content-Type: " + content_type.encode())
            head.append(b"Content-Length: " + str(len(body)).encode())
        message = b"\r\n".join(head) + b"\r\n\r\n" + (body or b"")
        timeout = self.timeout if timeout is None else timeout
        try:
            async with asyncio.timeout(timeout):
                while self._idle:
                    conn = self._idle.pop()
                    if conn.closed:
                        continue
                    try:
                        return await self._exchange(conn, message)
                    except _Stale:
                        continue
                try:
                    return await self._exchange(await self._connect(), message)
                except _Stale:
                    raise ProtocolError("server closed the connection without answering") from None
        except TimeoutError:
            raise TimeoutError_(f"no answer from {self.where} within {timeout} s") from None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: _Connection(self.max_response_bytes), self.host, self.port
                )
        except TimeoutError:
            raise ConnectError(f"connect to {self.where} timed out after {self.connect_timeout} s") from None
        except OSError as exc:
            raise ConnectError(f"connect to {self.where} failed: {exc.strerror or exc}") from None
        return conn

    async def _exchange(self, conn: _Connection, message: bytes) -> tuple[int, bytes]:
        keep = False
        try:
            status, data, keep = await conn.exchange(message)
            return status, data
        finally:  # a cancelled or failed exchange leaves the connection mid-answer: never reuse it
            if keep and not conn.closed and len(self._idle) < self.max_idle:
                self._idle.append(conn)
            else:
                conn.transport.close()

    async def aclose(self) -> None:
        while self._idle:
            self._idle.pop().transport.close()
