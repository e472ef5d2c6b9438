"""The model server as the gateway sees it: score a batch, know whether it is up, fail fast when it is not.

A `Replica` is one model server: its pooled client, whether it is up, and how many calls it has in
flight. `/ping` is probed every `probe_interval` (1 s to answer); a refused connection or `DOWN_AFTER`
failed probes in a row mark it down, and while it is down a call fails at once (503, Retry-After)
instead of waiting for a timeout — the probe is the half-open state that lets it back in when `/ping`
answers again. A call that times out only triggers an immediate probe: one slow batch or one slow
ping on a busy machine does not make a healthy server "down" (measured: a 0.2 s ping timeout flapped
under load average 12 on 2 cores), a frozen one is down within ~2 s. Upstream text is logged, never sent to the client.

Several replicas (`--model-url` repeated): `pick` sends each batch to the healthy replica with the
fewest calls in flight, ties to the one used least recently (round robin). Each replica is probed
and marked down on its own; the gateway answers 503 only when none is up. A refused connection means
the batch was never processed, so it is sent once more to another healthy replica: a replica that
dies costs at most the batches it held at that moment.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Sequence
from typing import Any

from msml.monitoring.metrics import GatewayMetrics
from msml.serving import http
from msml.serving.errors import ModelServerError, dumps, loads

log = logging.getLogger("msml.gateway")
DOWN_AFTER = 2  # failed probes in a row


class Replica:
    def __init__(
        self, url: str, connect_timeout: float, timeout: float, max_idle: int, max_response_bytes: int
    ) -> None:
        self.url = url.rstrip("/")
        self.client = http.PooledHTTPClient(
            self.url,
            connect_timeout=connect_timeout,
            timeout=timeout,
            max_idle=max_idle,
            max_response_bytes=max_response_bytes,
        )
        self.up = False
        self.failed_probes = 0
        self.in_flight = 0
        self.last_sent = 0  # sequence number of the last batch sent here: ties go to the least recent

    async def ping(self, timeout: float) -> bool:
        try:
            status, _ = await self.client.request("GET", "/ping", timeout=timeout)
            return status == 200
        except http.HTTPError:
            return False


class Upstream:
    def __init__(
        self,
        urls: Sequence[str],
        features: list[str],
        metrics: GatewayMetrics,
        connect_timeout: float = 0.5,
        timeout: float = 10.0,
        probe_interval: float = 1.0,
        max_idle: int = 4,
        max_batch_rows: int = 256,
    ) -> None:
        if not urls:
            raise ValueError("at least one model server URL is needed")
        self.features = features
        self.metrics = metrics
        self.timeout = timeout
        self.probe_interval = probe_interval
        self.probe_timeout = 1.0
        # an answer carries one prediction per row (~40 bytes as probabilities): 4 KB a row is generous
        self.replicas = [
            Replica(url, connect_timeout, timeout, max_idle, max_response_bytes=4096 * max_batch_rows) for url in urls
        ]
        # label children looked up once (every series exists from the start: a replica never seen up reads 0)
        self._up_gauge = {r.url: metrics.model_replica_up.labels(replica=r.url) for r in self.replicas}
        self._calls = {r.url: metrics.model_replica_calls.labels(replica=r.url) for r in self.replicas}
        self._sent = itertools.count(1)
        self._probe: asyncio.Task | None = None
        self._probe_now = asyncio.Event()

    @property
    def up(self) -> bool:
        """True while any replica is up: the stack can score."""
        return any(r.up for r in self.replicas)

    @property
    def url(self) -> str:
        return ", ".join(r.url for r in self.replicas)

    async def start(self) -> None:
        await self._probe_all()  # down at once if it fails: it was never seen up
        self._probe = asyncio.create_task(self._probe_loop(), name="model-probe")

    async def stop(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            await asyncio.gather(self._probe, return_exceptions=True)
        for r in self.replicas:
            await r.client.aclose()

    def require_up(self) -> None:
        """503 at once while no replica is known up (the gateway asks before queueing a request)."""
        if not self.up:
            raise ModelServerError(
                503,
                "model_down",
                f"model server at {self.url} is down (failing /ping); retry shortly",
                retry_after=1,
            )

    def pick(self) -> Replica:
        """The healthy replica with the fewest calls in flight (ties: least recently sent); 503 when none is up."""
        self.require_up()
        return min((r for r in self.replicas if r.up), key=lambda r: (r.in_flight, r.last_sent))

    async def score(self, rows: list[list[Any]], timeout: float | None = None) -> list[float]:
        """One /invocations call for a batch; the positive-class probability per row."""
        payload = dumps({"dataframe_split": {"columns": self.features, "data": rows}})
        replica = self.pick()
        try:
            content = await self._call(replica, payload, timeout)
        except ModelServerError as exc:
            # refused: never processed, so another healthy replica may take it (once; pick skips the one now down)
            if exc.kind != "unreachable" or not self.up:
                raise
            replica = self.pick()
            content = await self._call(replica, payload, timeout)
        try:
            predictions = loads(content)["predictions"]
            if len(predictions) != len(rows):
                raise ValueError(f"{len(predictions)} predictions for {len(rows)} rows")
            return [positive_probability(p) for p in predictions]
        except Exception as exc:
            self._failed(replica, "bad_response", exc)
            detail = (
                str(exc)
                if isinstance(exc, ValueError) and "predictions for" in str(exc)
                else "not JSON with one probability per row"
            )
            raise ModelServerError(502, "bad_response", f"model server's answer is not understood: {detail}") from None

    async def _call(self, replica: Replica, payload: bytes, timeout: float | None) -> bytes:
        """POST the batch to `replica`; its answer's body, or ModelServerError (a refusal marks it down)."""
        start = time.perf_counter()
        replica.in_flight += 1
        replica.last_sent = next(self._sent)
        self._calls[replica.url].inc()
        try:
            status, content = await replica.client.request("POST", "/invocations", payload, timeout=timeout)
        except http.ConnectError as exc:
            self._failed(replica, "unreachable", exc, down=True)
            raise ModelServerError(
                503, "unreachable", f"model server at {replica.url} is unreachable", retry_after=1
            ) from None
        except http.TimeoutError_ as exc:
            self._failed(replica, "timeout", exc)
            self._probe_now.set()  # frozen or just slow? the probe tells within probe_timeout
            raise ModelServerError(504, "timeout", f"model server at {replica.url} did not answer in time") from None
        except http.HTTPError as exc:
            self._failed(replica, "transport", exc)
            raise ModelServerError(
                502, "transport", f"model server at {replica.url} broke the connection or sent a malformed answer"
            ) from None
        finally:
            replica.in_flight -= 1
            self.metrics.model_request_seconds.observe(time.perf_counter() - start)
        if not replica.up:  # it answered: up, whatever a slow probe said
            self._set_up(replica, True)
        if status != 200:
            self._failed(replica, f"http_{status // 100}xx", content[:300])
            raise ModelServerError(502, "bad_status", f"model server answered {status}")
        return content

    def _failed(self, replica: Replica, kind: str, what: Any, down: bool = False) -> None:
        self.metrics.model_errors.labels(kind=kind).inc()
        log.warning("model server %s: %s (%r)", replica.url, kind, what)
        if down:
            self._set_up(replica, False)

    def _set_up(self, replica: Replica, up: bool) -> None:
        if up != replica.up:
            log.warning("model server %s is %s", replica.url, "up" if up else "DOWN")
        replica.up = up
        self._up_gauge[replica.url].set(1 if up else 0)
        self.metrics.model_up.set(1 if self.up else 0)

    async def _probe_loop(self) -> None:
        while True:
            try:
                async with asyncio.timeout(self.probe_interval):
                    await self._probe_now.wait()
            except TimeoutError:
                pass
            self._probe_now.clear()
            await self._probe_all()

    async def _probe_all(self) -> None:
        await asyncio.gather(*(self._probe_once(r) for r in self.replicas))

    async def _probe_once(self, replica: Replica) -> None:
        if await replica.ping(self.probe_timeout):
            replica.failed_probes = 0
            self._set_up(replica, True)
        else:
            replica.failed_probes += 1
            if replica.failed_probes >= DOWN_AFTER or not replica.up:
                self._set_up(replica, False)


def positive_probability(p: Any) -> float:
    if isinstance(p, list):  # predict_proba: [p(negative), p(positive)]
        value = float(p[1])
    elif isinstance(p, dict):
        value = float(list(p.values())[1])
    else:
        value = float(p)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"prediction {value} is not a probability")
    return value
