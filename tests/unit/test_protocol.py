"""Which reads the gateway may answer with a refusal before parsing (protocol.whole_invocation): exactly one
`POST /invocations` request framed by one Content-Length; anything a parser could frame differently is
left to the parser."""

import asyncio

import pytest

from msml.serving.protocol import _CoalescingTransport, whole_invocation

BODY = b'{"rows":[{"age":39}]}'


def request(*headers: bytes, body: bytes = BODY, line: bytes = b"POST /invocations HTTP/1.1") -> bytes:
    return line + b"\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n" + body


HOST, TYPE, LENGTH = b"Host: x", b"Content-Type: application/json", b"Content-Length: %d" % len(BODY)


@pytest.mark.parametrize(
    "data",
    [request(HOST, TYPE, LENGTH), request(HOST, b"content-length:%d  " % len(BODY)), request(LENGTH, TYPE, HOST)],
)
def test_one_whole_request_framed_by_its_content_length_is_answered_before_parsing(data):
    assert whole_invocation(data)


@pytest.mark.parametrize(
    "data",
    [
        request(HOST, TYPE, LENGTH)[:-1],  # the body's end has not arrived
        request(HOST, TYPE, LENGTH)[:30],  # nor the headers' end
        request(HOST, TYPE, LENGTH) * 2,  # pipelined: the second would be answered out of turn
        request(HOST, TYPE, LENGTH) + b"P",
        request(HOST, TYPE),  # no Content-Length
        request(HOST, LENGTH, LENGTH),  # twice: a parser rejects it
        request(HOST, LENGTH, b"Content-Length: 3"),
        request(HOST, LENGTH, b"Transfer-Encoding: chunked"),  # framed by chunks, whatever the length says
        request(HOST, LENGTH, b"connection: close"),  # the answer must close
        request(HOST, LENGTH, b"Expect: 100-continue"),
        request(HOST, LENGTH, b"Transfer-Encoding : chunked"),
        request(HOST, LENGTH, line=b"POST /invocations HTTP/1.0"),  # 1.0 closes by default
        request(HOST, LENGTH, line=b"POST /invocations?x=1 HTTP/1.1"),
        request(HOST, LENGTH, line=b"POST /feedback HTTP/1.1"),
        request(HOST, LENGTH, line=b"GET /invocations HTTP/1.1"),
        request(HOST, b"Content-Length: -1"),
        b"",
    ],
)
def test_anything_a_parser_could_frame_otherwise_is_left_to_the_parser(data):
    assert not whole_invocation(data)


class RecordingTransport:
    """What reaches the socket: the calls the coalescing transport makes on the transport it wraps."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bytes | None]] = []

    def write(self, data: bytes) -> None:
        self.calls.append(("write", data))

    def close(self) -> None:
        self.calls.append(("close", None))

    def abort(self) -> None:
        self.calls.append(("abort", None))

    def is_closing(self) -> bool:
        return False


def test_a_responses_writes_reach_the_socket_as_one_send_by_the_end_of_the_loops_turn():
    asyncio.run(_one_send())


async def _one_send():
    sent = RecordingTransport()
    transport = _CoalescingTransport(sent, asyncio.get_running_loop())
    transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
    transport.write(b"{}")
    assert sent.calls == []
    await asyncio.sleep(0)
    assert sent.calls == [("write", b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")]
    transport.write(b"more")  # a later turn's writes are a send of their own
    transport.flush()  # at the end of a response, without waiting for the turn
    await asyncio.sleep(0)
    assert sent.calls[1:] == [("write", b"more")]
    assert transport.is_closing() is False  # everything else is the wrapped transport's


def test_closing_sends_what_is_pending_first_and_an_abort_drops_it():
    asyncio.run(_close_and_abort())


async def _close_and_abort():
    loop = asyncio.get_running_loop()
    sent = RecordingTransport()
    transport = _CoalescingTransport(sent, loop)
    transport.write(b"answer")
    transport.close()
    assert sent.calls == [("write", b"answer"), ("close", None)]
    aborted = RecordingTransport()
    transport = _CoalescingTransport(aborted, loop)
    transport.write(b"half an answer")
    transport.abort()
    await asyncio.sleep(0)
    assert aborted.calls == [("abort", None)]
