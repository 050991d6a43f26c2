"""The pipeline's stages on a large synthetic source: wall time, rows/s and peak RSS of each stage, bytes on
disk, 1 vs 2 processes for soft-target generation and a distillation epoch, and the cache's read rate
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
        "data": {"source": "synthetic", "synthetic": {"n_samples": rows, "n_features": 64, "n_classes": 10, "class_sep": 1.0}},
        "teacher": {"model": {"arch": "mlp", "width": 128, "depth": 2}, "train": {"epochs": 1, "batch_size": 1024}},
        "soft_targets": {"shard_size": 65536, "batch_size": 8192},
        "student": {"model": {"arch": "mlp", "width": 32, "depth": 1}, "train": {"epochs": 1, "batch_size": 1024}},
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params))


def timed(root: Path, *args: str) -> dict:
    """One `kd` process: wall seconds and peak RSS. The kernel passes a reaped child's peak up to its parent,
    so for a 2-process stage %M is the largest of torchrun and its ranks."""
    cmd = ["/usr/bin/time", "-f", "%e %M", "kd", *args, "--root", str(root)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=os.environ | {"OMP_NUM_THREADS": "1"})
    if out.returncode != 0:
        raise RuntimeError(f"{args}: {out.stderr[-3000:]}")
    wall, rss_kb = out.stderr.strip().splitlines()[-1].split()
    return {"seconds": float(wall), "peak_rss_mb": int(rss_kb) / 1024, "result": json.loads(out.stdout.strip().splitlines()[-1])}


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
    rows = []
    with tempfile.TemporaryDirectory(prefix="kd-scale-") as tmp:
        root = Path(tmp)
        project(root, a.rows)
        stages = {}
        for stage in ("config", "validate", "train_teacher", "soft_targets", "distill", "evaluate"):
            stages[stage] = timed(root, "stage", stage)
            print(stage, stages[stage]["seconds"], "s", flush=True)
        prepared = json.loads((root / "data/prepared/meta.json").read_text())["sizes"]
        n_distill = prepared["train"] + prepared.get("transfer", 0)
        two = {}
        for stage in ("soft_targets", "distill"):
            shutil.rmtree(root / ("cache/soft_targets" if stage == "soft_targets" else "models/distilled"))
            two[stage] = timed(root, "stage", stage, "--nproc", "2")
            print(stage, "x2", two[stage]["seconds"], "s", flush=True)
        disk = {"prepared": du(root / "data/prepared"), "cache": du(root / "cache/soft_targets"), "teacher": du(root / "models/teacher")}
        rate = cold_read_rate(root / "cache/soft_targets")
    per_rows = {"validate": a.rows, "soft_targets": n_distill, "distill": n_distill}
    for name, s in stages.items():
        rows.append([name, f"{s['seconds']:.1f}", f"{per_rows[name] / s['seconds']:,.0f}" if name in per_rows else "",
                     f"{s['peak_rss_mb']:,.0f}"])
    for name, s in two.items():
        rows.append([f"{name}, 2 processes", f"{s['seconds']:.1f}", f"{per_rows[name] / s['seconds']:,.0f}", f"{s['peak_rss_mb']:,.0f}"])
    print(md_table(["stage", "wall s", "rows/s", "peak RSS MB"], rows))
    print(f"on disk: prepared {disk['prepared'] / 2**20:,.0f} MiB, cache {disk['cache'] / 2**20:,.0f} MiB; "
          f"cold cache reads {rate:,.0f} samples/s")
    write_json(f"scale_{a.rows}", {"rows": a.rows, "stages": stages, "two_processes": two, "disk_bytes": disk,
                                   "cold_read_samples_per_s": rate, "distill_rows": n_distill}, a.quick)


if __name__ == "__main__":
    main()
