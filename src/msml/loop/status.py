"""`msml loop status`: the store's state as a dict (for --json) and as plain-text tables."""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict
from typing import Any

from msml.loop.store import open_store


def _when(t: float | None) -> str:
    return "-" if t is None else dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def status_of(store_url: str, last: int = 10) -> dict[str, Any]:
    """Counts (predictions, labels, labelled predictions, times) and the `last` decisions, newest first."""
    store = open_store(store_url)
    try:
        counts, decisions = store.counts(), store.decisions(limit=last)
    finally:
        store.close()
    return {"store": repr(store), "counts": asdict(counts), "decisions": [asdict(d) for d in decisions]}


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=True)).rstrip() for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def render_status(state: dict[str, Any]) -> str:
    c = state["counts"]
    counts = _table(
        ["predictions", "labels", "labelled", "first prediction", "last prediction", "last label"],
        [
            [
                str(c["predictions"]),
                str(c["labels"]),
                str(c["labelled"]),
                _when(c["first_prediction"]),
                _when(c["last_prediction"]),
                _when(c["last_label"]),
            ]
        ],
    )
    rows = [
        [
            str(d["id"]),
            _when(d["time"]),
            d["reason"],
            d["decision"],
            d["fingerprint"] or "-",
            d["run_id"] or "-",
            d["model_version"] or "-",
        ]
        for d in state["decisions"]
    ]
    decisions = (
        _table(["id", "time (UTC)", "reason", "decision", "fingerprint", "run", "version"], rows)
        if rows
        else "no retrain decisions yet"
    )
    return f"store: {state['store']}\n\n{counts}\n\n{decisions}"
