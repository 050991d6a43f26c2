"""The prediction log: its two tables and the reader the monitor uses.

    predictions  request_id (UUID, key), time (UTC), position (the row's index in its request), endpoint
                 (predict | infer), model_name, model_version, features (JSON: the model's raw input columns as
                 received), sensitive (JSON: the sensitive columns the request carried), label (the predicted
                 class), probabilities (JSON: class -> p)
    feedback     feedback_id (UUID, key), request_id (the prediction it labels), time (UTC), label (true class)

SQLite by default (`serve.log_uri`, WAL mode so readers never block the writer), PostgreSQL in production
(`postgresql://…` is driven by psycopg 3). The writer is `kd.serve.writer` (its SQL: `kd.serve.inserts`);
`read_window` is the reader.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
import sqlalchemy as sa

metadata = sa.MetaData()
predictions = sa.Table(
    "predictions", metadata,
    sa.Column("request_id", sa.String(36), primary_key=True),
    sa.Column("time", sa.DateTime(timezone=True), nullable=False, index=True),
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("endpoint", sa.String(16), nullable=False),
    sa.Column("model_name", sa.String(200), nullable=False),
    sa.Column("model_version", sa.String(32), nullable=False, index=True),
    sa.Column("features", sa.JSON, nullable=False),
    sa.Column("sensitive", sa.JSON, nullable=False),
    sa.Column("label", sa.String(200), nullable=False),
    sa.Column("probabilities", sa.JSON, nullable=False),
)
feedback = sa.Table(
    "feedback", metadata,
    sa.Column("feedback_id", sa.String(36), primary_key=True),
    sa.Column("request_id", sa.String(36), nullable=False, index=True),
    sa.Column("time", sa.DateTime(timezone=True), nullable=False),
    sa.Column("label", sa.String(200), nullable=False),
)
TABLES = {"predictions": predictions, "feedback": feedback}
COLUMNS = {name: [c.name for c in t.columns] for name, t in TABLES.items()}  # the order of the writer's row tuples
JSON_COLUMNS = {"features", "sensitive", "probabilities"}
META_COLUMNS = ["request_id", "time", "endpoint", "model_name", "model_version", "label", "probabilities", "feedback", "feedback_time"]


def url(uri: str) -> str:
    """A plain `postgresql://` URL means psycopg 3 (the driver kd installs), not SQLAlchemy's default psycopg2."""
    for plain in ("postgresql://", "postgres://"):
        if uri.startswith(plain):
            return "postgresql+psycopg://" + uri[len(plain):]
    return uri


def engine(uri: str, timeout: float = 5.0) -> sa.Engine:
    """An engine whose every call is bounded by `timeout` seconds (connect, lock wait, statement)."""
    u = url(uri)
    if u.startswith("sqlite"):
        eng = sa.create_engine(u, connect_args={"timeout": timeout})

        @sa.event.listens_for(eng, "connect")
        def _pragmas(conn, _record):
            cur = conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")  # readers (the monitor) and the writer do not block each other
            cur.execute("PRAGMA synchronous=NORMAL")  # durable at each checkpoint; WAL keeps the file consistent
            cur.close()

        return eng
    if u.startswith("postgresql"):
        ms = int(timeout * 1000)
        return sa.create_engine(u, pool_pre_ping=True, pool_size=2, connect_args={
            "connect_timeout": max(1, int(timeout)), "options": f"-c statement_timeout={ms} -c lock_timeout={ms}"})
    return sa.create_engine(u, pool_pre_ping=True)


def _sqlite_file(uri: str) -> Path | None:
    u = sa.engine.make_url(url(uri))
    return Path(u.database) if u.drivername.startswith("sqlite") and u.database not in (None, "", ":memory:") else None


def _utc(t) -> dt.datetime | None:
    if t is None:
        return None
    t = pd.Timestamp(t)
    t = t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")
    return t.to_pydatetime().replace(tzinfo=dt.UTC)


def read_window(uri: str, since=None, until=None, limit: int | None = None, model_version: str | None = None) -> pd.DataFrame:
    """The predictions logged in [since, until) — the latest `limit` of them, oldest first — as one row each:

    request_id, time (UTC), endpoint, model_name, model_version, the raw feature columns and the sensitive
    columns as received (versions with other columns leave NaN), label (predicted), probabilities (dict
    class -> p), feedback (the true label sent later, latest wins; None without one) and feedback_time.
    `since`/`until`: datetimes or ISO strings (naive ones are UTC). An empty log gives an empty frame."""
    file = _sqlite_file(uri)
    if file is not None and not file.exists():
        raise FileNotFoundError(f"{file}: no prediction log here (serve.log_uri = {uri})")
    eng = engine(uri)
    try:
        if not sa.inspect(eng).has_table("predictions"):
            return pd.DataFrame(columns=META_COLUMNS)
        latest = (sa.select(feedback.c.request_id, sa.func.max(feedback.c.time).label("t"))
                  .group_by(feedback.c.request_id).subquery())
        fb = (sa.select(feedback.c.request_id, feedback.c.label, feedback.c.time)
              .join(latest, sa.and_(feedback.c.request_id == latest.c.request_id, feedback.c.time == latest.c.t)).subquery())
        q = (sa.select(predictions, fb.c.label.label("feedback"), fb.c.time.label("feedback_time"))
             .outerjoin(fb, fb.c.request_id == predictions.c.request_id))
        if since is not None:
            q = q.where(predictions.c.time >= _utc(since))
        if until is not None:
            q = q.where(predictions.c.time < _utc(until))
        if model_version is not None:
            q = q.where(predictions.c.model_version == str(model_version))
        q = q.order_by(predictions.c.time.desc(), predictions.c.position.desc(), predictions.c.request_id)
        if limit is not None:
            q = q.limit(int(limit))
        with eng.connect() as conn:
            rows = conn.execute(q).mappings().all()
    finally:
        eng.dispose()
    return _frame(rows[::-1])


def _frame(rows) -> pd.DataFrame:
    records, seen, done = [], {}, set()
    for r in rows:
        if r["request_id"] in done:  # two feedback labels at the same instant: keep one
            continue
        done.add(r["request_id"])
        rec = {k: r[k] for k in ("request_id", "time", "endpoint", "model_name", "model_version")}
        for part in ("features", "sensitive"):
            for k, v in (r[part] or {}).items():
                if k in META_COLUMNS:
                    raise ValueError(f"logged column {k!r} has the name of a log field ({META_COLUMNS}); rename it in the data")
                seen.setdefault(k, None)
                rec[k] = v
        rec.update(label=r["label"], probabilities=r["probabilities"], feedback=r["feedback"], feedback_time=r["feedback_time"])
        records.append(rec)
    order = META_COLUMNS[:5] + list(seen) + META_COLUMNS[5:]
    frame = pd.DataFrame.from_records(records, columns=order)
    for c in ("time", "feedback_time"):
        frame[c] = pd.to_datetime(frame[c], utc=True)
    return frame


def counts(uri: str) -> dict[str, int]:
    """Rows in each table (0 for a table not created yet)."""
    eng = engine(uri)
    try:
        insp = sa.inspect(eng)
        with eng.connect() as conn:
            return {name: (conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one() if insp.has_table(name) else 0)
                    for name, t in TABLES.items()}
    finally:
        eng.dispose()
