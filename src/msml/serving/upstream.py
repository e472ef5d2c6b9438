"""The model server as the gateway sees it: score a batch, know whether it is up, fail fast when it is not.

A `Replica` is one model server: its pooled client, whether it is up, and how many calls it has in
flight. Up or down is decided from what the gateway hears, not from one probe's luck:

- a refused connection (a call's or a ping's) marks it down at once: nothing listens there;
- otherwise it is down once it has been *silent* for `SILENCE` seconds: a call or a `/ping` has waited that
  long, or ended without an answer (timeout, broken connection), and no answer of any kind came since it
  was sent. Every answer — a ping's 200, any HTTP answer to a call — proves it alive. A frozen one
  (SIGSTOP) is down within ~2 s; a busy one, whose calls keep being answered, is never down.
- `/ping` is sent every `probe_interval` and is never given up on early: a ping waits up to the call
  timeout and its late answer still counts. (Why: `mlflow models serve` is one sync gunicorn worker
  that serves one connection at a time in arrival order, so a ping waits behind every request queued
  before it. Reproduced — issue 27's recipe, 64 clients straight at the model server, LogisticRegression
  baseline: an independent prober's /ping took 1.6–1.9 s (p50); the old probe gave up after 1 s, marked
  the replica DOWN after two such pings, and each new ping went to the back of the queue again.)
- while no replica is up, a trickle of real calls still goes through (half-open): one call at a time, at
  most one started per `TRIAL_INTERVAL`, and its answer brings the replica back at once. Every other
  request is a 503 within milliseconds. (Why: while down nothing else reached the model server, the
  gateway's closed-loop clients spun on instant 503s, and only a probe answered within 1 s could end it:
  9,123 and 12,049 `model_down` answers in two of three rounds of the recipe, for a live server.)

Several replicas (`--model-url` repeated): `pick` sends each batch to the healthy replica with the
fewest calls in flight, ties to the one used least recently (round robin). Each replica is judged on
its own; the gateway answers 503 only when none is up, and `on_health` is told how many are up (the
batcher's in-flight limit follows it). A batch that never got an answer — refused, or broken mid-answer
(reset, truncated) — is sent once more to another healthy replica (scoring is idempotent): a replica
that dies costs at most the batches it held at that moment. Upstream text is logged, never sent to
the client.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

from msml.monitoring.metrics import GatewayMetrics
from msml.serving import http
from msml.serving.errors import ModelServerError, dumps, loads

log = logging.getLogger("msml.gateway")
# seconds of silence (something waiting, no answer since it was sent) that mark a replica down: two of the
# old 1 s probe timeouts, so a frozen server is down as soon as before
SILENCE = 2.0
TRIAL_INTERVAL = 0.1  # while no replica is up: at most one real call started per this many seconds
_RETRIED = ("unreachable", "transport")  # no answer came back: another replica may score the batch


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
        self.in_flight = 0
        self.last_sent = 0  # sequence number of the last batch sent here: ties go to the least recent
        self.last_trial = -math.inf  # when a call was last let through while it was down
        # what the gateway has heard (time.monotonic()): the last answer, the requests out (token → sent), and
        # the earliest send since that answer of a request that ended unanswered
        self.heard = -math.inf
        self.waiting: dict[int, float] = {}
        self.unanswered: float | None = None
        self.pinging: asyncio.Task | None = None

    def silent_since(self) -> float | None:
        """Since when something has waited for an answer that has not come: the earliest request out or ended
        unanswered since the replica was last heard (counted from then at the earliest); None if nothing waits."""
        first = next(iter(self.waiting.values()), math.inf)  # dicts keep order: the first was sent first
        if self.unanswered is not None:
            first = min(first, self.unanswered)
        return None if first == math.inf else max(first, self.heard)


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
        on_health: Callable[[int], None] | None = None,
    ) -> None:
        if not urls:
            raise ValueError("at least one model server URL is needed")
        self.features = features
        self.metrics = metrics
        self.timeout = timeout
        self.probe_interval = probe_interval
        self.silence = SILENCE
        self.on_health = on_health  # called with the number of replicas up, whenever it changes
        # an answer carries one prediction per row (~40 bytes as probabilities): 4 KB a row is generous
        self.replicas = [
            Replica(url, connect_timeout, timeout, max_idle, max_response_bytes=4096 * max_batch_rows) for url in urls
        ]
        # label children looked up once (every series exists from the start: a replica never seen up reads 0)
        self._up_gauge = {r.url: metrics.model_replica_up.labels(replica=r.url) for r in self.replicas}
        self._calls = {r.url: metrics.model_replica_calls.labels(replica=r.url) for r in self.replicas}
        self._sent = itertools.count(1)
        self._tokens = itertools.count(1)
        self._trial: Replica | None = None  # the call let through while no replica is up, while it runs
        self._admitted = -math.inf  # when a request was last let in to be that call
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
        """Ping every replica and wait up to a second for the answers (a slow one is judged as it answers)."""
        for r in self.replicas:
            r.pinging = asyncio.create_task(self._ping(r))
        await asyncio.wait([r.pinging for r in self.replicas], timeout=1.0)
        self._probe = asyncio.create_task(self._probe_loop(), name="model-probe")

    async def stop(self) -> None:
        tasks = [t for t in (self._probe, *(r.pinging for r in self.replicas)) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for r in self.replicas:
            await r.client.aclose()

    def require_up(self, queued_rows: int = 0) -> None:
        """503 at once while no replica is up (the gateway asks before queueing a request) — unless a trial call
        is due and nothing is queued: then this one request may be it (half-open), and the next is let in no
        sooner than TRIAL_INTERVAL later (else every request read while its batch is collected would join it)."""
        if not self.up and not (queued_rows == 0 and self._trial_due(admitting=True)):
            raise self._down_error()

    def _down_error(self) -> ModelServerError:
        return ModelServerError(
            503, "model_down", f"model server at {self.url} is down (not answering); retry shortly", retry_after=1
        )

    def _trial_due(self, admitting: bool = False) -> bool:
        now = time.monotonic()
        if self._trial is not None or now - max(r.last_trial for r in self.replicas) < TRIAL_INTERVAL:
            return False
        if admitting:
            if now - self._admitted < TRIAL_INTERVAL:
                return False
            self._admitted = now
        return True

    def pick(self, exclude: Replica | None = None) -> Replica:
        """The healthy replica with the fewest calls in flight (ties: least recently sent); while none is up, the
        one tried least recently if a trial call is due; else 503. Changes nothing (`_call` records the send)."""
        healthy = [r for r in self.replicas if r.up and r is not exclude]
        if healthy:
            return min(healthy, key=lambda r: (r.in_flight, r.last_sent))
        if exclude is None and self._trial_due():
            return min(self.replicas, key=lambda r: r.last_trial)
        raise self._down_error()

    async def score(self, rows: list[list[Any]], timeout: float | None = None) -> list[float]:
        """One /invocations call for a batch; the positive-class probability per row."""
        payload = dumps(self.body(rows))
        replica = self.pick()
        try:
            content = await self._call(replica, payload, timeout)
        except ModelServerError as exc:
            # no answer came back (refused, or broken mid-answer): another healthy replica may take it, once
            if exc.kind not in _RETRIED or not any(r.up and r is not replica for r in self.replicas):
                raise
            replica = self.pick(exclude=replica)
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

    def body(self, rows: list[list[Any]]) -> dict[str, Any]:
        """The /invocations body of a batch of validated rows (the features in order, None where missing).

        MLflow's columnar `inputs` (one list per column) costs its scoring server about 40 % less CPU than
        `dataframe_split`, which builds a DataFrame and casts each column to the signature's type before the
        model's own schema enforcement does it again (measured in-process, the champion: 1 row 8.1 → 4.7 ms,
        16 rows 10.5 → 6.5 ms). But MLflow parses a null in a columnar string column as the string 'None', a
        category, where dataframe_split keeps it missing: a batch with a missing value goes as dataframe_split."""
        if not rows or any(v is None for row in rows for v in row):
            return {"dataframe_split": {"columns": self.features, "data": rows}}
        columns = zip(*rows, strict=True)
        return {"inputs": {name: list(column) for name, column in zip(self.features, columns, strict=True)}}

    async def _call(self, replica: Replica, payload: bytes, timeout: float | None) -> bytes:
        """POST the batch to `replica`; its answer's body, or ModelServerError (a refusal marks it down)."""
        start = time.perf_counter()
        trial = not replica.up  # let through while it is down (`pick`): one at a time
        if trial:
            self._trial, replica.last_trial = replica, time.monotonic()
        replica.in_flight += 1
        replica.last_sent = next(self._sent)
        self._calls[replica.url].inc()
        token = self._send(replica)
        try:
            status, content = await replica.client.request("POST", "/invocations", payload, timeout=timeout)
        except http.ConnectError as exc:
            self._failed(replica, "unreachable", exc, quiet=trial)
            self._refused(replica, token)
            raise ModelServerError(
                503, "unreachable", f"model server at {replica.url} is unreachable", retry_after=1
            ) from None
        except http.TimeoutError_ as exc:
            self._failed(replica, "timeout", exc, quiet=trial)
            self._unanswered(replica, token)
            raise ModelServerError(504, "timeout", f"model server at {replica.url} did not answer in time") from None
        except http.HTTPError as exc:
            self._failed(replica, "transport", exc, quiet=trial)
            self._unanswered(replica, token)
            raise ModelServerError(
                502, "transport", f"model server at {replica.url} broke the connection or sent a malformed answer"
            ) from None
        finally:
            replica.waiting.pop(token, None)  # cancelled (the gateway stopping): no verdict
            replica.in_flight -= 1
            if trial:
                self._trial = None
            self.metrics.model_request_seconds.observe(time.perf_counter() - start)
        self._heard(replica, token)  # it answered: up, whatever it answered
        if status != 200:
            self._failed(replica, f"http_{status // 100}xx", content[:300])
            raise ModelServerError(502, "bad_status", f"model server answered {status}")
        return content

    # ---- what the gateway hears -----------------------------------------------------------------------------
    def _send(self, replica: Replica) -> int:
        token = next(self._tokens)
        replica.waiting[token] = time.monotonic()
        return token

    def _heard(self, replica: Replica, token: int) -> None:
        replica.waiting.pop(token, None)
        replica.heard, replica.unanswered = time.monotonic(), None
        if not replica.up:
            self._set_up(replica, True)

    def _unanswered(self, replica: Replica, token: int) -> None:
        sent = replica.waiting.pop(token, None)
        if sent is not None and sent > replica.heard:
            replica.unanswered = sent if replica.unanswered is None else min(replica.unanswered, sent)
        self._judge(replica)
        self._probe_now.set()  # the probe loop re-times its next look at this replica

    def _refused(self, replica: Replica, token: int) -> None:
        replica.waiting.pop(token, None)
        if replica.up:
            self._set_up(replica, False, "refused the connection")

    def _judge(self, replica: Replica) -> float:
        """Mark `replica` down if it has been silent for SILENCE seconds; when it would be (inf: never)."""
        since = replica.silent_since()
        if since is None or not replica.up:
            return math.inf
        silent = time.monotonic() - since
        if silent >= self.silence:
            self._set_up(
                replica,
                False,
                f"no answer for {silent:.1f} s ({replica.in_flight} calls in flight, "
                f"ping {'waiting' if replica.pinging and not replica.pinging.done() else 'failed'})",
            )
            return math.inf
        return since + self.silence

    def _failed(self, replica: Replica, kind: str, what: Any, quiet: bool = False) -> None:
        self.metrics.model_errors.labels(kind=kind).inc()
        if not quiet:  # a trial call failing is the expected case: counted, not logged ten times a second
            log.warning("model server %s: %s (%r)", replica.url, kind, what)

    def _set_up(self, replica: Replica, up: bool, why: str = "") -> None:
        changed = up != replica.up
        if changed:
            log.warning("model server %s is %s%s", replica.url, "up" if up else "DOWN", f": {why}" if why else "")
        replica.up = up
        self._up_gauge[replica.url].set(1 if up else 0)
        self.metrics.model_up.set(1 if self.up else 0)
        if changed and self.on_health is not None:
            self.on_health(sum(r.up for r in self.replicas))

    # ---- the probe ---------------------------------------------------------------------------------------------
    async def _probe_loop(self) -> None:
        """A ping to each replica every probe_interval (while none of its own is waiting), and each replica judged
        when it would turn silent: the loop wakes then, or when a call ends unanswered."""
        while True:
            for r in self.replicas:
                if r.pinging is None or r.pinging.done():
                    r.pinging = asyncio.create_task(self._ping(r))
            now = time.monotonic()
            wake = min([now + self.probe_interval, *(self._judge(r) for r in self.replicas)])
            try:
                async with asyncio.timeout(max(wake - now, 0.01)):
                    await self._probe_now.wait()
            except TimeoutError:
                pass
            self._probe_now.clear()

    async def _ping(self, replica: Replica) -> None:
        """One /ping, waited for as long as a call would be (a late answer still proves it alive)."""
        token = self._send(replica)
        try:
            status, _ = await replica.client.request("GET", "/ping", timeout=max(self.timeout, 2 * self.silence))
        except http.ConnectError:
            self._refused(replica, token)
        except http.HTTPError:
            self._unanswered(replica, token)
        except BaseException:  # cancelled (the gateway stopping): no verdict
            replica.waiting.pop(token, None)
            raise
        else:
            if status == 200:
                self._heard(replica, token)
            else:  # not ready (a model server still loading its model does not answer 200)
                self._unanswered(replica, token)


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
