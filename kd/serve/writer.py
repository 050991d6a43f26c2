"""The prediction log writer: every prediction and feedback row reaches the database, off the request path.

A request only appends its rows to an in-memory buffer. A writer thread takes them in batches every
`log_flush_seconds` and inserts them (one transaction per batch, `INSERT … ON CONFLICT DO NOTHING` on the row's
UUID, so a retried or replayed batch never duplicates). While the database is unreachable or slow, rows wait in
the buffer; past `log_buffer_rows` a spill thread moves them to an append-only JSON-lines file (fsync'd), so
memory stays bounded and nothing waits on the disk in a request. When the database answers again the writer
replays the spill files, then the buffer. At shutdown (SIGTERM → uvicorn's graceful shutdown → `close`) the
buffer is written, or spilled if the database is away; spill files found at start-up are replayed. A row is
lost only if the process is killed outright (SIGKILL, power loss) before its next flush or spill.

Chunks: `kd.serve.chunks`; spill files: `kd.serve.spill`; SQL: `kd.serve.inserts`. Rows a database refuses for
their content go to `rejected-<pid>.jsonl` beside the spill files.
"""

from __future__ import annotations

import fcntl
import itertools
import json
import logging
import os
import threading
import time
from collections import deque
from pathlib import Path

import orjson
import sqlalchemy as sa

from kd.serve import log as logdb
from kd.serve.inserts import Inserter
from kd.serve.spill import Spill, jsonable

log = logging.getLogger("kd.serve")


def _row_error(err: Exception) -> bool:
    """An error about what a row holds (a value the database or the driver refuses), not about reaching the database:
    a DataError or IntegrityError, or a plain StatementError (a value that could not even be sent)."""
    return isinstance(err, (sa.exc.DataError, sa.exc.IntegrityError)) or type(err) is sa.exc.StatementError


def _first_line(err: Exception) -> str:
    text = str(getattr(err, "orig", None) or err).strip()
    return text.splitlines()[0][:300] if text else type(err).__name__


