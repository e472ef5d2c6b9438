"""The gateway (the course's `3.prometheus_exporter.py`): validate → micro-batch → model server; /metrics.

An async ASGI app (FastAPI on uvicorn; a lean pooled client, `msml.serving.http`, for the model calls) in
front of MLflow's scoring server or the Docker image built
from it — it needs only their `/ping` and `/invocations`. Every row is checked against the data
contract before anything is forwarded; client mistakes get a 4xx JSON error naming row, field and
reason, never a 5xx. Every metric is measured from the traffic it serves (see
`msml.monitoring.metrics`); drift is PSI against the reference logged with the model at training.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections import OrderedDict, deque
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import pydantic
from fastapi import FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from msml.contract import Contract
from msml.monitoring.drift import DEFAULT_WINDOW, REFERENCE_ARTIFACT, SlidingPSI
from msml.monitoring.metrics import GatewayMetrics
from msml.serving import http
from msml.serving.batching import MicroBatcher

try:  # orjson is several times faster; the stdlib is the fallback
    import orjson

    _loads = orjson.loads
    _dumps = orjson.dumps
    _DecodeError: tuple[type[Exception], ...] = (orjson.JSONDecodeError, UnicodeDecodeError)
except ImportError:  # pragma: no cover
    orjson = None
    _loads = json.loads

    def _dumps(obj: Any) -> bytes:
        return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()

    _DecodeError = (json.JSONDecodeError, UnicodeDecodeError)

log = logging.getLogger("msml.gateway")

FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs", "rows")
BODY = "_body"  # metric label for failures of the request as a whole
ROW = "_row"  # ... and of a row as a whole (not a dict, wrong length, unexpected field)
# pydantic error types → the fixed set of reasons (bounded metric label values)
_REASONS = {
    "missing": "missing",
    "literal_error": "unknown_category",
    "greater_than_equal": "out_of_range",
    "less_than_equal": "out_of_range",
    "greater_than": "out_of_range",
    "less_than": "out_of_range",
    "finite_number": "out_of_range",
    "extra_forbidden": "unexpected_field",
}
ENDPOINTS = ("/invocations", "/feedback", "/metrics", "/health", "/ping", "/openapi.json", "/docs")


@dataclass(frozen=True)
class GatewayConfig:
    """Everything the gateway needs; `msml gateway` fills it from the CLI and the settings."""

    model_url: str
    contract: Contract
    model_uri: Optional[str] = None  # models:/<name>@<alias>: resolved for the info metric and drift reference
    tracking_uri: Optional[str] = None
    drift_reference: Optional[Path] = None  # a reference JSON file instead of the model's run artifact
    max_batch_rows: int = 256
    max_wait_ms: float = 2.0
    max_concurrent_batches: int = 1  # model calls at a time: the model server's workers
    max_body_bytes: int = 1_000_000
    max_rows_per_request: int = 1000
    connect_timeout: float = 0.5
    request_timeout: float = 10.0
    probe_interval: float = 1.0
    drift_window: int = DEFAULT_WINDOW
    feedback_window: int = 1000
    max_tracked_predictions: int = 100_000
    threshold: float = 0.5


class ClientError(Exception):
    """A request the client must fix: status 4xx, with the failing rows/fields in `details`."""

    def __init__(self, status: int, message: str, details: list[dict[str, Any]]):
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details


class ModelServerError(Exception):
    """The model server could not score a batch: 503 (unreachable / too slow) or 502 (bad answer)."""

    def __init__(self, status: int, kind: str, message: str):
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message


def _body_error(status: int, reason: str, message: str) -> ClientError:
    return ClientError(status, message, [{"row": None, "field": BODY, "reason": reason, "message": message}])


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    alias: str
    run_id: str
    uri: str


def resolve_model(model_uri: str, tracking_uri: str | None) -> tuple[ModelInfo, dict | None]:
    """Resolve `models:/<name>@<alias>` (or `/<version>`) to its version and run; fetch the drift reference.

    Returns the model info and the reference (None when the run has no `monitoring/drift_reference.json`).
    """
    import mlflow
    from mlflow.artifacts import download_artifacts

    if not model_uri.startswith("models:/"):
        raise ValueError(f"not a registry URI: {model_uri}")
    spec = model_uri[len("models:/"):]
    client = mlflow.MlflowClient(tracking_uri)
    if "@" in spec:
        name, alias = spec.split("@", 1)
        mv = client.get_model_version_by_alias(name, alias)
    else:
        name, version = spec.rsplit("/", 1)
        mv, alias = client.get_model_version(name, version), ""
    info = ModelInfo(name=name, version=str(mv.version), alias=alias, run_id=mv.run_id or "", uri=model_uri)
    reference = None
    if mv.run_id:
        try:
            path = download_artifacts(run_id=mv.run_id, artifact_path=REFERENCE_ARTIFACT, tracking_uri=tracking_uri)
            reference = json.loads(Path(path).read_text())
        except Exception as exc:  # the model is still served; drift is reported absent
            log.warning("run %s has no drift reference (%s): drift metrics are off", mv.run_id, exc)
    return info, reference


def _openapi_extra(contract: Contract) -> tuple[dict, dict]:
    row = contract.row_model.model_json_schema()
    row.pop("title", None)
    rows = {"type": "array", "items": row, "minItems": 1}
    split = {
        "type": "object",
        "properties": {
            "columns": {"type": "array", "items": {"type": "string", "enum": contract.features}},
            "data": {"type": "array", "items": {"type": "array"}, "minItems": 1},
        },
        "required": ["columns", "data"],
    }
    variants = [{"type": "object", "properties": {"dataframe_split": split}, "required": ["dataframe_split"],
                 "additionalProperties": False}]
    variants += [{"type": "object", "properties": {k: rows}, "required": [k], "additionalProperties": False}
                 for k in ("dataframe_records", "instances", "inputs", "rows")]
    responses = {
        "200": {"description": "Positive-class probability, predicted label and an id (for /feedback) per row."},
        "400": {"description": "Malformed JSON or unknown request format."},
        "413": {"description": "Body or row count over the limit."},
        "415": {"description": "Content-Type is not application/json."},
        "422": {"description": "Rows that fail the data contract: row, field and reason for each."},
        "502": {"description": "The model server answered with an error."},
        "503": {"description": "The model server is unreachable or too slow."},
    }
    invocations = {
        "requestBody": {"required": True, "content": {"application/json": {"schema": {"oneOf": variants}}}},
        "responses": responses,
    }
    label = {"anyOf": [{"type": "string", "enum": list(contract.labels)}, {"type": "integer", "enum": [0, 1]}]}
    feedback = {
        "requestBody": {"required": True, "content": {"application/json": {"schema": {
            "type": "object",
            "properties": {"feedback": {"type": "array", "minItems": 1, "items": {
                "type": "object", "properties": {"id": {"type": "string"}, "label": label},
                "required": ["id", "label"], "additionalProperties": False}}},
            "required": ["feedback"], "additionalProperties": False}}}},
        "responses": {k: v for k, v in responses.items() if k in ("400", "413", "415", "422")},
    }
    return invocations, feedback


class _Feedback(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    id: str
    label: Any


class _FeedbackBody(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    feedback: list[_Feedback] = pydantic.Field(min_length=1)


class Gateway:
    """State shared by the handlers: HTTP client, batcher, metrics, drift window, recent predictions."""

    def __init__(self, config: GatewayConfig, metrics: GatewayMetrics | None = None) -> None:
        self.config = config
        self.contract = config.contract
        self.features = self.contract.features
        self.nullable = [c.name for c in self.contract.columns if c.nullable]
        self.metrics = metrics or GatewayMetrics()
        self.rows_adapter = pydantic.TypeAdapter(list[self.contract.row_model])
        self.model_url = config.model_url.rstrip("/")
        self.model_up = False
        self.model_info: ModelInfo | None = None
        self.drift: SlidingPSI | None = None
        self.client: http.PooledHTTPClient | None = None
        self.batcher = MicroBatcher(self._score, max_batch_rows=config.max_batch_rows,
                                    max_wait=config.max_wait_ms / 1000, max_concurrent=config.max_concurrent_batches,
                                    on_batch=self.metrics.batch_rows.observe)
        self._id_prefix = secrets.token_hex(4)
        self._next_id = 0
        self._predictions: OrderedDict[str, int] = OrderedDict()  # id → predicted class (0/1)
        self._outcomes: deque[int] = deque(maxlen=config.feedback_window)
        self._probe: asyncio.Task | None = None
        m = self.metrics
        # label children looked up once: .labels() is the costly part of a metric update
        self._missing = {f: m.feature_missing.labels(feature=f) for f in self.nullable}
        self._by_label = [m.predictions.labels(label=self.contract.negative),
                          m.predictions.labels(label=self.contract.positive)]
        self._labels = [self.contract.negative, self.contract.positive]
        self._request_children: dict[tuple[str, int], Any] = {}
        self._latency_children: dict[str, Any] = {}

    # ---- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        c = self.config
        self.client = http.PooledHTTPClient(self.model_url, connect_timeout=c.connect_timeout,
                                            timeout=c.request_timeout, max_idle=c.max_concurrent_batches + 2)
        await self._load_model_facts()
        await self.batcher.start()
        await self._ping_once()
        self._probe = asyncio.create_task(self._probe_loop(), name="model-probe")

    async def stop(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            await asyncio.gather(self._probe, return_exceptions=True)
        await self.batcher.stop()
        if self.client is not None:
            await self.client.aclose()

    async def _load_model_facts(self) -> None:
        c = self.config
        reference = None
        if c.model_uri:
            try:
                self.model_info, reference = await asyncio.to_thread(resolve_model, c.model_uri, c.tracking_uri)
                info = self.model_info
                self.metrics.model_info.info({"name": info.name, "version": info.version, "alias": info.alias,
                                              "run_id": info.run_id, "uri": info.uri})
                log.info("serving %s (version %s, run %s)", info.uri, info.version, info.run_id)
            except Exception as exc:
                log.warning("could not resolve %s on %s (%s): model info and drift reference are absent",
                            c.model_uri, c.tracking_uri, exc)
        else:
            log.warning("no model URI given: model info and the model's drift reference are absent")
        if c.drift_reference is not None:
            reference = json.loads(Path(c.drift_reference).read_text())
        if reference is not None:
            self.drift = SlidingPSI(reference, window=c.drift_window)
        else:
            log.warning("no drift reference: %s is not exported", "msml_feature_drift_psi")

    async def _ping_once(self) -> bool:
        try:
            status, _ = await self.client.request("GET", "/ping",
                                                  timeout=min(1.0, max(self.config.probe_interval, 0.2)))
            up = status == 200
        except http.HTTPError:
            up = False
        self._set_up(up)
        return up

    def _set_up(self, up: bool) -> None:
        if up != self.model_up:
            log.warning("model server %s is %s", self.model_url, "up" if up else "DOWN")
        self.model_up = up
        self.metrics.model_up.set(1 if up else 0)

    async def _probe_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.probe_interval)
            await self._ping_once()

    # ---- model calls ------------------------------------------------------------------------
    async def _score(self, rows: list[list[Any]]) -> list[float]:
        """One /invocations call for a batch; returns the positive-class probability per row."""
        payload = _dumps({"dataframe_split": {"columns": self.features, "data": rows}})
        start = time.perf_counter()
        try:
            status, content = await self.client.request("POST", "/invocations", payload)
        except http.ConnectError as exc:
            self._model_failed("unreachable", connect=True)
            raise ModelServerError(503, "unreachable", f"model server at {self.model_url} is unreachable "
                                                       f"({exc})") from None
        except http.TimeoutError_ as exc:
            self._model_failed("timeout")
            raise ModelServerError(503, "timeout", f"model server at {self.model_url} did not answer in time "
                                                   f"({exc})") from None
        except http.HTTPError as exc:
            self._model_failed("transport")
            raise ModelServerError(502, "transport", f"model server at {self.model_url} failed: {exc}") from None
        finally:
            self.metrics.model_request_seconds.observe(time.perf_counter() - start)
        if status != 200:
            self._model_failed(f"http_{status // 100}xx")
            raise ModelServerError(502, "bad_status", f"model server answered {status}: "
                                                      f"{content[:300].decode(errors='replace')}")
        try:
            predictions = _loads(content)["predictions"]
            if len(predictions) != len(rows):
                raise ValueError(f"{len(predictions)} predictions for {len(rows)} rows")
            return [_positive_probability(p) for p in predictions]
        except Exception as exc:
            self._model_failed("bad_response")
            raise ModelServerError(502, "bad_response", f"model server's answer is not understood: {exc!r}") from None

    def _model_failed(self, kind: str, connect: bool = False) -> None:
        self.metrics.model_errors.labels(kind=kind).inc()
        if connect:
            self._set_up(False)

    # ---- request parsing and validation ----------------------------------------------------------
    async def read_json(self, request: Request) -> Any:
        ctype = request.headers.get("content-type")
        if ctype is None or ctype.split(";", 1)[0].strip().lower() != "application/json":
            raise _body_error(415, "content_type", f"Content-Type must be application/json (got {ctype!r})")
        limit = self.config.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise _body_error(413, "too_large", f"body of {declared} bytes is over the limit of {limit} bytes")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _body_error(413, "too_large", f"body is over the limit of {limit} bytes")
            chunks.append(chunk)
        body = b"".join(chunks)
        if not body:
            raise _body_error(400, "malformed_json", "empty body: send a JSON object")
        try:
            return _loads(body)
        except _DecodeError as exc:
            raise _body_error(400, "malformed_json", f"body is not valid JSON: {exc}") from None

    def extract_rows(self, payload: Any) -> list[Any]:
        """The rows of any accepted request format, as a list (items not yet checked)."""
        formats = ", ".join(FORMATS)
        if not isinstance(payload, dict):
            raise _body_error(400, "unknown_format", f"body must be a JSON object with one key of: {formats}")
        keys = [k for k in payload if k in FORMATS]
        others = [k for k in payload if k not in FORMATS]
        if len(keys) != 1 or others:
            raise _body_error(400, "unknown_format", f"body must have exactly one key of: {formats} "
                                                     f"(got {sorted(map(str, payload))})")
        key = keys[0]
        data = payload[key]
        if key == "dataframe_split":
            if not isinstance(data, dict) or not isinstance(data.get("columns"), list) \
                    or not isinstance(data.get("data"), list) or set(data) - {"columns", "data", "index"}:
                raise _body_error(400, "unknown_format",
                                  "dataframe_split must be an object with 'columns' (list) and 'data' (list of lists)")
            columns = data["columns"]
            if not all(isinstance(c, str) for c in columns) or len(set(columns)) != len(columns):
                raise _body_error(400, "unknown_format", "dataframe_split columns must be distinct strings")
            rows = [dict(zip(columns, r)) if isinstance(r, list) and len(r) == len(columns) else _BadRow(r, len(columns))
                    for r in data["data"]]
        elif key in ("instances", "inputs") and isinstance(data, dict):
            # columnar: {"feature": [values...], ...}
            lengths = {len(v) if isinstance(v, list) else -1 for v in data.values()}
            if len(lengths) != 1 or -1 in lengths:
                raise _body_error(400, "unknown_format", f"columnar {key} must map each feature to a list, "
                                                         "all of the same length")
            n = lengths.pop()
            rows = [{k: v[i] for k, v in data.items()} for i in range(n)]
        elif isinstance(data, list):
            n = len(self.features)
            rows = [dict(zip(self.features, r)) if key in ("instances", "inputs") and isinstance(r, list)
                    and len(r) == n else r for r in data]
        else:
            raise _body_error(400, "unknown_format", f"{key} must be a list of rows")
        if not rows:
            raise _body_error(400, "empty", "no rows to score")
        if len(rows) > self.config.max_rows_per_request:
            raise _body_error(413, "too_many_rows", f"{len(rows)} rows is over the limit of "
                                                    f"{self.config.max_rows_per_request} per request")
        return rows

    def validate_rows(self, rows: list[Any]) -> list[dict[str, Any]]:
        """Check every row against the contract; returns them typed, in the contract's column order."""
        normalise = self.contract.normalise_row
        prepared = [normalise(r) if isinstance(r, dict) else r for r in rows]
        try:
            models = self.rows_adapter.validate_python(prepared)
        except pydantic.ValidationError as exc:
            raise self._row_errors(exc, prepared) from None
        return [m.model_dump() for m in models]

    def count_failures(self, exc: ClientError) -> None:
        for d in exc.details:
            self.metrics.validation_failures.labels(field=d["field"], reason=d["reason"]).inc()

    def _row_errors(self, exc: pydantic.ValidationError, rows: list[Any]) -> ClientError:
        details = []
        features = set(self.features)
        for err in exc.errors(include_url=False):
            loc = err["loc"]
            i = loc[0] if loc and isinstance(loc[0], int) else None
            name = str(loc[1]) if len(loc) > 1 else None
            row = rows[i] if i is not None and i < len(rows) else None
            if isinstance(row, _BadRow):
                detail = {"row": i, "field": ROW, "reason": "wrong_type",
                          "message": f"expected a list of {row.width} values, got {type(row.value).__name__}"
                                     + (f" of {len(row.value)}" if isinstance(row.value, list) else "")}
            elif name is None:
                detail = {"row": i, "field": ROW, "reason": "wrong_type",
                          "message": f"a row must be an object of feature values ({err['msg']})"}
            else:
                reason = _REASONS.get(err["type"], "wrong_type")
                if isinstance(row, dict) and name in row and row[name] is None:
                    reason = "missing"  # null (or a missing marker) for a required feature
                detail = {"row": i, "field": name if name in features else ROW, "reason": reason,
                          "message": err["msg"]}
                if reason == "unexpected_field":
                    detail["message"] = f"unexpected field {name!r} (not in the contract)"
                elif "input" in err and reason != "missing":
                    detail["input"] = _short(err["input"])
                if name not in features and reason != "unexpected_field":
                    detail["name"] = name
            details.append(detail)
        first = details[0]
        where = f"row {first['row']}, field {first.get('name', first['field'])!r}" if first["field"] != ROW \
            else f"row {first['row']}"
        msg = f"{len(details)} validation error(s); first: {where}: {first['reason']} ({first['message']})"
        return ClientError(422, msg, details)

    # ---- results and metrics -----------------------------------------------------------------
    def record(self, rows: list[dict[str, Any]], probabilities: list[float]) -> dict[str, Any]:
        """Update the prediction metrics and remember each prediction for /feedback; build the answer."""
        m, threshold = self.metrics, self.config.threshold
        ids, labels = [], []
        for row, p in zip(rows, probabilities):
            cls = 1 if p >= threshold else 0
            self._by_label[cls].inc()
            m.probability.observe(p)
            for f, child in self._missing.items():
                if row[f] is None:
                    child.inc()
            self._next_id += 1
            pid = f"{self._id_prefix}-{self._next_id}"
            self._predictions[pid] = cls
            ids.append(pid)
            labels.append(self._labels[cls])
        m.rows_scored.inc(len(rows))
        while len(self._predictions) > self.config.max_tracked_predictions:
            self._predictions.popitem(last=False)
        if self.drift is not None:
            self.drift.add(rows)
        return {"predictions": probabilities, "labels": labels, "ids": ids}

    def feedback(self, payload: Any) -> dict[str, Any]:
        try:
            body = _FeedbackBody.model_validate(payload)
        except pydantic.ValidationError as exc:
            details = [{"row": e["loc"][1] if len(e["loc"]) > 1 and isinstance(e["loc"][1], int) else None,
                        "field": BODY, "reason": _REASONS.get(e["type"], "wrong_type"),
                        "message": f"{'.'.join(map(str, e['loc']))}: {e['msg']}"} for e in exc.errors(include_url=False)]
            raise ClientError(422, f"feedback must be {{'feedback': [{{'id': ..., 'label': ...}}]}}: "
                                   f"{details[0]['message']}", details) from None
        truths = []
        for i, item in enumerate(body.feedback):
            truth = self._truth(item.label)
            if truth is None:
                raise ClientError(422, f"feedback {i}: label must be one of {list(self.contract.labels)} or 0/1",
                                  [{"row": i, "field": "label", "reason": "unknown_category",
                                    "message": f"got {_short(item.label)!r}"}])
            truths.append(truth)
        correct = incorrect = 0
        unknown = []
        for item, truth in zip(body.feedback, truths):
            predicted = self._predictions.pop(item.id, None)
            if predicted is None:
                unknown.append(item.id)
                continue
            ok = int(predicted == truth)
            correct += ok
            incorrect += 1 - ok
            self._outcomes.append(ok)
        m = self.metrics
        if correct:
            m.feedback.labels(outcome="correct").inc(correct)
        if incorrect:
            m.feedback.labels(outcome="incorrect").inc(incorrect)
        if unknown:
            m.feedback.labels(outcome="unknown_id").inc(len(unknown))
        accuracy = sum(self._outcomes) / len(self._outcomes) if self._outcomes else None
        if accuracy is not None:
            m.live_accuracy.set(accuracy)
        return {"accepted": correct + incorrect, "unknown_ids": unknown, "live_accuracy": accuracy,
                "window": len(self._outcomes)}

    def _truth(self, label: Any) -> int | None:
        if isinstance(label, bool):
            return None
        if label in (0, 1) and isinstance(label, int):
            return label
        if isinstance(label, str):
            label = label.strip()
            if label in self.contract.labels:
                return int(label == self.contract.positive)
        return None

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


