"""Spill files of the prediction log: append-only JSON lines, fsync'd after every append, so rows the database
cannot take yet survive a crash of the process (all but a torn last line, which replay skips and counts).

A line is one chunk as the request left it (`kd.serve.chunks`: a request's columns, or feedback rows), so
spilling costs one orjson call per request, not work per row — spilling happens when the writer is behind, and
must not slow it further. One file per process at a time, `spill-<pid>-<ns>-<n>.jsonl`, flock'd while it is
appended to: several processes can share a spill directory, and each replays only closed files.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import os
import threading
import time
from pathlib import Path

import numpy as np
import orjson

from kd.serve.chunks import from_record


class Spill:
    """Append-only JSON-lines files, fsync'd after every append; the open one is flock'd by its process."""

    def __init__(self, directory: Path):
        self.dir = Path(directory)
        self._file = None
        self._seq = 0
        self.lock = threading.Lock()

    def append(self, chunks: list) -> int:
        """Append the chunks (one line each), fsync; returns the rows written."""
        if not chunks:
            return 0
        data = b"".join(c.record() + b"\n" for c in chunks)
        with self.lock:
            if self._file is None:
                self.dir.mkdir(parents=True, exist_ok=True)
                self._seq += 1
                path = self.dir / f"spill-{os.getpid()}-{time.time_ns()}-{self._seq}.jsonl"
                self._file = open(path, "ab")
                fcntl.flock(self._file, fcntl.LOCK_EX)
                _fsync_dir(self.dir)
            self._file.write(data)
            self._file.flush()
            os.fsync(self._file.fileno())
        return sum(c.n for c in chunks)

    def rotate(self) -> None:
        """Close the file being appended to, so it can be replayed."""
        with self.lock:
            if self._file is not None:
                self._file.close()  # releases the flock
                self._file = None

    def closed_files(self) -> list[Path]:
        return sorted(self.dir.glob("spill-*.jsonl")) if self.dir.is_dir() else []

    @staticmethod
    def read(path: Path) -> tuple[list, int]:
        """The chunks of a spill file, and the count of torn lines (a write cut off by a crash)."""
        chunks, torn = [], 0
        with open(path, "rb") as f:
            for line in f:
                try:
                    chunks.append(from_record(orjson.loads(line)))
                except (ValueError, KeyError, TypeError):
                    torn += 1
        return chunks, torn

    @staticmethod
    def rows_in(path: Path) -> int:
        chunks, torn = Spill.read(path)
        return sum(c.n for c in chunks) + torn


def jsonable(v):
    if isinstance(v, dt.datetime):
        return v.isoformat()
    if isinstance(v, np.generic):
        return v.item()
    raise TypeError(f"cannot log a {type(v).__name__}")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