class LogWriter:
    def __init__(self, uri: str, spill_dir: Path, flush_seconds: float = 0.2, batch_rows: int = 2000,
                 buffer_rows: int = 20_000, timeout_seconds: float = 5.0, retry_seconds: float = 2.0):
        self.uri = uri
        self.engine = logdb.engine(uri, timeout_seconds)  # a malformed URL fails here, at start-up
        self.inserter = Inserter(self.engine.dialect.name)
        self.spill = Spill(spill_dir)
        self.flush_seconds, self.batch_rows, self.buffer_rows, self.retry_seconds = flush_seconds, batch_rows, buffer_rows, retry_seconds
        self._buffer: deque = deque()
        self._buffered = 0
        self._count = threading.Lock()
        self._wake, self._stop = threading.Event(), threading.Event()
        self._threads: list[threading.Thread] = []
        self._schema = False
        self._retry_at = 0.0
        self.stats = {"accepted": 0, "written_predictions": 0, "written_feedback": 0, "spilled": 0, "replayed": 0,
                      "spill_pending": self._pending_rows(), "torn": 0, "rejected": 0, "errors": 0, "db_up": 0, "last_error": ""}

    # ------------------------------------------------------------------ the request path
    def add(self, chunk) -> None:
        """Queue one request's rows (a few hundred ns; never touches the database or the disk)."""
        self._buffer.append(chunk)
        with self._count:
            self._buffered += chunk.n
            self.stats["accepted"] += chunk.n

    @property
    def buffered(self) -> int:
        return self._buffered

    # ------------------------------------------------------------------ threads
    def start(self) -> LogWriter:
        """Create the tables now if the database answers (readers find them as soon as the service is up), then
        start the writer and spill threads; an unreachable database is not an error here (rows wait, then spill)."""
        self.flush()
        for name, target in (("kd-log-writer", self._write_loop), ("kd-log-spill", self._spill_loop)):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def _write_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_seconds)
            self._wake.clear()
            if time.monotonic() >= self._retry_at:
                self.flush()

    def _spill_loop(self) -> None:
        while not self._stop.wait(self.flush_seconds / 2):
            if self._buffered > self.buffer_rows:
                self.spill_buffer()

    def close(self) -> dict:
        """Stop the threads, then write what is left, or spill it if the database is away. Returns the stats."""
        self._stop.set()
        self._wake.set()
        for t in self._threads:
            t.join()
        self.flush()
        if self._buffer:
            self.spill_buffer()
        self.spill.rotate()
        self.engine.dispose()
        return dict(self.stats)

    # ------------------------------------------------------------------ work
    def _take(self, limit: int) -> list:
        taken, n = [], 0
        while n < limit:
            try:
                chunk = self._buffer.popleft()
            except IndexError:
                break
            taken.append(chunk)
            n += chunk.n
        with self._count:
            self._buffered -= n
        return taken

    def _give_back(self, chunks: list) -> None:
        self._buffer.extendleft(reversed(chunks))
        with self._count:
            self._buffered += sum(c.n for c in chunks)

    def spill_buffer(self) -> None:
        """Move every buffered row to the spill file (oldest first)."""
        chunks = self._take(1 << 62)
        if not chunks:
            return
        try:
            n = self.spill.append(chunks)
        except (OSError, ValueError, TypeError) as err:  # no disk either: keep them in memory rather than lose them
            self._give_back(chunks)
            log.error("prediction log: spilling to %s failed: %s", self.spill.dir, err)
            return
        with self._count:
            self.stats["spilled"] += n
            self.stats["spill_pending"] += n
        log.warning("prediction log: %d rows spilled to %s (database: %s)", n, self.spill.dir, self.stats["last_error"] or "behind")

    def flush(self) -> bool:
        """Replay spill files, then write the buffer, batch by batch; False (rows kept) if the database fails."""
        chunks: list = []
        try:
            if not self._schema:
                logdb.metadata.create_all(self.engine)
                self._schema = True
            self._replay()
            while True:
                chunks = self._take(self.batch_rows)
                if not chunks:
                    break
                chunks = self._write(chunks)
        except (sa.exc.SQLAlchemyError, OSError) as err:
            if chunks:
                self._give_back(chunks)
            if isinstance(err, sa.exc.ProgrammingError):  # e.g. a table dropped under us: create it again
                self._schema = False
            self._down(err)
            return False
        except Exception:  # not the database: a chunk kd cannot turn into rows (a bug). Find it, keep the writer alive
            log.exception("prediction log: a batch of %d rows could not be prepared for the database", sum(c.n for c in chunks))
            return self._isolate(chunks)
        self.stats["db_up"] = 1
        return True

    def _isolate(self, chunks: list) -> bool:
        """Write the chunks one by one; one that fails for itself is set aside in rejected-*.jsonl with the reason."""
        for i, chunk in enumerate(chunks):
            try:
                self._write([chunk])
            except (sa.exc.SQLAlchemyError, OSError) as err:
                self._give_back(chunks[i:])
                self._down(err)
                return False
            except Exception as err:
                self._reject(chunk.table, (repr(chunk)[:100_000],), err)
        return True

    def _write(self, chunks: list) -> list:
        """Write the chunks table by table; returns [] (all written), or raises with `chunks` narrowed to those not written."""
        tables: dict[str, list] = {}
        for chunk in chunks:
            tables.setdefault(chunk.table, []).append(chunk)
        left = list(chunks)
        for table, group in tables.items():
            try:
                if table == "predictions" and self.inserter.bulk_ok:
                    self._insert_bulk(group)
                else:
                    self._insert_rows(table, [r for c in group for r in c.params(self.inserter.time)])
            except Exception:
                chunks[:] = left  # the caller gives back only what was not written
                raise
            left = [c for c in left if c.table != table]
        return []

    def _insert_bulk(self, group: list) -> None:
        """Prediction chunks in one transaction, one bulk statement per kind of row (see `kd.serve.inserts`); if the
        database refuses one for its content, the chunks go row by row instead, so the culprit is found and set aside."""
        kinds: dict[tuple, list] = {}
        for chunk in group:
            kinds.setdefault(chunk.bulk_key(), []).append(chunk)
        try:
            with self.engine.begin() as conn:
                for (head, names), chunks in kinds.items():
                    rows = itertools.chain.from_iterable(c.bulk_rows(self.inserter.bulk_time(c.time)) for c in chunks)
                    self.inserter.bulk(conn, head, names, orjson.dumps(list(rows), option=orjson.OPT_SERIALIZE_NUMPY).decode())
        except sa.exc.StatementError as err:
            if not _row_error(err):
                raise
            self._insert_rows("predictions", [r for c in group for r in c.params(self.inserter.time)])
            return
        self.stats["written_predictions"] += sum(c.n for c in group)

    def _insert_rows(self, table: str, rows: list[tuple]) -> None:
        """Insert rows of one table. A row the database refuses for what it holds (not for being unreachable) is set
        aside in a `rejected-*.jsonl` file with the reason, so one bad row never blocks the rows behind it."""
        refused = 0
        try:
            self._insert({table: rows})
        except sa.exc.StatementError as err:
            if not _row_error(err):
                raise
            for row in rows:  # find the culprit(s); the others are written one by one
                try:
                    self._insert({table: [row]})
                except sa.exc.StatementError as row_err:
                    if not _row_error(row_err):
                        raise
                    self._reject(table, row, row_err)
                    refused += 1
        self.stats[f"written_{table}"] += len(rows) - refused

    def _reject(self, table: str, row: tuple, err: Exception) -> None:
        self.spill.dir.mkdir(parents=True, exist_ok=True)
        record = {"table": table, "row": dict(zip(logdb.COLUMNS[table], row)) if len(row) > 1 else row[0], "error": _first_line(err)}
        with open(self.spill.dir / f"rejected-{os.getpid()}.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record, default=jsonable) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.stats["rejected"] += 1
        log.error("prediction log: a %s row was refused by the database and set aside in %s: %s", table, f.name, _first_line(err))

    def _insert(self, by_table: dict[str, list[tuple]]) -> None:
        with self.engine.begin() as conn:
            for table, rows in by_table.items():
                if rows:
                    self.inserter.rows(conn, table, rows)

    def _replay(self) -> None:
        self.spill.rotate()
        for path in self.spill.closed_files():
            try:
                f = open(path, "rb")
            except FileNotFoundError:  # replayed by another process meanwhile
                continue
            with f:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:  # another live process still appends to it
                    continue
                chunks, torn = Spill.read(path)
                for i in range(0, len(chunks), 256):
                    self._write(chunks[i:i + 256])
                n = sum(c.n for c in chunks)
                path.unlink()
            with self._count:
                self.stats["replayed"] += n
                self.stats["torn"] += torn
                self.stats["spill_pending"] = max(0, self.stats["spill_pending"] - n - torn)
            log.info("prediction log: replayed %d spilled rows from %s%s", n, path.name, f" ({torn} torn lines skipped)" if torn else "")

    def _down(self, err: Exception) -> None:
        first = _first_line(err)
        if self.stats["db_up"] or not self.stats["last_error"]:
            log.error("prediction log: database %s unreachable, rows wait in memory (then on disk): %s", logdb.url(self.uri).split("@")[-1], first)
        self.stats.update(db_up=0, last_error=first)
        self.stats["errors"] += 1
        self._retry_at = time.monotonic() + self.retry_seconds

    def _pending_rows(self) -> int:
        return sum(Spill.rows_in(path) for path in self.spill.closed_files())
