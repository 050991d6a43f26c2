"""Small helpers shared by the benchmark scripts: markdown tables, JSON results, a thread setting."""

from __future__ import annotations

import argparse
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


def bench_args(doc: str, add=None) -> argparse.Namespace:
    """The arguments every benchmark takes (--quick, --threads; `add` adds its own), with torch's threads set."""
    import torch

    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test (seconds)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: stable timings on a shared 2-core box)")
    if add:
        add(ap)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    return args
