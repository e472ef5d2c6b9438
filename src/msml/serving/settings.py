"""The gateway's settings: one frozen object that `msml gateway` fills from its options and the app reads.

A field that is also a command-line option says so with `option(...)`: its flag, help and bounds live here, beside
its default and the measurements behind it, and `msml gateway` builds its options from them (`cli_options`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from urllib.parse import urlsplit

from msml.config import DECISION_THRESHOLD, DEFAULT_PORTS, local_url
from msml.data.contract import Contract
from msml.loop.prediction_log import DEFAULT_MAX_BUFFERED_ROWS
from msml.monitoring.drift import DEFAULT_WINDOW
from msml.monitoring.drift import MIN_ROWS as DRIFT_MIN_ROWS


def option(default, flag: str, help: str, min: float | None = None):
    """A field with a default that `msml gateway` also takes as `flag`."""
    return field(default=default, metadata={"flag": flag, "help": help, "min": min})


@dataclass(frozen=True)
class GatewayConfig:
    model_urls: tuple[str, ...]  # the model-server replicas (see `model_urls`)
    contract: Contract
    model_uri: str | None = None  # models:/<name>@<alias>: resolved for the info metric and drift reference
    tracking_uri: str | None = None
    drift_reference: Path | None = None  # a reference JSON file instead of the model's run artifact
    # 128, not 256: under overload an accepted request waits for about two batches, and a batch's answers go out
    # one by one on the event loop. Open loop at 9,300 req/s offered, one call at a time, two rounds: p99 of the
    # accepted 131 and 112 ms with 256 rows (5,388 and 5,750 good/s), 88 and 67 with 128 (5,162 and 5,374), 52
    # and 51 with 64 (4,338 and 4,481). A model call's cost is mostly fixed, so the model server's CPU per row
    # is higher with smaller batches (docs/SCALING.md): where model CPU is dearer than latency, 256.
    max_batch_rows: int = option(128, "--max-batch-rows", "Most rows in one model call.", min=1)
    # the longest a batch waits for more rows, scaled by the share still due (see batching); c=1 never waits.
    # Measured on 2 shared cores, one run each: closed loop at c=32 (direct 49 req/s) 5 ms → 537 req/s, 10 →
    # 608, 15 → 678; open loop at 3,600 req/s (2× capacity) 5 ms → 1,721 good/s, p99 400 ms; 10 → 1,898–1,926,
    # 337–350 ms; 15 → 2,161, 314 ms. (A flat wait, unscaled, helped c=32 but cost the open loop: 10 ms → 1,572.)
    max_wait_ms: float = option(
        15.0, "--max-wait-ms", "How long a request waits for others to share its batch.", min=0.0
    )
    # model calls at a time per replica: the model server's workers (plus one for a whole batch: batching._pipeline)
    max_concurrent_batches: int = option(
        1,
        "--max-concurrent-batches",
        "Model calls in flight at a time per replica (match its workers); one more for a whole batch.",
        min=1,
    )
    max_body_bytes: int = 1_000_000
    max_rows_per_request: int = 1000
    max_feedback_items: int = 1000
    # admission: a request is refused (503, Retry-After) when this many rows wait, or when the oldest has
    # waited this long — the queue is then not draining fast enough to answer a new request in time.
    # 500 ms, not 250: with 250 the soak refused work at 30 % (15 × 503 in 60 s) and 80 % of capacity
    # (135 × 503) while only 1 model call in 970 took over 250 ms — the waits were a shared 2-core
    # machine's scheduling stalls, not a queue that cannot drain. Under overload it tightens (admission: shedding).
    max_queued_rows: int = 4096
    max_queue_delay_ms: float = option(
        500.0,
        "--max-queue-ms",
        "Refuse new requests (503, Retry-After) while the oldest queued one has waited longer than this.",
        min=1.0,
    )
    # ... and while a backlog builds up in front of the handlers (admission.Pressure): connections waiting to
    # be accepted, or an event loop running this far behind. Measured at 2× capacity (bench_gateway, 2 cores
    # shared with the load client): the accepted requests' p99 went from 35.8 s (accept queue full at 2,048,
    # connects retried after 1, 3, 7 s) to 1.4 s. 256 is ~35 ms of arrivals at capacity (7,344 req/s), were each
    # on a new connection; it was 64 at ~2,000 req/s, and at 80 % of 7,344 that refused 82 requests in a 60 s soak
    # (clients opening connections in a burst). Under overload the in-hand limit decides (admission): at 14,700
    # req/s offered, 64 gave 7,781 good/s and a p99 of 108 ms, 256 gave 7,726 and 111 ms.
    max_accept_queue: int = option(
        256,
        "--max-accept-queue",
        "Refuse new requests (503, Retry-After) while more connections than this wait to be accepted.",
        min=1,
    )
    max_loop_lag_ms: float = option(
        100.0,
        "--max-loop-lag-ms",
        "Refuse new requests (503, Retry-After) while the gateway's event loop runs this far behind.",
        min=1.0,
    )
    connect_timeout: float = 0.5
    request_timeout: float = option(
        10.0, "--model-timeout", "Every request's deadline in seconds, end to end (504 when it passes).", min=0.05
    )
    probe_interval: float = option(
        1.0, "--probe-interval", "Seconds between health probes of the model server.", min=0.05
    )
    drift_window: int = option(
        DEFAULT_WINDOW,
        "--drift-window",
        "Recent rows the drift statistics cover (at least the measured minimum).",
        min=DRIFT_MIN_ROWS,
    )
    feedback_window: int = 1000
    max_tracked_predictions: int = 100_000
    feedback_token: str | None = None  # when set, /feedback needs `Authorization: Bearer <token>`
    # the loop store (msml.loop.store) URL: every served row is logged there and /feedback's labels kept there;
    # None: neither (predictions and labels live only in memory)
    loop_store: str | None = None
    prediction_log_rows: int = option(
        DEFAULT_MAX_BUFFERED_ROWS,
        "--prediction-log-rows",
        "Served rows held for a slow or absent store; beyond them rows are counted as dropped, not logged.",
        min=1,
    )
    threshold: float = DECISION_THRESHOLD


def cli_options() -> dict[str, tuple[object, str, str, float | None]]:
    """{field name: (default, flag, help, min)} of every field `msml gateway` takes as an option."""
    return {
        f.name: (f.default, f.metadata["flag"], f.metadata["help"], f.metadata["min"])
        for f in fields(GatewayConfig)
        if "flag" in f.metadata
    }


MODEL_URLS_ENV = "MSML_MODEL_URLS"  # comma-separated, when no --model-url is given


def model_urls(given: Sequence[str] = (), env: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The model-server replicas: the `--model-url` values, else `MSML_MODEL_URLS` (comma-separated), else the
    one default model server. ValueError naming a malformed or repeated URL."""
    if not given and env and env.get(MODEL_URLS_ENV, "").strip():
        given = [u.strip() for u in env[MODEL_URLS_ENV].split(",")]
    urls = tuple(u.rstrip("/") for u in given) or (local_url(DEFAULT_PORTS.model_server),)
    for url in urls:
        try:
            parts = urlsplit(url)
            ok = parts.scheme == "http" and bool(parts.hostname) and not parts.query and not parts.fragment
            parts.port  # noqa: B018 - raises ValueError on a port that is not a number in range
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(f"model server URL must be http://host:port, got {url!r}")
    repeated = sorted({u for u in urls if urls.count(u) > 1})
    if repeated:
        raise ValueError(f"model server URL given more than once: {', '.join(repeated)}")
    return urls
