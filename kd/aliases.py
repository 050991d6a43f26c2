"""Who is `@champion`, who was before, and how it got there: promotion and rollback as one atomic move.

The registered model carries the champion history as tags: `kd.champions` (the stack of versions that
held `@champion`, oldest first; the top holds it, the one below holds `@previous`) and one
`kd.history.<seq>` event per move (when, who, why, from which version to which). MLflow cannot set two
aliases in one request, so a move is written ahead: the intended stack and event go to `kd.pending`
first, then the aliases, the stack and the event are applied and `kd.pending` is removed. A move cut
off halfway (a killed process, a server gone) is finished by the next registry operation (`recover`),
so readers only ever see the state before or after a move, never a champion without its `@previous`.

`promote v` pushes v; `rollback` pops the top, so rolling back twice walks two champions back.
"""

from __future__ import annotations

import datetime as dt
import json

from kd.failpoints import crash_point
from kd.registry import Registry, RegistryError

CHAMPION, PREVIOUS = "champion", "previous"
STACK, PENDING, HISTORY = "kd.champions", "kd.pending", "kd.history."
KEEP = 200  # stack entries kept (tag values are bounded)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def stack(reg: Registry) -> list[str]:
    """Versions that held @champion, oldest first (the history kd keeps; @champion is the last)."""
    tags = reg.model_tags()
    if STACK in tags:
        return [v for v in tags[STACK].split(",") if v]
    aliases = reg.aliases()  # a registry from before kd kept the stack: start it from the aliases
    return [v for v in (aliases.get(PREVIOUS), aliases.get(CHAMPION)) if v]


def history(reg: Registry) -> list[dict]:
    tags = reg.model_tags()
    return [json.loads(tags[k]) for k in sorted(k for k in tags if k.startswith(HISTORY))]


def recover(reg: Registry) -> dict | None:
    """Finish a move that was written ahead but not applied (idempotent); returns it, or None."""
    pending = reg.model_tags().get(PENDING)
    if pending is None:
        return None
    move = json.loads(pending)
    _apply(reg, move)
    return move


def _apply(reg: Registry, move: dict) -> None:
    new = move["stack"]
    reg.set_alias(PREVIOUS, new[-2] if len(new) >= 2 else None)
    crash_point("aliases:previous-moved")
    reg.set_alias(CHAMPION, new[-1] if new else None)
    reg.set_model_tag(STACK, ",".join(new[-KEEP:]))
    reg.set_model_tag(f"{HISTORY}{move['event']['seq']:06d}", json.dumps(move["event"]))
    event = move["event"]
    tags = {"promoted_at": event["at"], "promoted_by": event["by"], "promotion_reason": event["reason"]} if new else {}
    if new:
        reg.set_version_tags(new[-1], tags)
    if event["action"] == "rollback" and event.get("from"):
        reg.set_version_tags(event["from"], {"rolled_back_at": event["at"], "rollback_reason": event["reason"]})
    reg.delete_model_tag(PENDING)


def _move(reg: Registry, new: list[str], action: str, reason: str, by: str, old: list[str]) -> dict:
    seq = 1 + max((int(k[len(HISTORY):]) for k in reg.model_tags() if k.startswith(HISTORY)), default=0)
    event = {"seq": seq, "at": _now(), "action": action, "by": by, "reason": reason,
             "from": old[-1] if old else None, "to": new[-1] if new else None}
    move = {"stack": new, "event": event}
    reg.set_model_tag(PENDING, json.dumps(move))  # the intent: from here on the move will complete
    crash_point("aliases:written-ahead")
    _apply(reg, move)
    return {"champion": new[-1] if new else None, "previous": new[-2] if len(new) >= 2 else None}


def promote(reg: Registry, version: str, reason: str, by: str) -> dict:
    """Give `version` @champion; the former champion becomes @previous."""
    recover(reg)
    version = str(version)
    if reg.version(version) is None:
        raise RegistryError(f"model {reg.name!r} has no version {version!r}; see 'kd status'")
    old = stack(reg)
    if old and old[-1] == version:
        raise RegistryError(f"version {version} is already @{CHAMPION}")
    return _move(reg, old + [version], "promote", reason, by, old)


def rollback(reg: Registry, reason: str, by: str = "kd rollback") -> dict:
    """Give @champion back to @previous; the one before that becomes @previous (twice walks two back)."""
    recover(reg)
    old = stack(reg)
    if len(old) < 2:
        raise RegistryError(f"model {reg.name!r} has no @{PREVIOUS} version to roll back to")
    moved = _move(reg, old[:-1], "rollback", reason, by, old)
    return moved | {"demoted": old[-1]}


def ensure_champion(reg: Registry, version: str, reason: str, by: str) -> bool:
    """Promote `version` unless it already holds @champion (publication re-entered after a crash)."""
    recover(reg)
    current = stack(reg)
    if current and current[-1] == str(version):
        return False
    promote(reg, version, reason, by)
    return True
