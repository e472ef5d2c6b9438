"""The gateway (the course's `3.prometheus_exporter.py`): validate → micro-batch → model server; /metrics.

An async ASGI app (FastAPI on uvicorn) in front of MLflow's scoring server or the Docker image built
from it — it needs only their `/ping` and `/invocations`. Every row is checked against the data
contract before anything is forwarded; client mistakes get a 4xx JSON error naming row, field and
reason, never a 5xx. Every metric is measured from the traffic it serves (`msml.monitoring.metrics`);
drift is PSI against the reference logged with the model at training.

This module wires the parts and translates HTTP; each part has its own module:
  settings    GatewayConfig              formats     body → rows (MLflow's request formats)
  validation  rows against the contract  batching    bounded adaptive micro-batcher
  upstream    model-server calls, health http        the pooled HTTP/1.1 client
  feedback    prediction ids, /feedback  errors      error types → bounded JSON answers
  openapi     schemas of the two POSTs   admission   backlog signals (accept queue, loop lag), shedding
  protocol    refusals below ASGI        msml.tracking.registry.resolve_model  model info + drift reference
  msml.loop.prediction_log  every served row to the loop store, written by a thread (labels: feedback)

Each request has a deadline (`request_timeout`): it is answered by then (504 at the latest), work
whose client left is withdrawn before it reaches the model and counted as status 499, a full queue,
a backlog in front of the handlers (`admission`) or a model server known to be down is a 503 with
Retry-After within milliseconds; while ≥ 10 % of requests are refused, the limits tighten (`admission`).

Its length (~550 lines): the request path (predict, record, refusal) and the app's lifecycle (start, reload on
a new champion, stop) share the Gateway's state; everything else already lives in the modules listed above.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import signal
import socket
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import ClientDisconnect

from msml.config import DEFAULT_PORTS, LOOPBACK
from msml.loop.prediction_log import PredictionLog
from msml.loop.store import LoopStore
from msml.monitoring.drift import SlidingPSI
from msml.monitoring.metrics import DRIFT_PSI, GatewayMetrics
from msml.ops.processes import check_port
from msml.serving.admission import Pressure
from msml.serving.batching import MicroBatcher, QueueFull
from msml.serving.errors import (
    JSON_TYPE,
    GatewayError,
    ModelServerError,
    Overloaded,
    body_error,
    error_response,
    json_response,
    request_id,
    send_error,
)
from msml.serving.feedback import FeedbackBook
from msml.serving.formats import extract_rows, read_json
from msml.serving.openapi import openapi_extra
from msml.serving.settings import GatewayConfig
from msml.serving.upstream import Upstream
from msml.serving.validation import RowValidator

__all__ = ["Gateway", "GatewayConfig", "create_app", "run"]

log = logging.getLogger("msml.gateway")
ENDPOINTS = ("/invocations", "/feedback", "/metrics", "/health", "/ping", "/openapi.json", "/docs")
CLIENT_GONE = 499  # nginx's code for "client closed the request": never sent, only counted
# the deadline the handler works to is this much before the promised one: the 504 itself takes time to
# build and send, and timers fire late on a busy loop (measured: answers 2 ms past a 2 s deadline at load 2)
ANSWER_MARGIN = 0.02
BACKLOG = 2048  # uvicorn's default listen backlog (the kernel caps it at net.core.somaxconn)


class ClientGone(Exception):
    """The client disconnected before its answer."""


def _overloaded(why: str) -> Overloaded:
    return Overloaded("queue_full", f"gateway is at capacity ({why}); retry shortly")


class Gateway:
    """The data plane: parts and state shared by the handlers."""

    def __init__(
        self, config: GatewayConfig, metrics: GatewayMetrics | None = None, listener: socket.socket | None = None
    ) -> None:
        c = self.config = config
        self.contract = c.contract
        self.features = self.contract.features
        m = self.metrics = metrics or GatewayMetrics()
        self._rejected_children: dict[str, Any] = {}  # metric children by reason (.labels() is the costly part)
        self.validator = RowValidator(self.contract)
        self.upstream = Upstream(
            c.model_urls,
            self.features,
            m,
            connect_timeout=c.connect_timeout,
            timeout=c.request_timeout,
            probe_interval=c.probe_interval,
            max_idle=c.max_concurrent_batches + 2,
            max_batch_rows=c.max_batch_rows,
            on_health=self._healthy,
        )
        self.batcher = MicroBatcher(
            self.upstream.score,
            max_batch_rows=c.max_batch_rows,
            max_wait=c.max_wait_ms / 1000,
            max_concurrent=c.max_concurrent_batches,  # per replica up: `_healthy` (none is known up yet)
            max_queued_rows=c.max_queued_rows,
            max_queue_delay=c.max_queue_delay_ms / 1000,
            on_batch=m.batch_rows.observe,
            on_dropped=self._rejected("withdrawn").inc,
        )
        # in hand while shedding: two whole batches of 1-row requests for each call that can be in flight (one
        # being scored, one ready to go); 1.5 batches starved the model (12,000 req/s offered: 3,935 and 4,236
        # good/s, against 4,626 and 5,107 with 2)
        self.pressure = Pressure(c.max_loop_lag_ms / 1000, c.max_accept_queue, listener, max_in_hand=self._in_hand())
        m.in_flight.set_function(lambda: self.pressure.in_hand)  # read at scrape time: nothing per request
        # the loop store: opened lazily (a database that is down costs logged rows, never the gateway's start)
        self.store = LoopStore(c.loop_store) if c.loop_store else None
        self.prediction_log = None
        if self.store is not None:
            self.prediction_log = PredictionLog(
                self.store,
                self.contract.fingerprint,
                m.prediction_log_rows,
                m.prediction_log_dropped,
                max_buffered_rows=c.prediction_log_rows,
            )
            m.prediction_log_pending.set_function(lambda: self.prediction_log.pending)
        self.feedback = FeedbackBook(
            self.contract,
            m,
            window=c.feedback_window,
            max_tracked=c.max_tracked_predictions,
            max_items=c.max_feedback_items,
            token=c.feedback_token,
            store=self.store,
        )
        self.model_info = None
        self.drift: SlidingPSI | None = None
        # label children looked up once: .labels() is the costly part of a metric update
        self._missing = {
            col.name: m.feature_missing.labels(feature=col.name) for col in self.contract.columns if col.nullable
        }
        self._by_label = [m.predictions.labels(self.contract.negative), m.predictions.labels(self.contract.positive)]
        self._labels = [self.contract.negative, self.contract.positive]
        self._request_children: dict[tuple[str, int], Any] = {}
        self._latency_children: dict[str, Any] = {}

    def _in_hand(self) -> int:
        return 2 * self.config.max_batch_rows * self.batcher.max_calls

    def _healthy(self, replicas_up: int) -> None:
        """The model calls in flight follow the replicas that are up (each has its own workers): calls meant for
        a replica that is down would queue on the others. One slot at least: the call let through while none is."""
        self.batcher.resize(self.config.max_concurrent_batches * max(1, replicas_up))
        self.pressure.max_in_hand = self._in_hand()

    def _rejected(self, reason: str):
        child = self._rejected_children.get(reason)
        if child is None:
            child = self._rejected_children[reason] = self.metrics.rejected.labels(reason=reason)
        return child

    async def start(self) -> None:
        await self._load_model_facts()
        if self.prediction_log is not None:
            self.prediction_log.start()
            try:
                await asyncio.to_thread(self.feedback.resume)
            except Exception as exc:  # the store is down: serve anyway, the window starts empty
                log.warning("loop store %r: live accuracy starts without its recent labels (%s)", self.store, exc)
        # SIGHUP: the champion moved (msml.loop.rollout sends it once the model servers serve the new one)
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # not the main thread (tests)
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self._reload_soon)
        await self.batcher.start()
        self.pressure.start()
        await self.upstream.start()
        # the start-up heap (FastAPI, pydantic, MLflow's client) is permanent: keep it out of the cyclic GC,
        # whose full passes over it held the event loop for 50+ ms at a time (measured on a 1,000-row request)
        gc.freeze()
        # a pass costs about the young objects still alive (the requests in flight), not the garbage: with a
        # pass every 700 allocations (the default), 170 middle-generation passes took 3–15 ms each in 25 s of
        # load; 14× rarer passes took the gateway's CPU at 1,850 req/s from 0.74–0.75 to 0.66–0.70 of a core
        gc.set_threshold(10_000, 10, 10)

    async def stop(self) -> None:
        await self.pressure.stop()
        await self.upstream.stop()
        await self.batcher.stop()
        if self.prediction_log is not None:  # after the batcher: the last answers' rows are in the buffer
            await asyncio.to_thread(self.prediction_log.stop)
            self.store.close()

    def _reload_soon(self) -> None:
        self._reload_task = asyncio.get_running_loop().create_task(self.reload_model_facts())

    async def reload_model_facts(self) -> None:
        """Resolve the model URI again (a new champion): its info, and a fresh drift window on its reference —
        the old window's rows were compared with the old reference, and a stale reference keeps the drift alert
        firing (and the loop retraining) after the new model learnt the shifted data."""
        self.drift = None
        self.metrics.drift_psi.clear()
        await self._load_model_facts()

    async def _load_model_facts(self) -> None:
        from msml.tracking.registry import resolve_model

        c = self.config
        reference = None
        if c.model_uri:
            try:
                self.model_info, reference = await asyncio.to_thread(resolve_model, c.model_uri, c.tracking_uri)
                info = self.model_info
                self.metrics.model_info.info(
                    {
                        "name": info.name,
                        "version": info.version,
                        "alias": info.alias,
                        "run_id": info.run_id,
                        "uri": info.uri,
                    }
                )
                log.info("serving %s (version %s, run %s)", info.uri, info.version, info.run_id)
            except Exception as exc:
                log.warning(
                    "could not resolve %s on %s (%s): model info and drift reference are absent",
                    c.model_uri,
                    c.tracking_uri,
                    exc,
                )
        else:
            log.warning("no model URI given: model info and the model's drift reference are absent")
        if c.drift_reference is not None:
            reference = json.loads(Path(c.drift_reference).read_text())
        if reference is not None:
            self.drift = SlidingPSI(reference, window=c.drift_window)
            self.metrics.track_drift_window(self.drift)
        else:
            log.warning("no drift reference: %s is not exported", DRIFT_PSI)

    # ---- /invocations --------------------------------------------------------------------------------
    async def predict(self, request: Request, deadline: float) -> dict[str, Any]:
        """Read, validate, queue and await one request's rows; raises GatewayError or ClientGone."""
        c, batcher = self.config, self.batcher
        batcher.arriving += 1
        queued = False
        try:
            # admitted already (`refusal`, before the body is read). A model server that is down is checked
            # after validation: a client's mistake stays a 4xx.
            payload = await read_json(request, c.max_body_bytes)
            rows = self.validator.validate(extract_rows(payload, self.features, c.max_rows_per_request))
            batcher.arriving -= 1
            queued = True
            self.upstream.require_up(batcher.queued_rows)  # fails fast while no model server is up
            features = self.features
            try:  # submit checks the bounds again: the oldest item may have passed the delay limit since
                future = batcher.submit([[r[f] for f in features] for r in rows])
            except QueueFull as exc:  # rare: admitted a moment ago (admission's own answers decide shedding)
                raise _overloaded(exc.why) from None
            probabilities = await self._await(future, request.receive, deadline)
            self.pressure.answered += 1  # the rate the gateway keeps up with decides shedding (admission)
        finally:
            if not queued:
                batcher.arriving -= 1
        return self.record(rows, probabilities)

    def refusal(self) -> Overloaded | None:
        """Why a new request cannot be answered in time (batcher bounds, backlog in front of the handlers), or
        None: asked before the request is read, so that under overload the CPU drains the backlog."""
        pressure = self.pressure
        batcher = self.batcher
        try:  # the queue-delay limit is tightened with the others while shedding (admission)
            batcher.admit(1, pressure.queue_delay_limit(batcher.max_queue_delay))
        except QueueFull as exc:
            why = exc.why
        else:
            why = pressure.too_busy()
        pressure.count(refused=why is not None)
        return None if why is None else _overloaded(why)

    async def _await(self, future: asyncio.Future, receive, deadline: float) -> list[float]:
        """The batch result, unless the client leaves (→ ClientGone) or the deadline passes (→ 504) first.

        Either cancels the future, which withdraws the rows (dropped before they reach the model if still
        queued). The future is awaited itself, not through asyncio.wait: its result then wakes the handler in
        one turn of the event loop, not two (measured at concurrency 1 on this 2-core VM: 140 µs from the
        batch's answer to the handler, against 183 µs)."""
        gone = asyncio.ensure_future(receive())  # returns only when the client disconnects (body already read)
        gone.add_done_callback(lambda _: future.cancel())
        timer = asyncio.get_running_loop().call_at(deadline, future.cancel)
        try:
            return await future
        except asyncio.CancelledError:
            if asyncio.current_task().cancelling():  # the handler itself is cancelled (shutting down)
                raise
            if gone.done() and not gone.cancelled():
                raise ClientGone() from None
            raise ModelServerError(
                504, "deadline", f"no answer within the request deadline of {self.config.request_timeout} s"
            ) from None
        finally:
            timer.cancel()
            gone.cancel()

    def record(self, rows: list[dict[str, Any]], probabilities: list[float]) -> dict[str, Any]:
        """Update the prediction metrics and remember each prediction for /feedback; build the answer."""
        m, threshold = self.metrics, self.config.threshold
        classes = [1 if p >= threshold else 0 for p in probabilities]
        for row, p, cls in zip(rows, probabilities, classes, strict=True):  # counts checked upstream
            self._by_label[cls].inc()
            m.probability.observe(p)
            for f, child in self._missing.items():
                if row[f] is None:
                    child.inc()
        m.rows_scored.inc(len(rows))
        if self.drift is not None:
            self.drift.add(rows)
        now = time.time()
        ids = self.feedback.remember(classes, now)
        if self.prediction_log is not None:  # a reference on a buffer: the writer thread encodes and writes
            self.prediction_log.append(ids, rows, probabilities, classes, self.model_info, now)
        return {"predictions": probabilities, "labels": [self._labels[k] for k in classes], "ids": ids}

    # ---- metrics --------------------------------------------------------------------------------------
    def count(self, exc: GatewayError) -> None:
        if exc.status < 500 and hasattr(exc, "details"):
            for d in exc.details:
                self.metrics.validation_failures.labels(field=d["field"], reason=d["reason"]).inc()
        elif isinstance(exc, Overloaded) or getattr(exc, "kind", None) in ("model_down", "deadline"):
            self._rejected(exc.kind).inc()

    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        key = (endpoint, status)
        child = self._request_children.get(key)
        if child is None:
            child = self._request_children[key] = self.metrics.requests.labels(endpoint=endpoint, status=str(status))
        child.inc()
        hist = self._latency_children.get(endpoint)
        if hist is None:
            hist = self._latency_children[endpoint] = self.metrics.request_seconds.labels(endpoint=endpoint)
        hist.observe(seconds)

    def scrape(self) -> bytes:
        if self.drift is not None:
            for feature, value in self.drift.values().items():
                self.metrics.drift_psi.labels(feature=feature).set(value)
        return generate_latest(self.metrics.registry)


