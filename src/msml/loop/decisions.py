"""The retrain decisions: one record per alert the receiver acted on (or refused to), oldest first.

Every guard reads its state from here (was this alert seen, when did the last retraining start, how many
started today), so the record is also the guards' memory and survives a receiver restart. Stored as JSON
lines under the run folder, appended under a process-wide lock and flushed before the decision is acted on.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

# The outcomes a decision can have (the `outcome` label of msml_retrain_decisions_total). A started retraining
# gets a second record when it ends: promoted, rejected-by-gate or failed.
STARTED = "started"
DUPLICATE = "duplicate"
SKIPPED_COOLDOWN = "skipped-cooldown"
SKIPPED_FEW_ROWS = "skipped-few-rows"
SKIPPED_BUSY = "skipped-busy"
SKIPPED_DAILY_CAP = "skipped-daily-cap"
PAGED = "paged"  # an alert that must not retrain (data quality, the loop's own): a person looks
PROMOTED = "promoted"
REJECTED = "rejected-by-gate"
FAILED = "failed"
OUTCOMES = (
    STARTED,
    DUPLICATE,
    SKIPPED_COOLDOWN,
    SKIPPED_FEW_ROWS,
    SKIPPED_BUSY,
    SKIPPED_DAILY_CAP,
    PAGED,
    PROMOTED,
    REJECTED,
    FAILED,
)
ENDINGS = (PROMOTED, REJECTED, FAILED)


@dataclass(frozen=True)
class Decision:
    """What was decided about one alert: `reason` is the alert's name, `key` its identity (fingerprint and
    start), `detail` the figures the guard compared (rows seen and needed, seconds left, …)."""

    reason: str
    key: str
    fingerprint: str
    outcome: str
    detail: dict = field(default_factory=dict)
    at: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {self.outcome!r}; one of {', '.join(OUTCOMES)}")


class DecisionLog:
    """Decisions appended to a JSON-lines file (one process appends; readers may be anywhere)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def record(self, decision: Decision) -> Decision:
        line = json.dumps(asdict(decision), sort_keys=True) + "\n"
        with self._lock, self.path.open("a") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())  # acted on only once it is on disk: a crash cannot start the same alert twice
        return decision

    def decisions(self, since: float | None = None) -> list[Decision]:
        """Every decision (from `since`, epoch seconds), oldest first; a torn last line (a crash) is skipped."""
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            try:
                d = Decision(**json.loads(line))
            except (ValueError, TypeError):
                continue
            if since is None or d.at >= since:
                out.append(d)
        return out
