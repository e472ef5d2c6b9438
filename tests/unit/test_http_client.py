"""The gateway's upstream HTTP client against a tiny local server that answers with scripted bytes.

Complete answers (Content-Length, chunked, keep-alive reuse, a stale pooled connection), and every way
an answer can go wrong: truncated, over the size limit, not HTTP, too slow, refused; IPv6 `Host`.
"""

from __future__ import annotations

import asyncio
import socket

import pytest

from msml.serving import http

OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"


class Scripted:
    """Serves each connection with `answer(request_head) -> bytes | None` (None: close without answering; a float:
    stall that many seconds, then close; (seconds, bytes): answer after that many seconds)."""

    def __init__(self, answer, close_after: bool = False, host: str = "127.0.0.1") -> None:
        self.answer, self.close_after, self.host = answer, close_after, host
        self.heads: list[bytes] = []
        self.connections = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.heads.append(head)
                length = next(
                    (
                        int(line.split(b":")[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    ),
                    0,
                )
                await reader.readexactly(length)
                out = self.answer(head)
                if out is None:
                    break
                if isinstance(out, float):  # seconds to stall
                    await asyncio.sleep(out)
                    break
                if isinstance(out, tuple):  # a late answer
                    await asyncio.sleep(out[0])
                    out = out[1]
                writer.write(out)
                await writer.drain()
                if self.close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self.handle, self.host, 0)
        port = self.server.sockets[0].getsockname()[1]
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{port}"

    async def __aexit__(self, *exc) -> None:
        self.server.close()


def call(answer, method="POST", close_after=False, host="127.0.0.1", **client_kw):
    async def main():
        async with Scripted(answer, close_after, host) as url:
            client = http.PooledHTTPClient(url, **{"timeout": 2.0, **client_kw})
            try:
                return await client.request(method, "/invocations", b'{"a": 1}')
            finally:
                await client.aclose()

    return asyncio.run(main())


def test_content_length_and_chunked_answers():
    assert call(lambda h: OK) == (200, b"{}")
    assert call(lambda h: CHUNKED) == (200, b"abcde")


def test_keep_alive_connection_is_reused_and_a_stale_one_retried():
    async def main():
        server = Scripted(lambda h: OK)
        async with server as url:
            client = http.PooledHTTPClient(url)
            for _ in range(3):
                assert await client.request("GET", "/ping") == (200, b"{}")
            reused = server.connections
            for conn in client._idle:  # the server side drops the idle connection
                conn.transport.close()
            await asyncio.sleep(0.05)
            assert await client.request("GET", "/ping") == (200, b"{}")
            await client.aclose()
            return reused, server.connections

    assert asyncio.run(main()) == (1, 2)


@pytest.mark.parametrize(
    "name, answer, words",
    [
        (
            "truncated body",
            lambda h: b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"predictions": [',
            "before the answer",
        ),
        ("truncated headers", lambda h: b"HTTP/1.1 200 OK\r\nContent-Len", "before the answer"),
        (
            "truncated chunks",
            lambda h: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
            "before the answer",
        ),
        ("not HTTP", lambda h: b"<html>hello</html>\r\n\r\n", "malformed"),
        ("bad length", lambda h: b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", "malformed"),
        ("closed", lambda h: None, "without answering"),
    ],
)
def test_broken_answers_are_protocol_errors(name, answer, words):
    with pytest.raises(http.ProtocolError, match=words):
        call(answer, close_after=True)  # the server closes after what it sent


def test_an_answer_over_the_size_limit_is_refused():
    big = b"HTTP/1.1 200 OK\r\nContent-Length: 5000000\r\n\r\n" + b"x" * 5_000_000
    with pytest.raises(http.ProtocolError, match="over the limit of 100000 bytes"):
        call(lambda h: big, max_response_bytes=100_000)
    assert call(lambda h: big, max_response_bytes=6_000_000)[1] == b"x" * 5_000_000


def test_a_slow_answer_is_a_timeout_and_a_refused_connection_a_connect_error():
    with pytest.raises(http.TimeoutError_, match=r"within 0\.2 s"):
        call(lambda h: 1.0, timeout=0.2)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound but not listening: refused

    async def refused():
        await http.PooledHTTPClient(f"http://127.0.0.1:{port}").request("GET", "/ping")

    with pytest.raises(http.ConnectError, match="failed"):
        asyncio.run(refused())


def test_ipv6_host_is_bracketed():
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    server_heads = []

    def answer(head):
        server_heads.append(head)
        return OK

    assert call(answer, host="::1") == (200, b"{}")
    host = next(line for line in server_heads[0].split(b"\r\n") if line.startswith(b"Host:"))
    assert host.startswith(b"Host: [::1]:")


def test_the_url_must_be_plain_http():
    with pytest.raises(ValueError, match="http://host:port"):
        http.PooledHTTPClient("https://example.invalid")