class _Middleware:
    """Counts and times every request, turns any error into its JSON answer (pure ASGI: no per-request task).

    `POST /invocations` goes straight to its handler: FastAPI's routing and dependency machinery cost
    about a third of the gateway's CPU per request (profiled) and add nothing to a handler that reads
    its own body; the FastAPI route stays for the OpenAPI schema and the other methods' 405. An instance
    with `fast_paths` wraps the whole FastAPI app and serves only those; the one inside Starlette's stack
    (no `fast_paths`) counts everything else. `admit`: ask `Gateway.refusal` before a fast path's handler
    (False where the HTTP protocol has asked already: protocol.RefusingProtocol).
    """

    def __init__(
        self, app, gateway: Gateway, fast_paths: dict[tuple[str, str], Any] | None = None, admit: bool = False
    ) -> None:
        self.app = app
        self.gateway = gateway
        self.fast_paths = fast_paths or {}
        self.admit = admit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        handler = self.fast_paths.get((scope["method"], scope["path"])) if self.fast_paths else None
        if handler is None and self.fast_paths:  # the outer instance: everything else goes through the stack
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        path = scope.get("path", "")
        endpoint = path if path in ENDPOINTS else "other"
        status = 0

        async def send_wrapper(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            if handler is not None:
                if self.admit and (refused := self.gateway.refusal()) is not None:
                    self.gateway.count(refused)
                    await send_error(send_wrapper, refused)
                    return
                response = await handler(Request(scope, receive))
                await response(scope, receive, send_wrapper)
            else:
                await self.app(scope, receive, send_wrapper)
        except (ClientGone, ClientDisconnect):
            status = CLIENT_GONE  # nobody to answer; never a 5xx of ours
            self.gateway._rejected("client_gone").inc()
        except Exception:
            rid = request_id()
            log.exception("unexpected error (request id %s)", rid)
            if status == 0:
                await error_response(GatewayError("internal error; the gateway's log has the details"), rid)(
                    scope, receive, send_wrapper
                )
        finally:
            self.gateway.observe_request(endpoint, status or 500, time.perf_counter() - start)


def create_app(
    config: GatewayConfig,
    metrics: GatewayMetrics | None = None,
    listener: socket.socket | None = None,
    admitted_by_protocol: bool = False,
) -> _Middleware:
    """The gateway's ASGI app for `config` (metrics on their own registry unless given; `listener`: the socket
    it is served on, whose accept queue admission watches; `admitted_by_protocol`: it is served through
    protocol.RefusingProtocol, which asks for refusals itself); `.gateway` is its data plane, `.app` the
    FastAPI app behind it."""
    gateway = Gateway(config, metrics, listener)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await gateway.start()
        try:
            yield
        finally:
            await gateway.stop()

    app = FastAPI(
        title="msml gateway",
        version="1",
        lifespan=lifespan,
        description=f"Validating, micro-batching gateway for the {config.contract.title} model "
        "(rows are checked against the data contract, then scored by the model server).",
    )
    app.state.gateway = gateway
    invocations_extra, feedback_extra = openapi_extra(
        config.contract, config.max_rows_per_request, config.max_feedback_items
    )

    @app.post("/invocations", openapi_extra=invocations_extra, summary="Score rows (MLflow request formats)")
    async def invocations(request: Request) -> Response:
        g = gateway
        try:
            deadline = asyncio.get_running_loop().time() + max(
                config.request_timeout - ANSWER_MARGIN, 0.5 * config.request_timeout
            )
            return json_response(await g.predict(request, deadline))
        except GatewayError as exc:
            g.count(exc)
            return error_response(exc)
        except RecursionError:  # a value nested too deep for some library on the way (Python 3.11)
            exc = body_error(400, "too_deep", "a value is nested too deeply")
            g.count(exc)
            return error_response(exc)
        finally:
            g.pressure.release()  # admitted by `Gateway.refusal` (protocol or middleware) before this ran

    @app.post("/feedback", openapi_extra=feedback_extra, summary="Ground truth for earlier prediction ids")
    async def feedback(request: Request) -> Response:
        try:
            gateway.feedback.authorise(request.headers.get("authorization"))
            return json_response(await gateway.feedback.record(await read_json(request, config.max_body_bytes)))
        except GatewayError as exc:
            return error_response(exc)

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics() -> Response:
        return Response(gateway.scrape(), media_type=CONTENT_TYPE_LATEST)

    @app.get(
        "/health",
        summary="Gateway and model-server health",
        responses={503: {"description": "No model server is up (refusing connections, or silent for 2 s)."}},
    )
    async def health() -> Response:
        info, up = gateway.model_info, gateway.upstream.up
        body = {
            "status": "ok" if up else "model_unavailable",
            "model_up": up,
            "model_url": gateway.upstream.url,
            "replicas": {r.url: r.up for r in gateway.upstream.replicas},
            "model": None
            if info is None
            else {"name": info.name, "version": info.version, "alias": info.alias, "run_id": info.run_id},
            "drift_reference": gateway.drift is not None,
            # whose training data the drift reference came from (the served model's run, unless --drift-reference)
            "drift_reference_run": None
            if gateway.drift is None or info is None or config.drift_reference is not None
            else info.run_id,
        }
        return json_response(body, 200 if up else 503)

    @app.get("/ping", summary="Liveness of the gateway itself (as MLflow's server answers /ping)")
    async def ping() -> Response:
        return Response(b"\n", media_type=JSON_TYPE)

    # counting wraps every route; POST /invocations is served from outside FastAPI altogether: its per-request
    # telemetry check (environment and OpenTelemetry look-ups) and Starlette's middleware stack (error,
    # body-limit layers) cost ~10 % of a refused request's CPU (profiled under overload), and its handler
    # does their jobs itself
    app.add_middleware(_Middleware, gateway=gateway)
    fast_paths = {("POST", "/invocations"): invocations}
    return _Middleware(app, gateway, fast_paths=fast_paths, admit=not admitted_by_protocol)


def run(
    config: GatewayConfig, host: str = LOOPBACK, port: int = DEFAULT_PORTS.gateway, log_level: str = "warning"
) -> None:
    """Serve the gateway in the foreground (uvloop + httptools when installed)."""
    import importlib.util

    import uvicorn

    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # the socket is ours, not uvicorn's, so that admission can watch its accept queue
    try:
        listener = socket.create_server((host, port), backlog=BACKLOG, family=_family(host))
    except OSError:
        check_port(port, "gateway", "--port", host)  # names the holder
        raise
    # each request is asked for a refusal once: by the HTTP protocol where it can, else by the app
    app = create_app(config, listener=listener, admitted_by_protocol=http == "httptools")
    if http == "httptools":
        from msml.serving.protocol import refusing_protocol

        http = refusing_protocol(app.gateway)
    # no proxy-header rewriting: nothing reads the client address, and it is work on every request
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            loop=loop,
            http=http,
            log_level=log_level,
            access_log=False,
            proxy_headers=False,
            backlog=BACKLOG,
        )
    )
    server.run(sockets=[listener])


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET
