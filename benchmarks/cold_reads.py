"""Cold reads of a large soft-target cache: samples/s right after its files were dropped from the page cache.

Builds a synthetic cache with the real `kd.soft_targets.build` (N rows x 10 classes, fp16, the default shards of
65,536 rows; the "teacher" is a fixed random linear map of 8 features + log-softmax, numpy only), then measures
`benchmarks/scale.py`'s `cold_read_rate` in both patterns, interleaved over repeats (median reported):
  - training: one epoch as distillation reads it (the block-shuffled epoch order, batches of 1,024, the
    `SoftTargets.reader()` that `kd.distill.cached_batches` uses);
  - random: the former measure (400 batches of 1,024 uniform random rows through `SoftTargets.logp`).
Not the whole 10M-row pipeline (benchmarks/scale.py runs that): only the cache, so the read path is isolated.

    python benchmarks/cold_reads.py [--rows 10000000] [--repeats 3] [--quick]
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import bench_args, md_table, write_json  # noqa: E402
from scale import cold_read_rate  # noqa: E402

N_FEATURES, N_CLASSES = 8, 10


def build_cache(root: Path, n: int) -> dict:
    from kd.config import SoftTargetParams
    from kd.soft_targets import build

    w = np.random.default_rng(0).normal(0, 1.0, (N_FEATURES, N_CLASSES)).astype(np.float32)
    x = np.random.default_rng(1).standard_normal((n, N_FEATURES), np.float32)

    def teacher(xb):
        z = xb @ w
        z -= z.max(1, keepdims=True)
        return z - np.log(np.exp(z).sum(1, keepdims=True))

    t0 = time.perf_counter()
    build(root, "cold", x, teacher, N_CLASSES, SoftTargetParams(dtype="float16", batch_size=65536), 0)
    return {"seconds": time.perf_counter() - t0, "bytes": sum(f.stat().st_size for f in root.iterdir())}


def main() -> None:
    args = bench_args(__doc__, lambda ap: (ap.add_argument("--rows", type=int, default=10_000_000), ap.add_argument("--repeats", type=int, default=3)))
    n = 200_000 if args.quick else args.rows
    load_start = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="kd-cold-reads-"))
    try:
        built = build_cache(tmp / "cache", n)
        print(f"built {n:,} rows in {built['seconds']:.1f} s ({built['bytes'] / 2**20:.0f} MiB)", file=sys.stderr, flush=True)
        rates: dict[str, list[float]] = {"training": [], "random": []}
        for _ in range(1 if args.quick else args.repeats):
            for pattern in rates:
                rates[pattern].append(cold_read_rate(tmp / "cache", pattern=pattern))
                print(pattern, f"{rates[pattern][-1]:,.0f} samples/s", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(tmp)
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(md_table(["read pattern", "cold samples/s (median)", "each repeat"],
                   [[k, f"{med[k]:,.0f}", " ".join(f"{v:,.0f}" for v in rates[k])] for k in rates]))
    write_json("cold_reads", {"command": "python benchmarks/cold_reads.py " + " ".join(sys.argv[1:]),
                              "loadavg_start_end": [load_start, os.getloadavg()], "rows": n, "classes": N_CLASSES, "dtype": "float16",
                              "build": built, "samples_per_s": rates, "samples_per_s_median": med}, args.quick)


if __name__ == "__main__":
    main()
