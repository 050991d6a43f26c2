"""The pipeline's stages on a large synthetic source: wall time, rows/s and peak RSS of each stage (config to
checks, then the DVC commit `kd run`'s repro makes and the publication into the embedded MLflow registry),
bytes on disk, 1 vs 2 processes for soft-target generation and a distillation epoch, and the cache's read rate
with its files dropped from the page cache first (cold reads).

    python benchmarks/scale.py --rows 1000000          # 64 features, 10 classes
    python benchmarks/scale.py --rows 20000 --quick    # a smoke test

Each stage is its own `kd stage` process, as DVC runs it, timed by /usr/bin/time (wall seconds and the
process's maximum resident set; a 2-process stage reports its largest rank). The teacher and the student
are small MLPs trained for one epoch: this measures the data path, not model quality.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import md_table, write_json  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def project(root: Path, rows: int) -> None:
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    shutil.copytree(REPO / "kd", root / "kd", ignore=shutil.ignore_patterns("__pycache__"))
    params = {
        "data": {"source": "synthetic", "sensitive_columns": ["group"],  # the checks stage then gates fairness too
                 "synthetic": {"n_samples": rows, "n_features": 64, "n_classes": 10, "class_sep": 1.0}},
        "teacher": {"model": {"arch": "mlp", "width": 128, "depth": 2}, "train": {"epochs": 1, "batch_size": 1024}},
        "soft_targets": {"shard_size": 65536, "batch_size": 8192},
        "student": {"model": {"arch": "mlp", "width": 32, "depth": 1}, "train": {"epochs": 1, "batch_size": 1024}},
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params))


def timed(root: Path, *args: str) -> dict:
    """One `kd` process: wall seconds and peak RSS. The kernel passes a reaped child's peak up to its parent,
    so for a 2-process stage %M is the largest of torchrun and its ranks."""
    return timed_cmd(["kd", *args, "--root", str(root)])


def timed_cmd(argv: list[str], cwd: Path | None = None, json_out: bool = True) -> dict:
    """Any process under /usr/bin/time: wall seconds, peak RSS, the machine's load average when it started."""
    load = os.getloadavg()
    out = subprocess.run(["/usr/bin/time", "-f", "%e %M", *argv], capture_output=True, text=True, cwd=cwd,
                         env=os.environ | {"OMP_NUM_THREADS": "1"} | QUIET)
    if out.returncode != 0:
        raise RuntimeError(f"{argv}: {out.stdout[-2000:]}{out.stderr[-3000:]}")
    wall, rss_kb = out.stderr.strip().splitlines()[-1].split()
    result = json.loads(out.stdout.strip().splitlines()[-1]) if json_out else None
    return {"seconds": float(wall), "peak_rss_mb": int(rss_kb) / 1024, "loadavg_at_start": load, "result": result}


QUIET = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1", "DVC_NO_ANALYTICS": "1", "GX_ANALYTICS_ENABLED": "false"}
PUBLISH = """import json, sys
from pathlib import Path
from kd.config import load_params
from kd.publish import publish
from kd.stages import STAGES
root = Path(sys.argv[1])
r = publish(root, load_params(root / "params.yaml"), [{"stage": s, "ran": True, "seconds": 0.0} for s in STAGES], "benchmark")
print(json.dumps({k: r[k] for k in ("version", "promoted", "blocked")} | {"registry": r["tracking_uri"].split(":")[0]}))
"""


