"""Incremental retraining: wall time of `kd run` on the embedded default, in one fresh project, for
(1) the first run, (2) a rerun with nothing changed, (3) a rerun after changing only student params,
(4) a rerun after changing the data. Prints which stages ran and each time as a ratio of the first.

    python benchmarks/incremental.py            # the repository's params.yaml (digits)
    python benchmarks/incremental.py --quick    # 2-epoch teacher/student, for a smoke test

Each `kd run` is a separate process, as a user would run it: Prefect's temporary API, DVC, MLflow on
SQLite in the project. The project is a temp dir holding a copy of dvc.yaml, params.yaml and kd/.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import kd_run  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def make_project(root: Path, quick: bool) -> None:
    for name in ("dvc.yaml", "params.yaml", "prefect.yaml"):
        shutil.copy(REPO / name, root / name)
    shutil.copytree(REPO / "kd", root / "kd", ignore=shutil.ignore_patterns("__pycache__"))
    if quick:
        edit(root, lambda p: (p["teacher"]["train"].update(epochs=2), p["student"]["train"].update(epochs=2)))
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["dvc", "config", "core.analytics", "false"]):
        subprocess.run(cmd, cwd=root, check=True)


def edit(root: Path, change) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text())
    change(params)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="kd-incremental-") as tmp:
        root = Path(tmp)
        make_project(root, args.quick)
        cases = [("first run", None), ("nothing changed", None),
                 ("student params changed", lambda p: p["student"]["train"].update(epochs=p["student"]["train"]["epochs"] + 1)),
                 ("data changed", lambda p: p["data"].update(test_fraction=round(p["data"]["test_fraction"] + 0.01, 2)))]
        rows = []
        for name, change in cases:
            if change:
                edit(root, change)
            seconds, stages = kd_run(root)
            rows.append({"case": name, "seconds": round(seconds, 1), "ran": [s for s, (status, _) in stages.items() if status == "ran"]})
            if name == "first run":
                metrics = json.loads((root / "reports/evaluate/metrics.json").read_text())
    first = rows[0]["seconds"]
    print("| case | wall time (s) | vs first run | stages that ran |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {r['seconds']:.1f} | {r['seconds'] / first:.1%} | {', '.join(r['ran']) or 'none'} |")
    print("\nFirst run, test split:\n")
    print("| model | accuracy | macro-F1 | ECE | params | bytes | p50 ms | p95 ms | throughput/s (batch 256) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for m in ("teacher", "scratch", "student", "student_onnx", "student_onnx_int8"):
        r = metrics[m]
        print(f"| {m} | {r['accuracy']:.4f} | {r['macro_f1']:.4f} | {r['ece']:.4f} | {r['params']:,} | {r['size_bytes']:,} | "
              f"{r['latency_ms_p50']:.3f} | {r['latency_ms_p95']:.3f} | {r['throughput_per_s']:,.0f} |")
    out = REPO / "benchmarks" / "results"
    out.mkdir(exist_ok=True)
    (out / ("incremental_quick.json" if args.quick else "incremental.json")).write_text(json.dumps({"runs": rows, "metrics": metrics}, indent=2))


if __name__ == "__main__":
    main()