class _BadRow:
    """A dataframe_split row of the wrong shape; fails validation with its own message."""

    __slots__ = ("value", "width")

    def __init__(self, value: Any, width: int) -> None:
        self.value, self.width = value, width


def _positive_probability(p: Any) -> float:
    if isinstance(p, list):  # predict_proba: [p(negative), p(positive)]
        return float(p[1])
    if isinstance(p, dict):
        return float(list(p.values())[1])
    value = float(p)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"prediction {value} is not a probability")
    return value


def _short(value: Any, limit: int = 80) -> Any:
    if isinstance(value, (int, float, bool)) or value is None:
        return value
    text = str(value)
    return text if len(text) <= limit else text[:limit] + "…"


def _json(content: Any, status: int = 200) -> Response:
    return Response(_dumps(content), status_code=status, media_type="application/json")


def _error(exc: ClientError | ModelServerError) -> Response:
    if isinstance(exc, ClientError):
        return _json({"error": exc.message, "details": exc.details}, exc.status)
    return _json({"error": exc.message, "kind": exc.kind}, exc.status)


class _MetricsMiddleware:
    """Counts every request by endpoint and status and times it (pure ASGI: no per-request task).

    `POST /invocations` goes straight to its handler: FastAPI's routing and dependency machinery cost
    about a third of the gateway's CPU per request (profiled) and add nothing to a handler that reads
    its own body; the FastAPI route stays for the OpenAPI schema and the other methods' 405.
    """

    def __init__(self, app, gateway: Gateway, fast_paths: dict[tuple[str, str], Any] | None = None) -> None:
        self.app = app
        self.gateway = gateway
        self.fast_paths = fast_paths or {}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        path = scope.get("path", "")
        endpoint = path if path in ENDPOINTS else "other"
        status = 500

        async def send_wrapper(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            handler = self.fast_paths.get((scope.get("method", ""), path))
            if handler is not None:
                response = await handler(Request(scope, receive))
                await response(scope, receive, send_wrapper)
            else:
                await self.app(scope, receive, send_wrapper)
        finally:
            self.gateway.observe_request(endpoint, status, time.perf_counter() - start)


def create_app(config: GatewayConfig, metrics: GatewayMetrics | None = None) -> FastAPI:
    """Build the gateway app for `config` (metrics on their own registry unless given)."""
    gateway = Gateway(config, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await gateway.start()
        try:
            yield
        finally:
            await gateway.stop()

    app = FastAPI(title="msml gateway", version="1", lifespan=lifespan,
                  description=f"Validating, micro-batching gateway for the {config.contract.title} model "
                              "(rows are checked against the data contract, then scored by the model server).")
    app.state.gateway = gateway
    invocations_extra, feedback_extra = _openapi_extra(config.contract)

    @app.post("/invocations", openapi_extra=invocations_extra, summary="Score rows (MLflow request formats)")
    async def invocations(request: Request) -> Response:
        g = gateway
        g.metrics.in_flight.inc()
        g.batcher.arriving += 1
        queued = False
        try:
            rows = g.validate_rows(g.extract_rows(await g.read_json(request)))
            g.batcher.arriving -= 1
            queued = True
            features = g.features
            try:
                probabilities = await g.batcher.submit([[r[f] for f in features] for r in rows])
            except ModelServerError:
                raise
            except Exception as exc:  # whatever else breaks a batch is the server side's, reported as such
                log.exception("model call failed")
                raise ModelServerError(502, "internal", f"model call failed: {exc!r}") from None
            return _json(g.record(rows, probabilities))
        except ClientError as exc:
            g.count_failures(exc)
            return _error(exc)
        except ModelServerError as exc:
            return _error(exc)
        finally:
            if not queued:
                g.batcher.arriving -= 1
            g.metrics.in_flight.dec()

    @app.post("/feedback", openapi_extra=feedback_extra, summary="Ground truth for earlier prediction ids")
    async def feedback(request: Request) -> Response:
        try:
            return _json(gateway.feedback(await gateway.read_json(request)))
        except ClientError as exc:
            return _error(exc)

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics() -> Response:
        return Response(gateway.scrape(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/health", summary="Gateway and model-server health",
             responses={503: {"description": "The model server is not answering /ping."}})
    async def health() -> Response:
        info = gateway.model_info
        body = {
            "status": "ok" if gateway.model_up else "model_unavailable",
            "model_up": gateway.model_up,
            "model_url": gateway.model_url,
            "model": None if info is None else {"name": info.name, "version": info.version, "alias": info.alias,
                                                "run_id": info.run_id},
            "drift_reference": gateway.drift is not None,
        }
        return _json(body, 200 if gateway.model_up else 503)

    @app.get("/ping", summary="Liveness of the gateway itself (as MLflow's server answers /ping)")
    async def ping() -> Response:
        return Response(b"\n", media_type="application/json")

    app.add_middleware(_MetricsMiddleware, gateway=gateway, fast_paths={("POST", "/invocations"): invocations})
    return app


def run(config: GatewayConfig, host: str = "127.0.0.1", port: int = 8000, log_level: str = "warning") -> None:
    """Serve the gateway in the foreground (uvloop + httptools when installed)."""
    import importlib.util

    import uvicorn

    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(create_app(config), host=host, port=port, loop=loop, http=http, log_level=log_level,
                access_log=False)
