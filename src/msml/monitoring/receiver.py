"""The webhook receiver: records every notification POSTed to it, and lets Alertmanager trigger retraining.

`msml monitoring receiver --port P --out FILE`.
- `POST /alerts` records any JSON body (Grafana's contact point, evidence) as one line
  `{"received_at": ..., "path": ..., "payload": {...}}`; `GET /alerts` returns the recorded lines as a JSON list.
- `POST /trigger` is Alertmanager's webhook: it needs `Authorization: Bearer <token>` (the token in
  MSML_RECEIVER_TOKEN, which the stack also writes into alertmanager.yml's `http_config.authorization`), is
  recorded like /alerts, and hands the firing alerts to the loop's trigger (msml.loop.trigger), which answers
  with one decision per alert. Without a configured token the trigger is off (503); a missing or wrong token is a
  401, a body that is not an Alertmanager notification a 422 — and neither is recorded nor starts anything.
- `GET /metrics`: the loop's decisions by reason and outcome, and the champion's version (Prometheus scrapes it).
"""

from __future__ import annotations

import hmac
import json
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest

from msml.monitoring.metrics import CHAMPION_VERSION, RETRAIN_DECISIONS

MAX_BODY = 1 << 20  # Alertmanager batches are small; refuse anything bigger than 1 MiB
TOKEN_ENV = "MSML_RECEIVER_TOKEN"
TRIGGER_PATH = "/trigger"


def read_notifications(path: str | Path) -> list[dict]:
    """The notifications recorded in `path` (JSON lines), oldest first; [] when there are none yet."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class LoopMetrics:
    """The receiver's own registry: decisions counted as they are recorded, the champion read at scrape time."""

    def __init__(self, champion_version: Callable[[], float] | None = None) -> None:
        self.registry = CollectorRegistry()
        self.decisions = Counter(
            RETRAIN_DECISIONS.removesuffix("_total"),
            "Retrain decisions taken on alerts, by the alert (reason) and what was decided (outcome).",
            ["reason", "outcome"],
            registry=self.registry,
        )
        self.champion = Gauge(
            CHAMPION_VERSION,
            "Registry version of the model holding @champion (NaN when unknown).",
            registry=self.registry,
        )
        if champion_version is not None:
            self.champion.set_function(champion_version)
        from msml.loop.trigger import ENDINGS, RETRAIN_ALERTS, STARTED

        # every ending of a retraining exists from the start, at 0: `increase(...{outcome="failed"}[1h])` (the
        # RetrainFailed alert) then reads 0, not "no data", until one fails
        for reason in RETRAIN_ALERTS:
            for outcome in (STARTED, *ENDINGS):
                self.decisions.labels(reason=reason, outcome=outcome)

    def count(self, decision) -> None:
        self.decisions.labels(reason=decision.reason, outcome=decision.outcome).inc()


def champion_reader(tracking_uri: str, model_name: str, ttl: float = 10.0) -> Callable[[], float]:
    """A function giving the version holding @champion (NaN when none or the registry does not answer), asked of
    the registry at most every `ttl` seconds (a scrape every 15 s costs one registry query)."""
    cache = {"at": -ttl, "value": float("nan")}
    lock = threading.Lock()

    def read() -> float:
        with lock:
            if time.monotonic() - cache["at"] >= ttl:
                cache["at"] = time.monotonic()
                try:
                    from mlflow import MlflowClient

                    from msml.tracking.registry import CHAMPION

                    version = MlflowClient(tracking_uri).get_model_version_by_alias(model_name, CHAMPION).version
                    cache["value"] = float(version)
                except Exception:  # no champion yet, or the registry is down: unknown, not an old number
                    cache["value"] = float("nan")
            return cache["value"]

    return read


def make_server(
    host: str,
    port: int,
    out: str | Path,
    trigger=None,
    token: str | None = None,
    metrics: LoopMetrics | None = None,
) -> ThreadingHTTPServer:
    """An HTTP server appending each POSTed JSON body to `out`; `trigger` (a msml.loop.trigger.Trigger) acts on
    Alertmanager's notifications at POST /trigger when `token` is set. Call `serve_forever()` on it."""
    from msml.loop.trigger import BadNotification, parse_notification

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    lock = threading.Lock()
    secret = token.encode() if token else None
    metrics = metrics or LoopMetrics()

    def record(path: str, payload: object) -> None:
        with lock, out.open("a") as f:
            f.write(json.dumps({"received_at": time.time(), "path": path, "payload": payload}) + "\n")

    class Handler(BaseHTTPRequestHandler):
        def _reply(self, status: int, body: object, content_type: str = "application/json") -> None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(status)
            if status == 401:
                self.send_header("WWW-Authenticate", "Bearer")
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _authorised(self) -> bool:
            given = self.headers.get("Authorization") or ""
            scheme, _, credentials = given.partition(" ")
            return scheme.lower() == "bearer" and hmac.compare_digest(credentials.strip().encode(), secret)

        def do_POST(self) -> None:
            path = self.path.split("?", 1)[0].rstrip("/")
            if path == TRIGGER_PATH:
                if trigger is None or secret is None:
                    return self._reply(503, {"error": f"the retrain trigger is off: no {TOKEN_ENV} configured"})
                if not self._authorised():
                    return self._reply(
                        401,
                        {
                            "error": "the trigger needs 'Authorization: Bearer <token>' "
                            f"(the {TOKEN_ENV} Alertmanager sends)"
                        },
                    )
            length = int(self.headers.get("Content-Length") or 0)
            if length <= 0 or length > MAX_BODY:
                return self._reply(400 if length <= 0 else 413, {"error": f"body of {length} bytes refused"})
            try:
                payload = json.loads(self.rfile.read(length))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                return self._reply(400, {"error": f"body is not JSON: {exc}"})
            if path != TRIGGER_PATH:
                record(self.path, payload)
                return self._reply(200, {"status": "recorded"})
            try:
                alerts = parse_notification(payload)
            except BadNotification as exc:
                return self._reply(422, {"error": str(exc)})
            record(self.path, payload)
            decided = trigger.handle(alerts)
            self._reply(200, {"status": "recorded", "decisions": [asdict(x) for x in decided]})

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0].rstrip("/")
            if path in ("/alerts", ""):
                with lock:
                    return self._reply(200, read_notifications(out))
            if path == "/metrics":
                return self._reply(200, generate_latest(metrics.registry), CONTENT_TYPE_LATEST)
            if path == "/decisions" and trigger is not None:
                return self._reply(200, [asdict(x) for x in trigger.log.decisions()])
            if path == "/-/ready":
                return self._reply(200, {"status": "ready"})
            self._reply(404, {"error": f"no such path {self.path}"})

        def log_message(self, fmt: str, *args) -> None:  # one line per request on stderr, no reverse DNS
            print(f"{self.address_string()} {fmt % args}", flush=True)

    return ThreadingHTTPServer((host, port), Handler)


def serve(host: str, port: int, out: str | Path, trigger=None, token: str | None = None, metrics=None) -> None:
    server = make_server(host, port, out, trigger=trigger, token=token, metrics=metrics)
    state = "on" if trigger is not None and token else f"off (no {TOKEN_ENV})"
    print(f"recording notifications POSTed to http://{host}:{port}/ in {out}; retrain trigger {state}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
