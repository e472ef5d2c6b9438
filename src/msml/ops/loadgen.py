"""The load generator (the course's `7.inference.py`): real test-split rows sent to the gateway.

Options add a share of drifted rows (real rows with their features shifted along the contract's
ranges and categories), a share of invalid rows (each kind of contract violation), and ground-truth
feedback for the predictions, a share of it deliberately wrong (the label the gateway did not predict: concept
drift or a labelling change, as LiveAccuracyDrop sees it). Runs at a target rate (open loop) or a concurrency
(closed loop), for a duration or a count — always bounded — and reports throughput, latency percentiles and errors.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from msml.data.contract import Contract, DataError

MAX_DURATION = 3600.0
MAX_COUNT = 10_000_000
FEEDBACK_BATCH = 50
WRONG = object()  # a row whose feedback must contradict the gateway's prediction
INVALID_KINDS = ("out_of_range", "unknown_category", "missing", "wrong_type", "unexpected_field")


def load_test_rows(processed_dir: str | Path, contract: Contract) -> tuple[list[dict[str, Any]], list[str]]:
    """The test split as JSON-ready rows (None for missing values) and their true labels."""
    from msml.data.preprocessing import load_clean_splits

    _, test = load_clean_splits(processed_dir, contract)
    return frame_to_rows(test[contract.features]), test[contract.target].astype(str).tolist()


def frame_to_rows(df: pd.DataFrame) -> list[dict[str, Any]]:
    clean = df.astype(object).where(df.notna(), None)
    return [
        {k: (v.item() if isinstance(v, np.generic) else v) for k, v in row.items()}
        for row in clean.to_dict(orient="records")
    ]


class RowMaker:
    """Turns real rows into drifted or invalid ones, generically from the contract."""

    def __init__(self, contract: Contract, rows: list[dict[str, Any]], seed: int = 0) -> None:
        self.contract = contract
        self.rng = random.Random(seed)
        self.std = {}
        for col in contract.columns:
            if col.is_numeric:
                values = [r[col.name] for r in rows if r[col.name] is not None]
                self.std[col.name] = float(np.std(values)) if values else 1.0

    def drifted(self, row: dict[str, Any]) -> dict[str, Any]:
        """Numeric features shifted up by 1.5 standard deviations (clipped to the contract's range);
        every categorical value replaced by the next category in the contract's list."""
        out = dict(row)
        for col in self.contract.columns:
            value = row[col.name]
            if value is None:
                continue
            if col.is_numeric:
                shifted = value + 1.5 * self.std[col.name]
                if col.max is not None:
                    shifted = min(shifted, col.max)
                out[col.name] = round(shifted) if col.type == "int" else shifted
            else:
                values = col.values
                out[col.name] = values[(values.index(value) + 1) % len(values)] if value in values else value
        return out

    def invalid(self, row: dict[str, Any], kind: str | None = None) -> tuple[dict[str, Any], str, str]:
        """A copy of `row` with one contract violation; returns (row, field, reason)."""
        kind = kind or self.rng.choice(INVALID_KINDS)
        out = dict(row)
        cols = self.contract.columns
        if kind == "out_of_range":
            col = self.rng.choice([c for c in cols if c.is_numeric and (c.max is not None or c.min is not None)])
            out[col.name] = (col.max + 1) if col.max is not None else (col.min - 1)
        elif kind == "unknown_category":
            col = self.rng.choice([c for c in cols if not c.is_numeric])
            out[col.name] = "not-a-category"
        elif kind == "missing":
            col = self.rng.choice([c for c in cols if not c.nullable])
            del out[col.name]
        elif kind == "wrong_type":
            col = self.rng.choice([c for c in cols if c.is_numeric])
            out[col.name] = "not-a-number"
        elif kind == "unexpected_field":
            out["unexpected_column"] = 1
            return out, "_row", kind
        else:
            raise ValueError(f"unknown invalid-row kind {kind!r}")
        return out, col.name, kind


@dataclass
class LoadReport:
    sent: int = 0
    ok: int = 0
    rejected: int = 0  # expected 4xx for the invalid rows we sent on purpose
    client_errors: int = 0  # unexpected 4xx
    server_errors: int = 0  # 5xx
    transport_errors: int = 0  # no answer (refused, timeout)
    feedback_sent: int = 0
    wrong_feedback_sent: int = 0  # of feedback_sent, the labels contradicting the prediction on purpose
    live_accuracy: float | None = None
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list, repr=False)
    statuses: dict[int, int] = field(default_factory=dict)

    @property
    def throughput(self) -> float:
        return self.sent / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) * 1000 if self.latencies else float("nan")

    @property
    def errors(self) -> int:
        return self.client_errors + self.server_errors + self.transport_errors

    @property
    def failed(self) -> bool:
        """Server-side failures (5xx, no answer) or 4xx for rows that were valid."""
        return self.server_errors + self.transport_errors + self.client_errors > 0

    def summary(self) -> str:
        lines = [
            f"requests {self.sent} in {self.seconds:.2f} s: {self.throughput:.1f} req/s",
            f"latency ms: p50 {self.percentile(50):.2f}  p95 {self.percentile(95):.2f}  p99 {self.percentile(99):.2f}",
            f"ok {self.ok}, rejected as intended {self.rejected}, unexpected 4xx {self.client_errors}, "
            f"5xx {self.server_errors}, no answer {self.transport_errors}",
            "statuses: " + ", ".join(f"{k}: {v}" for k, v in sorted(self.statuses.items())),
        ]
        if self.feedback_sent:
            acc = "n/a" if self.live_accuracy is None else f"{self.live_accuracy:.4f}"
            lines.append(
                f"feedback sent {self.feedback_sent} ({self.wrong_feedback_sent} deliberately wrong), "
                f"gateway live accuracy {acc}"
            )
        return "\n".join(lines)


