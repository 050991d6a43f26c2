"""How log rows get into the database cheaply, off the request path but inside the serving process, where every
microsecond the writer holds the interpreter is taken from requests.

Two ways, both idempotent (a row whose UUID is already there is skipped):

- **bulk** (predictions, SQLite >= 3.38 and PostgreSQL): the rows of many requests go to the database as one JSON
  array of row arrays — one `orjson.dumps` for them all — and one `INSERT … SELECT … FROM json_each(?)`
  (PostgreSQL: `json_array_elements`) builds the row objects inside the database. SQLite does that work in C with
  Python's lock released, PostgreSQL in its own process; numbers keep their exact text.
- **rows** (everything else: feedback, replayed spill lines, other databases, a bulk batch the database refused):
  a DBAPI executemany of one prepared statement with the JSON columns as text.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3

import orjson

from kd.serve.log import COLUMNS, JSON_COLUMNS, TABLES

MAX_KEYS = 40  # keys per json_object/json_build_object call (SQLite allows 127 arguments, PostgreSQL 100)


def dumps(value) -> str:
    """JSON text of a log value (orjson: a tenth of json.dumps' cost)."""
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY).decode()


def _literal(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


class Inserter:
    def __init__(self, dialect: str):
        self.dialect = dialect
        self.bulk_ok = dialect == "postgresql" or (dialect == "sqlite" and sqlite3.sqlite_version_info >= (3, 38))
        self._sql: dict[tuple, str] = {}

    def time(self, t: dt.datetime):
        """A datetime as this database's column takes it (SQLite: SQLAlchemy's text format, in UTC)."""
        return t.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f") if self.dialect == "sqlite" else t

    def bulk_time(self, t: dt.datetime) -> str:
        """A datetime as text the bulk statement turns into the column's value."""
        return self.time(t) if self.dialect == "sqlite" else t.isoformat()

    def rows(self, conn, table: str, rows: list[tuple]) -> None:
        """Insert row tuples (columns in `COLUMNS[table]` order, JSON columns as text)."""
        cols = COLUMNS[table]
        names = ", ".join(cols)
        if self.dialect == "sqlite":
            conn.exec_driver_sql(f"INSERT OR IGNORE INTO {table} ({names}) VALUES ({', '.join('?' * len(cols))})", rows)
        elif self.dialect == "postgresql":
            marks = ", ".join("%s::json" if c in JSON_COLUMNS else "%s" for c in cols)
            conn.exec_driver_sql(f"INSERT INTO {table} ({names}) VALUES ({marks}) ON CONFLICT DO NOTHING", rows)
        else:
            conn.execute(TABLES[table].insert(), [{c: (json.loads(v) if c in JSON_COLUMNS else v) for c, v in zip(cols, r)} for r in rows])

    def bulk(self, conn, head: tuple[str, str, str], names: tuple[tuple, tuple, tuple], payload: str) -> None:
        """Insert prediction rows given as a JSON array of `[request_id, label, time, position, *features, *sensitive,
        *probabilities]`; `head` = (endpoint, model_name, model_version); `names` = (feature, sensitive, class) names."""
        key = (self.dialect, *names)
        sql = self._sql.get(key) or self._sql.setdefault(key, self._bulk_sql(*names))
        conn.exec_driver_sql(sql, (*head, payload))

    def _bulk_sql(self, features: tuple, sensitive: tuple, classes: tuple) -> str:
        sqlite = self.dialect == "sqlite"
        at = (lambda i: f"value -> {i}") if sqlite else (lambda i: f"r -> {i}")
        text = (lambda i: f"value ->> {i}") if sqlite else (lambda i: f"r ->> {i}")

        def obj(keys: tuple, first: int) -> str:
            groups = [keys[i:i + MAX_KEYS] for i in range(0, len(keys), MAX_KEYS)] or [()]
            parts = []
            for g, group in enumerate(groups):
                pairs = ", ".join(f"{_literal(k)}, {at(first + g * MAX_KEYS + j)}" for j, k in enumerate(group))
                parts.append(f"json_object({pairs})" if sqlite else f"json_build_object({pairs})")
            if len(parts) == 1:
                return parts[0]
            if sqlite:  # merge groups keeping key order: json_patch appends the new keys
                merged = parts[0]
                for part in parts[1:]:
                    merged = f"json_patch({merged}, {part})"
                return merged
            return "(" + " || ".join(f"{p}::jsonb" for p in parts) + ")::json"

        f0 = 4
        s0 = f0 + len(features)
        p0 = s0 + len(sensitive)
        cols = ", ".join(COLUMNS["predictions"])
        if sqlite:
            return (f"INSERT OR IGNORE INTO predictions ({cols}) SELECT {text(0)}, {text(2)}, {text(3)}, ?, ?, ?, {obj(features, f0)}, "
                    f"{obj(sensitive, s0)}, {text(1)}, {obj(classes, p0)} FROM json_each(?)")
        return (f"INSERT INTO predictions ({cols}) SELECT {text(0)}, ({text(2)})::timestamptz, ({text(3)})::int, %s, %s, %s, "
                f"{obj(features, f0)}, {obj(sensitive, s0)}, {text(1)}, {obj(classes, p0)} FROM json_array_elements(%s::json) AS t(r) "
                "ON CONFLICT DO NOTHING")
