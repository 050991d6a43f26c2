"""The soft-target cache at scale: 1M samples x 100 classes (fp16, all classes).

1. Inputs: 1M x 32 float32 random features written in chunks to an np.memmap on disk, so they are never
   all in RAM (128 MB on disk).
2. Build: `kd.soft_targets.build` in a fresh subprocess, with a fixed random linear map + log-softmax as
   the teacher (numpy only; the teacher's cost is not the point). Reported: wall time (including the
   sha256 of every file for the manifest), the time `build` itself reports (compute + write), bytes on
   disk per file kind, and the builder's peak RSS.
3. Read: a second fresh subprocess opens the cache with `SoftTargets` (verify=True: checksums every
   file) and reads random batches of 256 rows through `SoftTargets.logp` (about one epoch's worth of
   rows per repeat; median samples/s over repeats; the page cache is warm, the files were just written).
   Its peak RSS (`resource.getrusage(RUSAGE_SELF).ru_maxrss`) is compared with the cache size on disk.
   Peak RSS counts the memory-mapped cache pages the process touched (file-backed, shared with the page
   cache and reclaimable), so the private (anonymous) part, RssAnon, is reported next to it. Last, the
   same random batches go through `distill.cached_batches` (the training read path: inputs + targets).

Everything lives in a temporary directory under /tmp, removed at the end.
Run: python benchmarks/cache_scale.py [--quick]   (full: about 20 seconds; needs ~0.4 GB free in /tmp)
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import md_table, write_json

N_FEATURES, N_CLASSES, BATCH = 32, 100, 256
W = np.random.default_rng(42).normal(0, 0.5, (N_FEATURES, N_CLASSES)).astype(np.float32)  # the "teacher"


def proc_status() -> dict[str, float]:
    """Current RssAnon / RssFile and peak VmHWM of this process, in MiB (Linux /proc)."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("RssAnon", "RssFile", "VmHWM", "VmRSS"):
            out[key] = int(value.split()[0]) / 1024
    return out


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def make_inputs(path: Path, n: int, chunk: int = 65536) -> np.memmap:
    x = np.memmap(path, np.float32, "w+", shape=(n, N_FEATURES))
    rng = np.random.default_rng(0)
    for lo in range(0, n, chunk):
        x[lo : lo + chunk] = rng.standard_normal((min(chunk, n - lo), N_FEATURES), np.float32)
    x.flush()
    return x


def teacher_fn(xb: np.ndarray) -> np.ndarray:
    """A fixed random linear map over the features, then log-softmax: (B, 32) -> (B, 100) log-probs."""
    z = xb @ W
    z -= z.max(1, keepdims=True)
    return z - np.log(np.exp(z).sum(1, keepdims=True))


def stage_build(x_path: Path, n: int, root: Path) -> dict:
    from kd.config import SoftTargetParams
    from kd.soft_targets import build

    base = proc_status()["VmRSS"]
    x = np.memmap(x_path, np.float32, "r", shape=(n, N_FEATURES))
    sp = SoftTargetParams(dtype="float16")
    t0 = time.perf_counter()
    res = build(root, "scale", x, teacher_fn, N_CLASSES, sp, seed=0)
    return {"wall_seconds": time.perf_counter() - t0, "build_seconds": res["seconds"], "shard_size": sp.shard_size,
            "batch_size": sp.batch_size, "rss_after_imports_mib": base, "peak_rss_mib": peak_rss_mib(), **proc_status()}


def stage_read(root: Path, x_path: Path, batches: int, repeats: int) -> dict:
    from kd.soft_targets import SoftTargets  # numpy only; torch comes in later, with kd.distill

    base = proc_status()
    t0 = time.perf_counter()
    st = SoftTargets(root)  # verify=True: sha256 of every file against the manifest
    open_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    rates, anon = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(batches):
            out = st.logp(rng.integers(0, st.n, BATCH))
        rates.append(batches * BATCH / (time.perf_counter() - t0))
        anon.append(proc_status()["RssAnon"])
    assert out.shape == (BATCH, N_CLASSES) and out.dtype == np.float32
    res = {"open_verify_seconds": open_s, "samples_per_s": rates, "rows_read_per_repeat": batches * BATCH,
           "after_imports": base, "peak_rss_mib": peak_rss_mib(), "max_rss_anon_mib": max(anon), "end": proc_status()}
    # The training read path (inputs from the memmap + targets), after the RSS figures above were taken.
    from kd.distill import cached_batches

    x = np.memmap(x_path, np.float32, "r", shape=(st.n, N_FEATURES))
    fetch = cached_batches(x, np.zeros(st.n, np.int64), st, 0.0, 0)
    t0 = time.perf_counter()
    for _ in range(batches):
        fetch(rng.integers(0, st.n, BATCH), 0)
    return res | {"cached_batches_samples_per_s": batches * BATCH / (time.perf_counter() - t0)}


