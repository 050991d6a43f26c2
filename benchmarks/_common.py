"""Small helpers shared by the benchmark scripts: markdown tables, JSON results, a thread setting."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def md_table(headers: list[str], rows: list[list]) -> str:
    """A GitHub-flavoured markdown table; numbers are expected pre-formatted as strings."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def write_json(name: str, payload: dict, quick: bool) -> Path:
    """Write `results/<name>.json` (`<name>.quick.json` for --quick runs, so a smoke test never
    overwrites the figures README quotes)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}{'.quick' if quick else ''}.json"
    meta = {"quick": quick, "python": platform.python_version(), "machine": platform.machine(),
            "written": time.strftime("%Y-%m-%dT%H:%M:%S")}
    path.write_text(json.dumps({"meta": meta, **payload}, indent=2))
    return path
