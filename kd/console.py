"""How `kd run` talks to a person: one line per stage on the console, everything else (Prefect's and DVC's
logs, the stages' own output, tracebacks) in a log file; and one project lock, so two runs in one
project take turns instead of colliding in DVC's lock or the registry."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path


@contextlib.contextmanager
def project_lock(root: Path, on_wait: Callable[[str], None]) -> Iterator[None]:
    """Hold `<root>/.kd.lock` (an advisory flock, released by the OS even if the process is killed);
    if another process holds it, say so once and wait for it."""
    path = Path(root) / ".kd.lock"
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            on_wait(f"another kd run holds this project ({holder}); waiting for it to finish")
            fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}")
        f.flush()
        try:
            yield
        finally:
            f.seek(0)
            f.truncate()
            fcntl.flock(f, fcntl.LOCK_UN)


class _Progress(logging.Handler):
    """Prints the flow's 'stage ...' lines (and nothing else) to the real console."""

    def __init__(self, write: Callable[[str], None]):
        super().__init__(logging.INFO)
        self.write = write

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if msg.startswith("kd: "):
            self.write(msg[4:])


@contextlib.contextmanager
def quiet(log_file: Path | None) -> Iterator[Callable[[str], None]]:
    """Send this process's stdout/stderr — and so every child's, DVC's stages included — to `log_file`,
    and yield a function that writes to the real console. With None, nothing is redirected (--debug)."""
    if log_file is None:
        yield lambda line: print(line, flush=True)
        return
    log_file.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved_out, saved_err = os.dup(1), os.dup(2)
    console = os.fdopen(os.dup(saved_out), "w", buffering=1)
    handler = _Progress(lambda line: console.write(line + "\n"))
    loggers = [logging.getLogger(name) for name in ("prefect.flow_runs", "prefect.task_runs")]
    with open(log_file, "ab", buffering=0) as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        for logger in loggers:
            logger.addHandler(handler)
        try:
            yield lambda line: console.write(line + "\n")
        finally:
            for logger in loggers:
                logger.removeHandler(handler)
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved_out, 1)
            os.dup2(saved_err, 2)
            os.close(saved_out)
            os.close(saved_err)
            console.close()
