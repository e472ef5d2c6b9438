"""The loop's store: every served prediction, the ground truth that came back for it, and every retrain decision.

One SQLAlchemy store. By default an SQLite file in WAL mode under the run folder (`Settings.loop_store`, embedded,
nothing to set up: readers such as `msml collect` never block the gateway's writer); any PostgreSQL by URL through
`MSML_LOOP_STORE` (the `msml tracking up` cluster has a `loop` database for it). Three tables:

  loop_predictions        request_id (the prediction id the gateway answered) → time, model name and version, contract
                          hash, the row as validated (JSON), probability of the positive class, predicted class (0/1)
  loop_labels             request_id → label (the contract's label text), label time; the first write wins
  loop_retrain_decisions  id → time, reason, alert fingerprint, decision, detail (JSON), run id, model version

Times are seconds since the epoch (UTC), as `time.time()` gives them: one comparable number in both databases.
Each call is one transaction: a batch is written whole or not at all.
"""

from __future__ import annotations

import json
import time as _time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from msml.errors import MsmlError

metadata = sa.MetaData()
_TIME = sa.Float(precision=53)  # DOUBLE PRECISION on PostgreSQL: microseconds survive the round trip
ID = sa.String(64)

predictions_table = sa.Table(
    "loop_predictions",
    metadata,
    sa.Column("request_id", ID, primary_key=True),
    sa.Column("time", _TIME, nullable=False, index=True),
    sa.Column("model_name", sa.String(200)),
    sa.Column("model_version", sa.String(50)),
    sa.Column("contract_hash", sa.String(64), nullable=False),
    sa.Column("row", sa.Text, nullable=False),
    sa.Column("probability", _TIME, nullable=False),
    sa.Column("predicted", sa.SmallInteger, nullable=False),
)
labels_table = sa.Table(
    "loop_labels",
    metadata,
    sa.Column("request_id", ID, primary_key=True),
    sa.Column("label", sa.String(200), nullable=False),
    sa.Column("time", _TIME, nullable=False, index=True),
)
decisions_table = sa.Table(
    "loop_retrain_decisions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("time", _TIME, nullable=False, index=True),
    sa.Column("reason", sa.String(200), nullable=False),
    sa.Column("fingerprint", sa.String(200), index=True),
    sa.Column("decision", sa.String(50), nullable=False),
    sa.Column("detail", sa.Text, nullable=False),
    sa.Column("run_id", sa.String(64)),
    sa.Column("model_version", sa.String(50)),
)


_SQLITE_INSERT = (
    f"INSERT INTO {predictions_table.name} ({', '.join(c.name for c in predictions_table.columns)}) "
    f"VALUES ({', '.join('?' for _ in predictions_table.columns)}) ON CONFLICT (request_id) DO NOTHING"
)


class StoreError(MsmlError):
    """The loop's store cannot be opened or used (exit 3, as the tracking store: a server or file to fix)."""

    exit_code = 3


@dataclass(frozen=True)
class Prediction:
    """One served row as the prediction log keeps it."""

    request_id: str
    time: float
    model_name: str | None
    model_version: str | None
    contract_hash: str
    row: dict[str, Any]
    probability: float
    predicted: int


@dataclass(frozen=True)
class Label:
    request_id: str
    label: str
    time: float


@dataclass(frozen=True)
class Decision:
    id: int
    time: float
    reason: str
    fingerprint: str | None
    decision: str
    detail: dict[str, Any]
    run_id: str | None
    model_version: str | None


@dataclass(frozen=True)
class Counts:
    predictions: int
    labels: int
    labelled: int  # predictions that have a label (a label may precede its prediction's flush)
    first_prediction: float | None
    last_prediction: float | None
    last_label: float | None


def _on_connect_sqlite(dbapi_connection, _record) -> None:
    # WAL: readers (collect, status) never block the gateway's writer nor it them; NORMAL sync is durable
    # across a process crash (a commit is in the WAL before COMMIT returns), which is what "logged" promises.
    # busy_timeout: a writer that finds the file locked waits this long before failing its batch.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=2000")
    cursor.close()


