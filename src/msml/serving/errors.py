"""The gateway's errors and the one place that turns them into JSON responses of bounded size.

Every error answer is `{"error": message, "request_id": id, ...}`: client mistakes (4xx) list at
most `MAX_DETAILS` details plus their total count, model-server failures (502/503/504) name a kind
but never echo upstream text, overload (503) carries Retry-After, and anything unexpected is a JSON
500 whose request id is also in the log. Every string taken from a request is cut to `MAX_ECHO`
characters and containers are named, not printed (printing a value nested 1000 deep raises
RecursionError on Python 3.11): whatever a client sends, the answer stays far below 64 KB.
"""

from __future__ import annotations

import itertools
import json
import os
from typing import Any, ClassVar

from starlette.responses import Response

try:  # orjson is several times faster; the stdlib is the fallback
    import orjson

    loads = orjson.loads
    dumps = orjson.dumps
    DecodeError: tuple[type[Exception], ...] = (orjson.JSONDecodeError, UnicodeDecodeError, RecursionError)
except ImportError:  # pragma: no cover
    loads = json.loads

    def dumps(obj: Any) -> bytes:
        return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()

    DecodeError = (json.JSONDecodeError, UnicodeDecodeError, RecursionError)

MAX_DETAILS = 20  # error details listed per response (the total is always given)
MAX_ECHO = 80  # characters of any client-sent string repeated in an answer
BODY = "_body"  # metric label for failures of the request as a whole
ROW = "_row"  # ... and of a row as a whole (not a dict, wrong length, unexpected field)


JSON_TYPE = "application/json"  # the one content type the POST endpoints take and give


class GatewayError(Exception):
    """Base: an answer other than 200, with its status and a message safe to show the client."""

    status = 500
    headers: ClassVar[dict[str, str]] = {}  # subclasses replace it, never mutate it

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def body(self) -> dict[str, Any]:
        return {"error": self.message}


class ClientError(GatewayError):
    """A request the client must fix: 4xx, with the failing rows/fields in `details` (`total` of them)."""

    def __init__(
        self,
        status: int,
        message: str,
        details: list[dict[str, Any]],
        total: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.details = details[:MAX_DETAILS]
        self.total = len(details) if total is None else total
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": self.message, "details": self.details, "error_count": self.total}


class ModelServerError(GatewayError):
    """The model server could not score a batch: 503 (unreachable / known down), 504 (too slow), 502 (bad answer)."""

    def __init__(self, status: int, kind: str, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.headers = {"Retry-After": str(retry_after)} if retry_after else {}

    def body(self) -> dict[str, Any]:
        return {"error": self.message, "kind": self.kind}


class Overloaded(GatewayError):
    """The gateway's queue is full or the request's deadline passed while queued: 503 with Retry-After."""

    status = 503

    def __init__(self, kind: str, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.kind = kind
        self.headers = {"Retry-After": str(retry_after)}

    def body(self) -> dict[str, Any]:
        return {"error": self.message, "kind": self.kind}


def body_error(status: int, reason: str, message: str, **headers: str) -> ClientError:
    """A failure of the request as a whole (field `_body`)."""
    return ClientError(
        status,
        message,
        [{"row": None, "field": BODY, "reason": reason, "message": message}],
        headers={k.replace("_", "-"): v for k, v in headers.items()},
    )


def short(value: Any, limit: int = MAX_ECHO) -> Any:
    """A client value made safe to echo: scalars as they are, strings cut, containers named only."""
    if isinstance(value, (int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, dict, tuple)):
        return f"<{type(value).__name__} of {len(value)}>"
    text = value if isinstance(value, str) else type(value).__name__
    return text if len(text) <= limit else text[:limit] + "…"


_PROCESS = os.urandom(4).hex()
_SEQUENCE = itertools.count()


def request_id() -> str:
    """Unique per answer, to find it in the log. It grants nothing (unlike prediction ids, which are
    capabilities: feedback), so a random per-process prefix and a counter do: no system call per answer."""
    return f"{_PROCESS}{next(_SEQUENCE) & 0xFFFFFFFF:08x}"


def json_response(content: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(dumps(content), status_code=status, media_type=JSON_TYPE, headers=headers)


def _error_body(exc: GatewayError, rid: str | None) -> bytes:
    return dumps({**exc.body(), "request_id": rid or request_id()})


def error_response(exc: GatewayError, rid: str | None = None) -> Response:
    return Response(_error_body(exc, rid), exc.status, exc.headers or None, media_type=JSON_TYPE)


def error_parts(exc: GatewayError, rid: str | None = None) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """The headers and body of `exc`'s answer, for writers below Starlette's Response."""
    body = _error_body(exc, rid)
    headers = [(b"content-type", JSON_TYPE.encode()), (b"content-length", str(len(body)).encode())]
    return headers + [(k.lower().encode(), v.encode()) for k, v in exc.headers.items()], body


async def send_error(send, exc: GatewayError) -> None:
    """The same answer as `error_response`, written straight to the ASGI `send` (no Response object): the
    refusal path under overload, where every microsecond spent refusing is taken from requests being served."""
    headers, body = error_parts(exc)
    await send({"type": "http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
