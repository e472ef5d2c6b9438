"""Choosing a model-server replica: least busy of the healthy ones, ties in turn, 503 when none is up; a refused
batch goes once to another replica; the replica list from options or the environment, malformed ones refused."""

from __future__ import annotations

import asyncio
import json
import socket

import pytest

from msml.monitoring import metrics as M
from msml.monitoring.metrics import GatewayMetrics
from msml.serving.errors import ModelServerError
from msml.serving.settings import MODEL_URLS_ENV, model_urls
from msml.serving.upstream import Upstream
from tests.unit.test_http_client import Scripted
from tests.unit.test_monitoring_metrics import _samples

URLS = ["http://127.0.0.1:1", "http://127.0.0.1:2", "http://127.0.0.1:3"]


def upstream(urls=URLS, up=(True, True, True)) -> Upstream:
    """Replicas in a known state; no socket is opened (no probe, no call)."""
    u = Upstream(urls, ["x"], GatewayMetrics())
    for replica, is_up in zip(u.replicas, up, strict=True):
        u._set_up(replica, is_up)
    return u


def sent(u: Upstream) -> str:
    """Pick and record a send as `score` does (the picked replica's turn moves to the back); its port."""
    replica = u.pick()
    replica.last_sent = next(u._sent)
    return replica.url[-1]


def samples(u: Upstream) -> dict:
    return _samples(u.metrics)


def test_pick_takes_the_replica_with_fewest_calls_in_flight():
    u = upstream()
    u.replicas[0].in_flight, u.replicas[1].in_flight, u.replicas[2].in_flight = 2, 0, 1
    assert u.pick() is u.replicas[1]
    u.replicas[1].in_flight = 3
    assert u.pick() is u.replicas[2]


def test_ties_go_round_robin_and_pick_alone_changes_nothing():
    u = upstream()
    assert [u.pick().url for _ in range(3)] == [URLS[0]] * 3  # the gateway's fail-fast check moves no turn
    assert [sent(u) for _ in range(6)] == list("123123")


def test_down_replicas_are_skipped_and_all_down_is_a_503_with_retry_after():
    u = upstream(up=(False, True, False))
    assert {sent(u) for _ in range(4)} == {"2"}
    u._set_up(u.replicas[1], False)
    with pytest.raises(ModelServerError) as err:
        u.pick()
    assert err.value.status == 503 and err.value.kind == "model_down" and err.value.headers == {"Retry-After": "1"}


def test_model_up_means_any_replica_up_and_each_replica_has_its_own_gauge():
    u = upstream(up=(False, True, False))
    s = samples(u)
    assert s[(M.MODEL_UP, ())] == 1
    assert [s[(M.MODEL_REPLICA_UP, ((M.REPLICA, url),))] for url in URLS] == [0, 1, 0]
    u._set_up(u.replicas[1], False)
    assert samples(u)[(M.MODEL_UP, ())] == 0
    one = upstream(URLS[:1], up=(True,))  # a single replica: the same series as before
    assert samples(one)[(M.MODEL_UP, ())] == 1 and one.up and one.url == URLS[0]


def refused_url() -> str:
    with socket.socket() as s:  # bound, never listening: a connect is refused at once
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def test_a_refused_batch_goes_once_to_another_replica_and_the_refusing_one_is_down():
    def answer(head: bytes) -> bytes:
        body = json.dumps({"predictions": [[0.75, 0.25]]}).encode()
        return b"HTTP/1.1 200 OK\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body

    async def main():
        async with Scripted(answer) as good:
            u = upstream([refused_url(), good], up=(True, True))  # the dead one first: it is picked first
            try:
                assert await u.score([[1]]) == [0.25]
                dead, alive = u.replicas
                assert not dead.up and alive.up
                s = samples(u)
                assert s[(M.MODEL_REPLICA_CALLS, ((M.REPLICA, dead.url),))] == 1
                assert s[(M.MODEL_REPLICA_CALLS, ((M.REPLICA, alive.url),))] == 1
                assert s[(M.MODEL_ERRORS, (("kind", "unreachable"),))] == 1
            finally:
                await u.stop()

    asyncio.run(main())


def test_the_last_replica_refusing_is_a_503_unreachable():
    async def main():
        u = upstream([refused_url()], up=(True,))
        with pytest.raises(ModelServerError) as err:
            await u.score([[1]])
        assert err.value.status == 503 and err.value.kind == "unreachable" and not u.up

    asyncio.run(main())


def test_model_urls_from_options_else_the_environment_else_the_default():
    assert model_urls(["http://127.0.0.1:5001/", "http://127.0.0.1:5002"]) == (
        "http://127.0.0.1:5001",
        "http://127.0.0.1:5002",
    )
    env = {MODEL_URLS_ENV: "http://127.0.0.1:5001, http://127.0.0.1:5002"}
    assert model_urls([], env) == ("http://127.0.0.1:5001", "http://127.0.0.1:5002")
    assert model_urls(["http://h:1"], env) == ("http://h:1",)  # the option wins
    assert model_urls([], {}) == ("http://127.0.0.1:5001",)


@pytest.mark.parametrize(
    "urls, words",
    [
        (["127.0.0.1:5001"], "must be http://host:port"),
        (["https://h:1"], "must be http://host:port"),
        (["http://h:port"], "must be http://host:port"),
        (["http://h:99999"], "must be http://host:port"),
        (["http://h:1", ""], "must be http://host:port"),
        (["http://h:1", "http://h:1/"], "more than once: http://h:1"),
    ],
)
def test_malformed_or_repeated_model_urls_are_refused(urls, words):
    with pytest.raises(ValueError, match=words):
        model_urls(urls)
