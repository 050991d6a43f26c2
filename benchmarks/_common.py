"""Small helpers shared by the benchmark scripts: markdown tables, JSON results, a thread setting, `kd run`."""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
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
            "written": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "command": " ".join(["python", f"benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]]),
            "loadavg_at_write": list(os.getloadavg())}
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


def kd_run(root: Path, env: dict | None = None) -> tuple[float, dict[str, tuple[str, float]]]:
    """`kd run --root ROOT --no-push` as a user runs it; returns its wall seconds and, from the console's
    "Stages:" line, each stage's status (ran / skipped / ...) and seconds. Exits with the run's output on failure."""
    t0 = time.perf_counter()
    out = subprocess.run(["kd", "run", "--root", str(root), "--no-push"], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        sys.exit(f"kd run failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    stages = {}
    for line in out.stdout.splitlines() + out.stderr.splitlines():
        if "Stages:" in line:
            for part in line.split("Stages:", 1)[1].split("|"):
                m = re.match(r"\s*(\w+): (\w+) \(([\d.]+)s\)", part)
                if m:
                    stages[m.group(1)] = (m.group(2), float(m.group(3)))
    return wall, stages