def publish_steps(root: Path) -> dict:
    """What `kd run` adds after the stages: DVC records the outputs (dvc.lock; hard links into its cache, no
    copy), then the student is published into the embedded MLflow registry (SQLite + local artifacts)."""
    for argv in (["dvc", "init", "-q", "--no-scm"], ["dvc", "config", "core.analytics", "false"],
                 ["dvc", "config", "cache.type", "hardlink,symlink"]):
        subprocess.run(argv, cwd=root, check=True, capture_output=True, env=os.environ | QUIET)
    steps = {"dvc_commit": timed_cmd(["dvc", "commit", "-f", "-q"], cwd=root, json_out=False)}
    print("dvc commit", steps["dvc_commit"]["seconds"], "s", flush=True)
    steps["publish"] = timed_cmd([sys.executable, "-c", PUBLISH, str(root)], cwd=root)
    print("publish", steps["publish"]["seconds"], "s", flush=True)
    return steps


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def cold_read_rate(cache: Path, batch: int = 1024, pattern: str = "training") -> float:
    """Samples/s reading the cache right after its shards were dropped from the page cache (posix_fadvise
    DONTNEED after fsync), one epoch's worth of rows. `pattern="training"` reads as distillation does: the
    epoch order of `kd.training.fit` (`kd.blocks.epoch_order`: block-shuffled beyond 65,536 rows) in batches
    of `batch`, through the reader `kd.distill.cached_batches` uses (`SoftTargets.reader()`: whole blocks,
    contiguous reads). `pattern="random"` is the former measure: sorted uniform random rows through
    `SoftTargets.logp`, one 4 KiB page fault per row when cold."""
    from kd.blocks import epoch_order
    from kd.soft_targets import SoftTargets

    for f in cache.glob("shard-*.npy"):
        fd = os.open(f, os.O_RDONLY)
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
    st = SoftTargets(cache, verify=False)
    n = st.n
    t0 = time.perf_counter()
    if pattern == "training":
        reader, order = st.reader(), epoch_order(n, 0, 0)
        for i in range(0, n, batch):
            reader.logp(order[i : i + batch])
        rows = n
    else:
        rng = np.random.default_rng(0)
        batches = 400
        for _ in range(batches):
            st.logp(np.sort(rng.integers(0, n, batch)), 0)
        rows = batches * batch
    return rows / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    rows, load = [], os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="kd-scale-") as tmp:
        root = Path(tmp)
        project(root, a.rows)
        stages = {}
        for stage in ("config", "validate", "train_teacher", "soft_targets", "distill", "evaluate", "checks"):
            stages[stage] = timed(root, "stage", stage)
            print(stage, stages[stage]["seconds"], "s", flush=True)
        stages |= publish_steps(root)
        prepared = json.loads((root / "data/prepared/meta.json").read_text())["sizes"]
        n_distill = prepared["train"] + prepared.get("transfer", 0)
        two = {}
        for stage in ("soft_targets", "distill"):
            shutil.rmtree(root / ("cache/soft_targets" if stage == "soft_targets" else "models/distilled"))
            two[stage] = timed(root, "stage", stage, "--nproc", "2")
            print(stage, "x2", two[stage]["seconds"], "s", flush=True)
        disk = {"prepared": du(root / "data/prepared"), "cache": du(root / "cache/soft_targets"), "teacher": du(root / "models/teacher")}
        rate = cold_read_rate(root / "cache/soft_targets")
    per_rows = {"validate": a.rows, "soft_targets": n_distill, "distill": n_distill, "evaluate": prepared["test"], "checks": prepared["test"]}
    for name, s in stages.items():
        rows.append([name, f"{s['seconds']:.1f}", f"{per_rows[name] / s['seconds']:,.0f}" if name in per_rows else "",
                     f"{s['peak_rss_mb']:,.0f}"])
    for name, s in two.items():
        rows.append([f"{name}, 2 processes", f"{s['seconds']:.1f}", f"{per_rows[name] / s['seconds']:,.0f}", f"{s['peak_rss_mb']:,.0f}"])
    print(md_table(["stage", "wall s", "rows/s", "peak RSS MB"], rows))
    print(f"on disk: prepared {disk['prepared'] / 2**20:,.0f} MiB, cache {disk['cache'] / 2**20:,.0f} MiB; "
          f"cold cache reads {rate:,.0f} samples/s")
    total = sum(s["seconds"] for s in stages.values())
    print(f"config to publish: {total / 60:.1f} min; load average at the start {load[0]:.2f}, at the end {os.getloadavg()[0]:.2f}")
    write_json(f"scale_{a.rows}", {"rows": a.rows, "command": "python benchmarks/scale.py " + " ".join(sys.argv[1:]),
                                   "loadavg_start": load, "loadavg_end": os.getloadavg(), "config_to_publish_seconds": total,
                                   "note": "shared 2-core machine: other jobs ran alongside (load averages recorded)",
                                   "stages": stages, "two_processes": two, "disk_bytes": disk,
                                   "cold_read_samples_per_s": rate, "distill_rows": n_distill}, a.quick)


if __name__ == "__main__":
    main()