def run_stage(*args: str) -> dict:
    """Run a stage of this script in a fresh interpreter; its last stdout line is the JSON result."""
    out = subprocess.run([sys.executable, __file__, "--stage", *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="50k samples instead of 1M, for a smoke test")
    ap.add_argument("--stage", nargs="+", help=argparse.SUPPRESS)  # internal: build X N ROOT | read ROOT X BATCHES REPEATS
    args = ap.parse_args()
    if args.stage:
        kind, *rest = args.stage
        res = stage_build(Path(rest[0]), int(rest[1]), Path(rest[2])) if kind == "build" else stage_read(Path(rest[0]), Path(rest[1]), int(rest[2]), int(rest[3]))
        print(json.dumps(res))
        return

    n, repeats = (50_000, 2) if args.quick else (1_000_000, 3)
    batches = n // BATCH  # one epoch's worth of rows per repeat
    tmp = Path(tempfile.mkdtemp(prefix="kd-cache-scale-", dir="/tmp"))
    try:
        t0 = time.perf_counter()
        make_inputs(tmp / "x.f32", n)
        gen_s = time.perf_counter() - t0
        root = tmp / "cache"
        b = run_stage("build", str(tmp / "x.f32"), str(n), str(root))
        manifest = json.loads((root / "manifest.json").read_text())
        sizes = manifest["sizes"]
        on_disk = sum(p.stat().st_size for p in root.iterdir())
        targets = sum(v for f, v in sizes.items() if f.startswith("shard-"))
        r = run_stage("read", str(root), str(tmp / "x.f32"), str(batches), str(repeats))
    finally:
        shutil.rmtree(tmp)

    mib = 2**20
    rate = statistics.median(r["samples_per_s"])
    print(f"## Soft-target cache at scale: {n:,} samples x {N_CLASSES} classes, fp16, all classes, "
          f"{manifest['n_shards']} shards of {b['shard_size']:,} rows\n")
    print(md_table(["quantity", "value"], [
        ["inputs (memmap, generated in chunks)", f"{n * N_FEATURES * 4 / mib:.0f} MiB in {gen_s:.1f} s"],
        ["build wall time (incl. manifest sha256)", f"{b['wall_seconds']:.1f} s ({n / b['wall_seconds']:,.0f} samples/s)"],
        ["`build`'s own timer (shards + manifest)", f"{b['build_seconds']:.1f} s"],
        ["cache on disk (all files)", f"{on_disk / mib:.1f} MiB ({on_disk / n:.1f} B/sample)"],
        ["  of which targets (shard-*.logp.npy)", f"{targets / mib:.1f} MiB ({targets / n:.1f} B/sample)"],
        ["builder peak RSS (fresh process)", f"{b['peak_rss_mib']:.0f} MiB (after imports {b['rss_after_imports_mib']:.0f} MiB)"],
        ["reader: open with verify=True", f"{r['open_verify_seconds']:.2f} s"],
        [f"reader: random batches of {BATCH} via SoftTargets.logp", (f"{rate:,.0f} samples/s (median of {repeats} x {batches * BATCH:,} rows; "
                                                                   f"min {min(r['samples_per_s']):,.0f})")],
        ["reader: same through distill.cached_batches (inputs + targets)", f"{r['cached_batches_samples_per_s']:,.0f} samples/s (1 x {batches * BATCH:,} rows)"],
        ["reader peak RSS (ru_maxrss, fresh process)", f"{r['peak_rss_mib']:.0f} MiB = {r['peak_rss_mib'] * mib / on_disk:.0%} of the cache on disk"],
        ["reader RssAnon (private): after imports / max after each repeat", f"{r['after_imports']['RssAnon']:.0f} / {r['max_rss_anon_mib']:.0f} MiB"],
        ["reader RssFile (mapped files): after imports / at end", f"{r['after_imports']['RssFile']:.0f} / {r['end']['RssFile']:.0f} MiB"],
    ]))
    out = write_json("cache_scale", {"n": n, "n_classes": N_CLASSES, "inputs_generate_seconds": gen_s, "build": b,
                                     "bytes_on_disk": on_disk, "bytes_targets": targets, "bytes_views": sizes.get("views.npz", 0),
                                     "read": r, "read_samples_per_s_median": rate}, args.quick)
    print(f"\nwrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
