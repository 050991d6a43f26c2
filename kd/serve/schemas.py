"""Request bodies → what the model reads, with a 4xx that names the problem for anything malformed.

Bodies are parsed by hand rather than by pydantic models: the shapes are small, the error messages say
exactly which row or field is wrong, and the request path stays cheap. JSON is parsed strictly (RFC 8259, by
orjson): no NaN or Infinity literals (§6), no number beyond double range, no unpaired surrogate.

    POST /predict   {"rows": [{column: value, ...}, ...]}
    POST /feedback  {"request_id": UUID, "label": class}  or a list of them, or {"feedback": [...]}
"""

from __future__ import annotations

import json
import math
import os
import time
import uuid
from dataclasses import dataclass

import orjson


class RequestError(Exception):
    """A request the service refuses: the HTTP status (4xx) and a message naming the problem."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def _no_constant(name: str):
    raise RequestError(400, f"invalid JSON: {name} is not a JSON number (RFC 8259 has no NaN or Infinity); send finite numbers")


MAX_OPENINGS = 1000  # beyond this many '[' and '{', the nesting depth is checked (orjson itself parses any depth)


def parse_json(body: bytes):
    """The body as JSON (strict RFC 8259, parsed by orjson), or 400 naming what is wrong with it."""
    if not body.strip():
        raise RequestError(400, "empty body: send a JSON object")
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as err:
        reason = str(err)
    else:
        if body.count(b"[") + body.count(b"{") > MAX_OPENINGS:
            _depth_check(body)
        return doc
    try:  # the stdlib parser names NaN and Infinity; whatever it makes of the body, orjson refused it
        json.loads(body, parse_constant=_no_constant)
    except RequestError:
        raise
    except Exception:  # only a better message was sought
        pass
    raise RequestError(400, f"invalid JSON: {reason}")


def _depth_check(body: bytes) -> None:
    try:
        json.loads(body)
    except RecursionError:
        raise RequestError(400, "invalid JSON: nested too deeply") from None


@dataclass
class Batch:
    """Rows as columns: `columns[name][i]` is row i's value (None where the row lacks it)."""

    columns: dict[str, list]
    n: int
    present: set[str]  # columns at least one row carries


def rows_batch(doc, wanted: list[str], max_rows: int) -> Batch:
    """`{"rows": [...]}` → the wanted columns (features and sensitive ones; other keys are ignored)."""
    if not isinstance(doc, dict):
        raise RequestError(422, f'expected a JSON object {{"rows": [{{column: value, ...}}, ...]}}, got {_kind(doc)}')
    if "rows" not in doc:
        raise RequestError(422, f'missing field "rows"; expected {{"rows": [{{column: value, ...}}, ...]}} (got fields {sorted(doc)[:10]})')
    rows = doc["rows"]
    if not isinstance(rows, list):
        raise RequestError(422, f'"rows" must be a list of objects, got {_kind(rows)}')
    if not rows:
        raise RequestError(422, '"rows" is empty: send at least one row')
    if len(rows) > max_rows:
        raise RequestError(413, f'{len(rows)} rows in one request; at most {max_rows} (serve.max_rows): split the request')
    for i, row in enumerate(rows):
        if type(row) is not dict:
            raise RequestError(422, f"rows[{i}] must be an object of column: value, got {_kind(row)}")
    columns = {c: [r.get(c) for r in rows] for c in wanted}
    present = {c for c in wanted if any(c in r for r in rows)} if any(None in col for col in columns.values()) else set(wanted)
    return Batch(columns, len(rows), present)


def check_scalars(batch: Batch, names: list[str]) -> None:
    """Sensitive columns are logged as given: each value must be a JSON scalar (string, finite number, boolean or null)."""
    for name in names:
        for i, v in enumerate(batch.columns.get(name, ())):
            if isinstance(v, (dict, list)):
                raise RequestError(422, f"row {i}: column {name!r} must be a single value, got {_kind(v)}")
            if type(v) is float and not math.isfinite(v):
                raise RequestError(422, f"row {i}: column {name!r} must be a finite number, got {v}")


@dataclass
class Feedback:
    request_id: str
    label: str


def feedback_items(doc, classes: list[str], max_rows: int) -> list[Feedback]:
    """Feedback: one `{"request_id", "label"}`, a list of them, or `{"feedback": [...]}`; labels must be known classes."""
    items = doc.get("feedback", doc) if isinstance(doc, dict) and "feedback" in doc else doc
    items = items if isinstance(items, list) else [items]
    if not items:
        raise RequestError(422, "no feedback: send {\"request_id\": ..., \"label\": ...}")
    if len(items) > max_rows:
        raise RequestError(413, f"{len(items)} feedback items in one request; at most {max_rows} (serve.max_rows)")
    out = []
    for i, item in enumerate(items):
        where = f"feedback[{i}]" if len(items) > 1 else "feedback"
        if not isinstance(item, dict) or "request_id" not in item or "label" not in item:
            raise RequestError(422, f'{where}: expected {{"request_id": "<uuid from a prediction>", "label": "<class>"}}, got {_kind(item)}')
        rid, label = item["request_id"], item["label"]
        try:
            rid = str(uuid.UUID(rid)) if isinstance(rid, str) else None
        except ValueError:
            rid = None
        if rid is None:
            raise RequestError(422, f"{where}: request_id {item['request_id']!r} is not a request id (a UUID returned by /predict)")
        if not isinstance(label, str) or label not in classes:
            raise RequestError(422, f"{where}: unknown label {label!r}; the model's classes are {classes[:20]}")
        out.append(Feedback(rid, label))
    return out


def _kind(v) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null", int: "a number", float: "a number"}
    return names.get(type(v), type(v).__name__)


def request_ids(n: int) -> list[str]:
    """n fresh request ids, UUIDv7 (RFC 9562 §5.7): a 48-bit Unix time in ms, then 74 random bits. They sort by
    time, so the log's key index grows at its end; and one urandom call serves a whole request."""
    prefix = (time.time_ns() // 1_000_000).to_bytes(6, "big").hex()
    head = f"{prefix[:8]}-{prefix[8:]}-"
    raw = os.urandom(10 * n)
    out = []
    for i in range(0, 10 * n, 10):
        a = 0x7000 | (raw[i] << 8 | raw[i + 1]) & 0x0FFF
        b = 0x8000 | (raw[i + 2] << 8 | raw[i + 3]) & 0x3FFF
        out.append(f"{head}{a:04x}-{b:04x}-{raw[i + 4:i + 10].hex()}")
    return out
