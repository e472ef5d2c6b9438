"""Request bodies without a server or a model: every accepted format gives the same rows, every refusal its own
status and reason (msml.serving.formats), and a body is read only up to its limit."""

from __future__ import annotations

import asyncio
import json

import pytest
from starlette.requests import Request

from msml.serving.errors import ClientError
from msml.serving.formats import FORMATS, BadRow, extract_rows, read_json
from tests.rows import valid_rows

MAX_ROWS = 10


@pytest.fixture
def records(contract) -> list[dict]:
    """Three valid rows as JSON objects (missing -> null), in the contract's column order."""
    frame = valid_rows(contract, n=3)[contract.features]
    return [{k: (None if v != v else v) for k, v in row.items()} for row in frame.to_dict("records")]


def refusal(call) -> ClientError:
    with pytest.raises(ClientError) as info:
        call()
    return info.value


def reason(error: ClientError) -> tuple[int, str]:
    return error.status, error.details[0]["reason"]


def test_every_format_gives_the_same_rows(contract, records):
    features = contract.features
    as_lists = [[r[f] for f in features] for r in records]
    columnar = {f: [r[f] for r in records] for f in features}
    bodies = {
        "dataframe_split": {"dataframe_split": {"columns": features, "data": as_lists}},
        "dataframe_records": {"dataframe_records": records},
        "instances (records)": {"instances": records},
        "instances (lists)": {"instances": as_lists},
        "inputs (columnar)": {"inputs": columnar},
        "rows": {"rows": records},
    }
    assert {key for body in bodies.values() for key in body} == set(FORMATS)
    for name, body in bodies.items():
        assert extract_rows(body, features, MAX_ROWS) == records, name


@pytest.mark.parametrize(
    ("body", "status", "why", "says"),
    [
        ([1, 2], 400, "unknown_format", "JSON object"),
        ({"rows": [], "instances": []}, 400, "unknown_format", "exactly one key"),
        ({"something": []}, 400, "unknown_format", "exactly one key"),
        ({"rows": {"a": 1}}, 400, "unknown_format", "must be a list of rows"),
        ({"rows": []}, 400, "empty", "no rows"),
        ({"rows": [{}] * (MAX_ROWS + 1)}, 413, "too_many_rows", "over the limit"),
        ({"inputs": {"age": [1] * (MAX_ROWS + 1)}}, 413, "too_many_rows", "over the limit"),
        ({"inputs": {"age": [1, 2], "sex": [1]}}, 400, "unknown_format", "same length"),
        ({"dataframe_split": {"columns": ["a"]}}, 400, "unknown_format", "'columns' (list) and 'data'"),
        ({"dataframe_split": {"columns": ["a", "a"], "data": [[1, 2]]}}, 400, "unknown_format", "distinct strings"),
        ({"dataframe_split": {"columns": ["a"], "data": [[1]], "x": 1}}, 400, "unknown_format", "'columns' (list)"),
    ],
    ids=[
        "not-an-object",
        "two-formats",
        "unknown-key",
        "rows-not-a-list",
        "no-rows",
        "too-many-rows",
        "too-many-columnar-rows",
        "ragged-columnar",
        "split-without-data",
        "split-duplicate-columns",
        "split-extra-key",
    ],
)
def test_each_malformed_body_is_refused_with_its_reason(contract, body, status, why, says):
    error = refusal(lambda: extract_rows(body, contract.features, MAX_ROWS))
    assert reason(error) == (status, why) and says in error.message, error.message


def test_a_split_row_of_the_wrong_width_is_kept_as_a_bad_row(contract, records):
    """Shaping never truncates or pads: a row of another width (or not a list) goes on to fail validation."""
    features = contract.features
    data = [[records[0][f] for f in features], [1, 2], "text"]
    rows = extract_rows({"dataframe_split": {"columns": features, "data": data}}, features, MAX_ROWS)
    assert rows[0] == records[0]
    assert all(isinstance(r, BadRow) for r in rows[1:])
    assert [(r.value, r.width) for r in rows[1:]] == [([1, 2], len(features)), ("text", len(features))]


def test_list_rows_of_another_length_are_passed_on_unshaped(contract):
    """`instances` lists map to the contract's columns only at its width; others are left for validation."""
    rows = extract_rows({"instances": [[1, 2]]}, contract.features, MAX_ROWS)
    assert rows == [[1, 2]]


# --- read_json: a starlette Request fed from a list of ASGI messages ---------------------------------------------


def request(body: bytes, content_type: str | None = "application/json", declared: int | None = None, chunk: int = 0):
    headers = [(b"content-type", content_type.encode())] if content_type is not None else []
    if declared is not None:
        headers.append((b"content-length", str(declared).encode()))
    pieces = [body[i : i + chunk] for i in range(0, len(body), chunk)] if chunk and body else [body]
    messages = [{"type": "http.request", "body": p, "more_body": i < len(pieces) - 1} for i, p in enumerate(pieces)]

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    scope = {"type": "http", "method": "POST", "path": "/invocations", "headers": headers, "query_string": b""}
    return Request(scope, receive), messages


def read(req, limit: int = 100):
    return asyncio.run(read_json(req, limit))


def test_a_json_body_is_read_whole_across_chunks():
    body = json.dumps({"rows": [{"a": 1}] * 5}).encode()
    req, _ = request(body, content_type="application/json; charset=utf-8", chunk=7)
    assert read(req, limit=len(body)) == {"rows": [{"a": 1}] * 5}


@pytest.mark.parametrize(
    ("content_type", "body", "status", "why"),
    [
        (None, b"{}", 415, "content_type"),
        ("text/csv", b"a,b\n", 415, "content_type"),
        ("application/json", b"", 400, "malformed_json"),
        ("application/json", b"{not json", 400, "malformed_json"),
    ],
    ids=["no-content-type", "csv", "empty", "not-json"],
)
def test_a_body_that_is_not_json_is_refused(content_type, body, status, why):
    req, _ = request(body, content_type=content_type)
    assert reason(refusal(lambda: read(req))) == (status, why)


def test_a_declared_length_over_the_limit_is_refused_before_reading():
    req, unread = request(b"x" * 500, declared=500)
    error = refusal(lambda: read(req, limit=100))
    assert reason(error) == (413, "too_large") and error.headers == {"connection": "close"}
    assert len(unread) == 1  # the body was never read


@pytest.mark.parametrize("chunk", [30, 0], ids=["chunked", "last-chunk-crosses-the-limit"])
def test_a_streamed_body_over_the_limit_is_a_413_not_a_crash(chunk):
    """No Content-Length: the limit is found while reading, whether more of the body follows or not."""
    req, _ = request(b'{"rows": "' + b"x" * 200 + b'"}', chunk=chunk)
    error = refusal(lambda: read(req, limit=100))
    assert reason(error) == (413, "too_large") and error.headers == {"connection": "close"}
