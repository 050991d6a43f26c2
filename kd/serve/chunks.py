"""The units the prediction log moves in: one request's predictions (`Predictions`, kept as columns, as the
request came) or a list of ready rows (`Rows`: feedback). Each turns itself into what the next step needs —
insert parameters (`params` row tuples, `bulk_rows` for the bulk statement) and one spill-file line (`record`,
read back by `from_record`) — so the request path only ever appends one object to a buffer.
"""

from __future__ import annotations

import datetime as dt
import itertools
from dataclasses import dataclass

import numpy as np
import orjson

from kd.serve import log as logdb
from kd.serve.inserts import dumps


@dataclass
class Predictions:
    """One request's predictions, expanded into log rows by the writer thread (not by the request)."""

    time: dt.datetime
    endpoint: str
    model_name: str
    model_version: str
    features: dict[str, list]
    sensitive: dict[str, list]
    ids: list[str]
    labels: list[str]
    probs: np.ndarray
    classes: list[str]
    table = "predictions"

    @property
    def n(self) -> int:
        return len(self.ids)

    def params(self, time) -> list[tuple]:
        """The rows as insert parameters (`log.COLUMNS` order); `time` formats the request's time once for all."""
        probs, classes, feats, sens, labels = self.probs.tolist(), self.classes, self.features, self.sensitive, self.labels
        t, head = time(self.time), (self.endpoint, self.model_name, self.model_version)
        return [(rid, t, i, *head, dumps({c: v[i] for c, v in feats.items()}), dumps({c: v[i] for c, v in sens.items()}), labels[i],
                 dumps(dict(zip(classes, probs[i])))) for i, rid in enumerate(self.ids)]


    def record(self) -> bytes:
        """One spill-file line: the request's columns as they are (no per-row work)."""
        return orjson.dumps({"table": self.table, "chunk": {
            "time": self.time, "endpoint": self.endpoint, "model_name": self.model_name, "model_version": self.model_version,
            "features": self.features, "sensitive": self.sensitive, "ids": self.ids, "labels": self.labels, "probs": self.probs,
            "classes": self.classes}}, option=orjson.OPT_SERIALIZE_NUMPY)

    def bulk_key(self) -> tuple:
        """What the rows of one bulk statement share: endpoint, model name and version, column and class names."""
        return (self.endpoint, self.model_name, self.model_version), (tuple(self.features), tuple(self.sensitive), tuple(self.classes))

    def bulk_rows(self, time: str):
        """The rows as `[request_id, label, time, position, *features, *sensitive, *probabilities]` (see `Inserter.bulk`)."""
        return zip(self.ids, self.labels, itertools.repeat(time), range(self.n), *self.features.values(), *self.sensitive.values(),
                   *self.probs.T.tolist())


@dataclass
class Rows:
    """Rows ready for one table (feedback; replayed spill lines)."""

    table: str
    items: list[dict]

    @property
    def n(self) -> int:
        return len(self.items)

    def record(self) -> bytes:
        return orjson.dumps({"table": self.table, "rows": self.items}, option=orjson.OPT_SERIALIZE_NUMPY)

    def params(self, time) -> list[tuple]:
        cols = logdb.COLUMNS[self.table]
        return [tuple(time(r[c]) if c == "time" else dumps(r[c]) if c in logdb.JSON_COLUMNS else r[c] for c in cols)
                for r in self.items]


def from_record(record: dict):
    """A chunk from one spill-file line (`record()` of a Predictions or Rows)."""
    if record["table"] == "predictions":
        c = record["chunk"]
        return Predictions(dt.datetime.fromisoformat(c["time"]), c["endpoint"], c["model_name"], c["model_version"], c["features"],
                           c["sensitive"], c["ids"], c["labels"], np.asarray(c["probs"], np.float64).reshape(len(c["ids"]), -1), c["classes"])
    if record["table"] in logdb.TABLES:
        return Rows(record["table"], [r | {"time": dt.datetime.fromisoformat(r["time"])} for r in record["rows"]])
    raise ValueError(f"unknown table {record['table']!r}")