class LoopStore:
    """The store at `url` (an SQLAlchemy URL: `sqlite:///<path>` or `postgresql://…`). Tables are created on first
    use (`ensure_schema`), so opening never fails on a database that is down: the first call does, with StoreError."""

    def __init__(self, url: str, connect_timeout: float = 5.0) -> None:
        self.url = url
        try:
            parsed = sa.engine.make_url(url)
        except sa.exc.ArgumentError as exc:
            raise StoreError(f"loop store URL is not a database URL: {url!r} ({exc})") from None
        self.dialect = parsed.get_backend_name()
        if self.dialect == "sqlite":
            if parsed.database and parsed.database != ":memory:":
                from pathlib import Path

                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            self.engine = sa.create_engine(url, connect_args={"timeout": 2.0})
            sa.event.listen(self.engine, "connect", _on_connect_sqlite)
        elif self.dialect == "postgresql":
            # both timeouts bound one write attempt, so the gateway's writer never hangs on a stalled server
            timeout = max(1, int(connect_timeout))
            self.engine = sa.create_engine(
                url,
                pool_pre_ping=True,
                connect_args={"connect_timeout": timeout, "options": f"-c statement_timeout={timeout * 1000}"},
            )
        else:
            raise StoreError(f"loop store must be SQLite or PostgreSQL, got {self.dialect!r} in {url!r}")
        self._schema_ready = False

    def __repr__(self) -> str:
        return f"LoopStore({self.engine.url.render_as_string(hide_password=True)!r})"

    def close(self) -> None:
        self.engine.dispose()

    def ensure_schema(self) -> None:
        """Create the tables that do not exist yet (idempotent)."""
        if not self._schema_ready:
            metadata.create_all(self.engine, checkfirst=True)
            self._schema_ready = True

    def _insert(self, table: sa.Table):
        return (postgresql if self.dialect == "postgresql" else sqlite).insert(table)

    # ---- writes -----------------------------------------------------------------------------------------------
    def log_predictions(self, predictions: Sequence[Prediction]) -> int:
        """Write a batch of predictions in one transaction; returns how many were new (an id already logged is kept
        as it was: the gateway's ids are unique, so a repeat can only be a retried batch)."""
        if not predictions:
            return 0
        self.ensure_schema()
        rows = [
            (
                p.request_id,
                p.time,
                p.model_name,
                p.model_version,
                p.contract_hash,
                orjson.dumps(p.row).decode(),
                p.probability,
                p.predicted,
            )
            for p in predictions
        ]
        with self.engine.begin() as conn:
            if self.dialect == "sqlite":
                # the gateway's writer thread runs this at serving rates: tuples straight to the driver cost 4 us
                # of CPU per row, Core's dict-per-row executemany with the stdlib's json 15 us (measured, 20,000
                # Adult rows in batches of 1,000)
                return conn.exec_driver_sql(_SQLITE_INSERT, rows).rowcount
            statement = self._insert(predictions_table).on_conflict_do_nothing(index_elements=["request_id"])
            names = [c.name for c in predictions_table.columns]
            return conn.execute(statement, [dict(zip(names, r, strict=True)) for r in rows]).rowcount

    def record_labels(self, labels: Sequence[Label]) -> set[str]:
        """Write labels, the first write per request id winning; returns the ids whose label this call wrote."""
        if not labels:
            return set()
        self.ensure_schema()
        statement = (
            self._insert(labels_table)
            .on_conflict_do_nothing(index_elements=["request_id"])
            .returning(labels_table.c.request_id)
        )
        with self.engine.begin() as conn:
            result = conn.execute(
                statement,
                [{"request_id": lab.request_id, "label": lab.label, "time": lab.time} for lab in labels],
            )
            return {r[0] for r in result}

    def record_decision(
        self,
        reason: str,
        decision: str,
        detail: dict[str, Any] | None = None,
        fingerprint: str | None = None,
        run_id: str | None = None,
        model_version: str | None = None,
        time: float | None = None,
    ) -> int:
        """Append one retrain decision (why, what was decided, its figures); returns its id."""
        self.ensure_schema()
        with self.engine.begin() as conn:
            result = conn.execute(
                decisions_table.insert().values(
                    time=_time.time() if time is None else time,
                    reason=reason,
                    fingerprint=fingerprint,
                    decision=decision,
                    detail=json.dumps(detail or {}, sort_keys=True, default=str),
                    run_id=run_id,
                    model_version=model_version,
                )
            )
            return int(result.inserted_primary_key[0])

    # ---- reads ------------------------------------------------------------------------------------------------
    def predictions(self, request_ids: Iterable[str]) -> dict[str, Prediction]:
        """The logged predictions among `request_ids`, by id."""
        ids = list(request_ids)
        if not ids:
            return {}
        self.ensure_schema()
        t = predictions_table
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(t).where(t.c.request_id.in_(ids))).mappings().all()
        return {r["request_id"]: _prediction(r) for r in rows}

    def labelled(self, request_ids: Iterable[str]) -> set[str]:
        """The ids among `request_ids` that have a label."""
        ids = list(request_ids)
        if not ids:
            return set()
        self.ensure_schema()
        t = labels_table
        with self.engine.connect() as conn:
            return set(conn.execute(sa.select(t.c.request_id).where(t.c.request_id.in_(ids))).scalars())

    def labelled_predictions(self, before: float, since: float | None = None) -> list[tuple[Prediction, Label]]:
        """Predictions made before `before` (and at or after `since`) that have a label, oldest first (ties by id,
        so the order is the same on every call)."""
        self.ensure_schema()
        p, lab = predictions_table, labels_table
        query = (
            sa.select(p, lab.c.label, lab.c.time.label("label_time"))
            .join(lab, lab.c.request_id == p.c.request_id)
            .where(p.c.time < before)
            .order_by(p.c.time, p.c.request_id)
        )
        if since is not None:
            query = query.where(p.c.time >= since)
        with self.engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        return [(_prediction(r), Label(r["request_id"], r["label"], r["label_time"])) for r in rows]

    def labelled_since(self, since: float) -> int:
        """Labelled predictions whose label arrived after `since` (what a retraining has not yet seen)."""
        self.ensure_schema()
        p, lab = predictions_table, labels_table
        query = (
            sa.select(sa.func.count())
            .select_from(lab.join(p, p.c.request_id == lab.c.request_id))
            .where(lab.c.time > since)
        )
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def recent_outcomes(self, positive: str, limit: int) -> list[int]:
        """1 (correct) or 0 for the `limit` most recently labelled predictions, oldest first: the live-accuracy
        window a restarted gateway starts from."""
        self.ensure_schema()
        p, lab = predictions_table, labels_table
        query = (
            sa.select(p.c.predicted, lab.c.label)
            .join(lab, lab.c.request_id == p.c.request_id)
            .order_by(lab.c.time.desc(), lab.c.request_id.desc())
            .limit(limit)
        )
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [int(predicted == int(label == positive)) for predicted, label in reversed(rows)]

    def counts(self) -> Counts:
        self.ensure_schema()
        p, lab = predictions_table, labels_table
        with self.engine.connect() as conn:
            n_pred, first, last = conn.execute(
                sa.select(sa.func.count(), sa.func.min(p.c.time), sa.func.max(p.c.time))
            ).one()
            n_lab, last_label = conn.execute(sa.select(sa.func.count(), sa.func.max(lab.c.time))).one()
            labelled = conn.execute(
                sa.select(sa.func.count()).select_from(lab.join(p, p.c.request_id == lab.c.request_id))
            ).scalar_one()
        return Counts(int(n_pred), int(n_lab), int(labelled), first, last, last_label)

    def decisions(
        self, limit: int = 20, since: float | None = None, fingerprint: str | None = None, decision: str | None = None
    ) -> list[Decision]:
        """The latest retrain decisions, newest first (filtered by time, alert fingerprint, decision)."""
        self.ensure_schema()
        t = decisions_table
        query = sa.select(t).order_by(t.c.time.desc(), t.c.id.desc()).limit(limit)
        if since is not None:
            query = query.where(t.c.time >= since)
        if fingerprint is not None:
            query = query.where(t.c.fingerprint == fingerprint)
        if decision is not None:
            query = query.where(t.c.decision == decision)
        with self.engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        return [
            Decision(
                r["id"],
                r["time"],
                r["reason"],
                r["fingerprint"],
                r["decision"],
                json.loads(r["detail"]),
                r["run_id"],
                r["model_version"],
            )
            for r in rows
        ]


def _prediction(r) -> Prediction:
    return Prediction(
        r["request_id"],
        r["time"],
        r["model_name"],
        r["model_version"],
        r["contract_hash"],
        json.loads(r["row"]),
        r["probability"],
        r["predicted"],
    )


def open_store(url: str) -> LoopStore:
    """The store at `url` with its tables created; StoreError naming the URL when the database cannot be reached."""
    store = LoopStore(url)
    try:
        store.ensure_schema()
    except sa.exc.SQLAlchemyError as exc:
        store.close()
        raise StoreError(
            f"loop store {store!r} cannot be used: {exc.__class__.__name__}: {str(exc).splitlines()[0]}"
        ) from None
    return store
