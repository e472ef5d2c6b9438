"""Choosing a model-server replica: least busy of the healthy ones, ties in turn, 503 when none is up (but for one
trial call at a time); a batch that got no answer (refused, broken mid-answer) goes once to another replica; up or
down from what the gateway hears (a late ping is alive, silence is down, calls answered keep it up); the replica
list from options or the environment, malformed ones refused."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import pytest

from msml.monitoring import metrics as M
from msml.monitoring.metrics import GatewayMetrics
from msml.serving.errors import ModelServerError
from msml.serving.settings import MODEL_URLS_ENV, model_urls
from msml.serving.upstream import TRIAL_INTERVAL, Upstream
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


def test_down_replicas_are_skipped_and_all_down_is_a_503_with_retry_after_but_for_a_trickle_of_trials():
    u = upstream(up=(False, True, False))
    assert {sent(u) for _ in range(4)} == {"2"}
    u._set_up(u.replicas[1], False)
    # none up: a trial call is due (half-open), to the replica tried least recently; one request is let in for it,
    # with an empty queue only
    assert u.pick() is u.replicas[0]
    with pytest.raises(ModelServerError):
        u.require_up(queued_rows=1)
    u.require_up(queued_rows=0)
    with pytest.raises(ModelServerError):
        u.require_up(queued_rows=0)  # the next no sooner than TRIAL_INTERVAL later
    assert u.pick() is u.replicas[0]  # the request let in is sent
    u._trial, u.replicas[0].last_trial = u.replicas[0], time.monotonic()  # as `_call` records a trial
    for ask in (u.pick, u.require_up):  # one trial at a time: everything else is refused at once
        with pytest.raises(ModelServerError) as err:
            ask()
        assert err.value.status == 503 and err.value.kind == "model_down"
        assert err.value.headers == {"Retry-After": "1"}
    u._trial = None
    with pytest.raises(ModelServerError):  # ... and at most one started per TRIAL_INTERVAL
        u.pick()
    u.replicas[0].last_trial -= TRIAL_INTERVAL
    assert u.pick() is u.replicas[1]  # the next least recently tried


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


def ok(body: bytes = b"\n") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body


PREDICTION = json.dumps({"predictions": [[0.75, 0.25]]}).encode()


def test_a_late_ping_is_alive_silence_is_down_and_answered_calls_keep_it_up():
    """Silence 0.3 s (2 s in service), probe every 0.05 s: a ping answered after 0.2 s never marks it down (the old
    probe gave up at its timeout and sent the next ping to the back of the queue); pings that go unanswered do,
    after the silence, unless calls are answered meanwhile."""
    mode = {"ping": (0.2, ok())}

    def answer(head: bytes):
        return mode["ping"] if head.startswith(b"GET /ping") else ok(PREDICTION)

    async def main():
        async with Scripted(answer) as url:
            u = Upstream([url], ["x"], GatewayMetrics(), probe_interval=0.05, timeout=2.0)
            u.silence = 0.3
            seen = []
            await u.start()
            try:
                for _ in range(12):  # 0.6 s of late pings
                    await asyncio.sleep(0.05)
                    seen.append(u.up)
                assert all(seen[5:]), seen  # up once the first ping answered, never down after
                mode["ping"] = 5.0  # pings now stall: silent, so down...
                start = time.monotonic()
                while u.up and time.monotonic() - start < 2:
                    await asyncio.sleep(0.01)
                assert not u.up and 0.3 <= time.monotonic() - start < 0.7
                assert await u.score([[1]]) == [0.25]  # ... but a trial call is let through, and its answer: up
                assert u.up
                for _ in range(10):  # answered calls keep it up while its pings stall
                    assert await u.score([[1]]) == [0.25]
                    await asyncio.sleep(0.05)
                    assert u.up
            finally:
                await u.stop()

    asyncio.run(main())


def test_a_batch_broken_mid_answer_goes_once_to_another_healthy_replica():
    def truncated(head: bytes):
        return ok() if head.startswith(b"GET /ping") else ok(PREDICTION)[:-5]  # then the connection closes

    async def main():
        async with Scripted(truncated, close_after=True) as broken, Scripted(lambda h: ok(PREDICTION)) as good:
            u = upstream([broken, good], up=(True, True))
            try:
                assert await u.score([[1]]) == [0.25]  # the broken one first (ties: in order), then the other
                s = samples(u)
                assert s[(M.MODEL_REPLICA_CALLS, ((M.REPLICA, broken),))] == 1
                assert s[(M.MODEL_REPLICA_CALLS, ((M.REPLICA, good),))] == 1
                assert s[(M.MODEL_ERRORS, (("kind", "transport"),))] == 1
                u._set_up(u.replicas[1], False)  # no other healthy replica: the failure is the answer
                with pytest.raises(ModelServerError) as err:
                    await u.score([[1]])
                assert err.value.status == 502 and err.value.kind == "transport"
            finally:
                await u.stop()

    asyncio.run(main())


def test_on_health_hears_how_many_replicas_are_up():
    heard = []
    u = Upstream(URLS, ["x"], GatewayMetrics(), on_health=heard.append)
    for replica in u.replicas:
        u._set_up(replica, True)
    u._set_up(u.replicas[0], True)  # no change: not told again
    u._set_up(u.replicas[2], False)
    assert heard == [1, 2, 3, 2]


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


def test_the_gateway_s_in_flight_limit_follows_the_replicas_up():
    from msml.data.contract import Contract
    from msml.serving.gateway import Gateway, GatewayConfig

    g = Gateway(GatewayConfig(model_urls=tuple(URLS), contract=Contract.load(), max_concurrent_batches=2))
    replicas = g.upstream.replicas
    assert g.batcher.max_concurrent == 2  # none known up yet: one replica's worth (a trial call)
    for r in replicas:
        g.upstream._set_up(r, True)
    assert g.batcher.max_concurrent == 6 and g.pressure.max_in_hand == 2 * 128 * 7  # two batches a call
    g.upstream._set_up(replicas[0], False)
    assert g.batcher.max_concurrent == 4
    g.upstream._set_up(replicas[1], False)
    g.upstream._set_up(replicas[2], False)
    assert g.batcher.max_concurrent == 2 and g.pressure.max_in_hand == 2 * 128 * 3