async def run_load(
    url: str,
    rows: list[dict[str, Any]],
    truths: list[str] | None = None,
    *,
    concurrency: int | None = 8,
    rate: float | None = None,
    duration: float | None = None,
    count: int | None = None,
    drift_share: float = 0.0,
    invalid_share: float = 0.0,
    feedback: bool = False,
    wrong_feedback_share: float = 0.0,
    batch_rows: int = 1,
    seed: int = 0,
    timeout: float = 10.0,
    contract: Contract | None = None,
    progress: Callable[[int], None] | None = None,
    max_in_flight: int = 256,
) -> LoadReport:
    """Send requests of `batch_rows` real rows to `<url>/invocations`; bounded by `duration` and/or `count`.

    With `rate` (requests/s) requests start on a fixed schedule (open loop, at most `max_in_flight` at a
    time); otherwise `concurrency` workers each send the next request when the last one is answered.
    With `feedback`, each scored row with a known label gets it back on `/feedback`; a `wrong_feedback_share` of the
    scored rows (drifted ones included) gets the label the gateway did not predict instead.
    """
    import httpx

    if duration is None and count is None:
        raise ValueError("give a duration or a count: the load is always bounded")
    duration = min(duration or MAX_DURATION, MAX_DURATION)
    count = min(count or MAX_COUNT, MAX_COUNT)
    if not rows:
        raise ValueError("no rows to send")
    if (drift_share or invalid_share) and contract is None:
        raise ValueError("drifted or invalid rows need the contract")
    if feedback and truths is None:
        raise ValueError("feedback needs the true labels")
    if not 0.0 <= wrong_feedback_share <= 1.0:
        raise ValueError(f"the wrong-feedback share must be between 0 and 1, got {wrong_feedback_share:g}")
    if wrong_feedback_share and not (feedback and contract is not None):
        raise ValueError("wrong feedback needs feedback on and the contract (its two labels)")
    rng = random.Random(seed)
    wrong_rng = random.Random(seed + 1)  # its own stream: the rows sent do not depend on the wrong share
    maker = RowMaker(contract, rows, seed) if contract is not None else None
    report = LoadReport()
    pending_feedback: list[tuple[dict[str, Any], bool]] = []  # (item, deliberately wrong)
    url = url.rstrip("/")
    started = time.perf_counter()
    deadline = started + duration
    issued = 0

    def next_request() -> tuple[dict[str, Any], bool, list[str | None]] | None:
        nonlocal issued
        if issued >= count or time.perf_counter() >= deadline:
            return None
        issued += 1
        batch, labels, invalid = [], [], False
        for _ in range(batch_rows):
            i = rng.randrange(len(rows))
            row, truth = rows[i], (truths[i] if truths is not None else None)
            draw = rng.random()
            if draw < invalid_share:
                row, invalid = maker.invalid(row)[0], True
            elif draw < invalid_share + drift_share:
                row, truth = maker.drifted(row), None  # ground truth of a shifted row is unknown
            if wrong_feedback_share and wrong_rng.random() < wrong_feedback_share:
                truth = WRONG
            batch.append(row)
            labels.append(truth)
        return {"dataframe_records": batch}, invalid, labels  # MLflow's format: works direct too

    async def flush_feedback(client: httpx.AsyncClient, force: bool = False) -> None:
        while pending_feedback and (force or len(pending_feedback) >= FEEDBACK_BATCH):
            chunk = pending_feedback[:FEEDBACK_BATCH]
            del pending_feedback[:FEEDBACK_BATCH]
            try:
                resp = await client.post(f"{url}/feedback", json={"feedback": [item for item, _ in chunk]})
                if resp.status_code == 200:
                    report.feedback_sent += len(chunk)
                    report.wrong_feedback_sent += sum(wrong for _, wrong in chunk)
                    report.live_accuracy = resp.json().get("live_accuracy")
                elif resp.status_code >= 500:
                    report.server_errors += 1
                else:
                    report.client_errors += 1
            except httpx.HTTPError:
                report.transport_errors += 1

    async def send(client: httpx.AsyncClient, body: dict, invalid: bool, labels: list) -> None:
        t0 = time.perf_counter()
        try:
            resp = await client.post(f"{url}/invocations", json=body)
        except httpx.HTTPError:
            report.transport_errors += 1
            report.sent += 1
            return
        report.latencies.append(time.perf_counter() - t0)
        report.sent += 1
        status = resp.status_code
        report.statuses[status] = report.statuses.get(status, 0) + 1
        if status == 200:
            report.ok += 1
            answer = resp.json() if feedback else {}
            if "ids" in answer:  # a target other than the gateway answers no ids: nothing to send back then
                for pid, truth, predicted in zip(answer["ids"], labels, answer["labels"], strict=True):
                    if truth is WRONG:
                        other = [label for label in contract.labels if label != str(predicted)]
                        pending_feedback.append(({"id": pid, "label": other[0]}, True))
                    elif truth is not None:
                        pending_feedback.append(({"id": pid, "label": truth}, False))
        elif status >= 500:
            report.server_errors += 1
        elif invalid and status in (400, 422):
            report.rejected += 1
        else:
            report.client_errors += 1
        if progress is not None:
            progress(1)

    limits = httpx.Limits(
        max_connections=max(concurrency or 1, max_in_flight if rate else 1),
        max_keepalive_connections=max(concurrency or 1, 64),
    )
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        if rate:
            tasks: set[asyncio.Task] = set()
            slots = asyncio.Semaphore(max_in_flight)
            interval, n = 1.0 / rate, 0
            while (req := next_request()) is not None:
                delay = started + n * interval - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                n += 1
                await slots.acquire()
                task = asyncio.create_task(send(client, *req))
                tasks.add(task)
                task.add_done_callback(lambda t: (tasks.discard(t), slots.release()))
                if feedback:
                    await flush_feedback(client)
            await asyncio.gather(*tasks)
        else:

            async def worker() -> None:
                while (req := next_request()) is not None:
                    await send(client, *req)
                    if feedback:
                        await flush_feedback(client)

            await asyncio.gather(*(worker() for _ in range(concurrency or 1)))
        report.seconds = time.perf_counter() - started
        if feedback:
            await flush_feedback(client, force=True)
    return report


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def check_plan(
    url: str, drift_share: float, invalid_share: float, feedback: bool, wrong_feedback_share: float, allow_remote: bool
) -> None:
    """DataError naming the option when a load cannot be run as asked (shares that do not add up, wrong feedback
    without feedback, a host other than this one without `allow_remote`)."""
    from urllib.parse import urlparse

    if invalid_share + drift_share > 1:
        raise DataError("--invalid-share + --drift-share must be at most 1")
    if not 0 <= wrong_feedback_share <= 1:
        raise DataError(f"--wrong-feedback-share must be between 0 and 1, got {wrong_feedback_share:g}")
    if wrong_feedback_share and not feedback:
        raise DataError("--wrong-feedback-share needs --feedback (it is a share of the feedback sent)")
    if urlparse(url).hostname not in LOOPBACK and not allow_remote:
        raise DataError(f"{url} is not loopback; pass --allow-remote to load another host")


def run_with_progress(url: str, rows, truths, show: bool = True, **load) -> LoadReport:
    """`run_load` with a progress bar of the requests sent (up to `count` when it is given)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("requests"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, disable=not show, transient=False) as bar:
        task = bar.add_task("load", total=load.get("count"))
        return asyncio.run(run_load(url, rows, truths, progress=lambda n: bar.advance(task, n), **load))
