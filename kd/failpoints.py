"""Named crash points for the fault tests: with `KD_CRASH_AT=<name>` in its environment, a process SIGKILLs
itself when it reaches that point — a real kill at an exact place (between two registry writes, after
a cache shard, after a training epoch), which timing a kill from outside cannot hit reliably.
Unset (always, outside the tests), a crash point does nothing."""

from __future__ import annotations

import os
import signal


def crash_point(name: str) -> None:
    if os.environ.get("KD_CRASH_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
