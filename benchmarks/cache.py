"""What the soft-target cache buys: distillation epoch time and bytes per sample.

(i) Epoch time of one student on a 20k-sample synthetic set (64 features, 10 classes; 18k training rows)
under three regimes, measured side by side in one process (same student, batch size and AdamW):
  - hard-label: `training.fit` on `hard_label_batches` with cross-entropy (the scratch baseline);
  - cached:     `distill.distill_one` reading `SoftTargets` (fp16, all classes), loss `kd`;
  - online:     `distill.distill_one` running a 3-member ensemble `Teacher` (cnn1d 32x2, mlp 256x2,
                mlp 256x3) on every batch, same loss.
The teacher is untrained (its cost, not its accuracy, is measured). Regimes are interleaved over rounds;
each run's first epoch is dropped as warm-up and the median of the rest is reported. `kd.distill.fit` is
wrapped only to add an `on_epoch_end` clock, and the batch functions (`hard_label_batches`,
`cached_batches`, `online_batches`) only to time them inside the real loop: "batch fn" is the data cost
(for online, the teacher's forward), "rest" the forward, loss, backward and optimiser step. This is repeated for three students: the default
tiny one (mlp 32x1, batch 64), the same at batch 256, and a wider one (mlp 256x2, batch 64), because a
fixed per-step cost weighs most on the smallest step.

(ii) Bytes per sample of the cache as `soft_targets.build` writes it (random linear teacher), for
fp32 / fp16 full rows and fp16 top-5, at 10 and 100 classes: the targets (logp + top-k indices) and the
per-sample view parameters (`views.npz`), stored only when a cache holds more than one view (0 here).

Run: python benchmarks/cache.py [--quick]   (full: about 1 minute on 2 cores)
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from _common import bench_args, md_table, write_json

import kd.distill
from kd import data, models, sources
from kd.config import ModelSpec, SoftTargetParams, parse_params
from kd.soft_targets import SoftTargets, build, cache_key, index_dtype
from kd.teacher import Teacher, predict_logp
from kd.training import cross_entropy_loss, fit, hard_label_batches

MEMBERS = [{"arch": "cnn1d", "width": 32, "depth": 2, "seed": 0}, {"arch": "mlp", "width": 256, "depth": 2, "seed": 1},
           {"arch": "mlp", "width": 256, "depth": 3, "seed": 2}]
# (arch, width, depth), batch size: the default tiny student, the same with bigger batches, a wider student
STUDENTS = [(("mlp", 32, 1), 64), (("mlp", 32, 1), 256), (("mlp", 256, 2), 64)]


def setup(n: int, epochs: int, tmp: Path):
    p = parse_params({
        "data": {"source": "synthetic", "val_fraction": 0.05, "test_fraction": 0.05,
                 "synthetic": {"n_samples": n, "n_features": 64, "n_classes": 10}},
        "teacher": {"mode": "ensemble", "members": MEMBERS},
        "student": {"model": {"arch": "mlp", "width": 32, "depth": 1}, "train": {"epochs": epochs, "batch_size": 64}},
    })
    prep = data.prepare(data.split(sources.load_source(p.data), p.data, p.seed), p.data)
    prep.meta["data_hash"] = data.save(prep, tmp / "prepared")
    torch.manual_seed(0)
    teacher = Teacher([models.build(m, prep.input_shape, prep.n_classes) for m in p.teacher.members]).eval()
    key = cache_key(models.state_hash([m.state_dict() for m in teacher.members]), prep.meta["data_hash"], p.soft_targets, p.seed)
    build(tmp / "cache", key, prep.distill_inputs(), lambda xb: predict_logp(teacher, xb), prep.n_classes, p.soft_targets, p.seed)
    return p, prep, teacher, SoftTargets(tmp / "cache", expected_key=key)


def epoch_times(regime: str, p, prep, teacher, targets) -> tuple[list[float], list[float]]:
    """Train for `p.student.train.epochs` epochs; return (epoch seconds, seconds spent in the batch
    function per epoch), both without the first epoch. The batch function is timed inside the real
    training loop; for the online regime it includes the teacher's forward pass."""
    stamps, fetched, total = [time.perf_counter()], [0.0], [0.0]

    def clock(_epoch):
        stamps.append(time.perf_counter())
        fetched.append(total[0])

    def timed(make):
        def made(*args, **kwargs):
            fn = make(*args, **kwargs)

            def batch(idx, epoch):
                t0 = time.perf_counter()
                out = fn(idx, epoch)
                total[0] += time.perf_counter() - t0
                return out
            return batch
        return made

    if regime == "hard-label":
        torch.manual_seed(p.seed)
        student = models.build(p.student.model, prep.input_shape, prep.n_classes)
        fit(student, len(prep.y["train"]), timed(hard_label_batches)(prep.x["train"], prep.y["train"]), cross_entropy_loss,
            (prep.x["val"], prep.y["val"]), p.student.train, p.seed, on_epoch_end=clock)
    else:
        real_fit = kd.distill.fit
        with mock.patch.object(kd.distill, "fit", lambda *a, **kw: real_fit(*a, on_epoch_end=clock, **kw)), \
                mock.patch.object(kd.distill, "cached_batches", timed(kd.distill.cached_batches)), \
                mock.patch.object(kd.distill, "online_batches", timed(kd.distill.online_batches)):
            kd.distill.distill_one(prep, p.student.model, teacher, targets if regime == "cached" else None, p, p.seed, None)
    return list(np.diff(stamps)[1:]), list(np.diff(fetched)[1:])


def bytes_per_sample(n: int, tmp: Path) -> list[dict]:
    rows = []
    for n_classes in (10, 100):
        w = np.random.default_rng(n_classes).normal(0, 0.5, (32, n_classes)).astype(np.float32)
        x = np.random.default_rng(1).normal(size=(n, 32)).astype(np.float32)
        fn = lambda xb, w=w: torch.from_numpy(xb @ w).log_softmax(1).numpy()
        for dtype, k in (("float32", 0), ("float16", 0), ("float16", 5)):
            root = tmp / f"bytes-{n_classes}-{dtype}-{k}"
            build(root, "k", x, fn, n_classes, SoftTargetParams(dtype=dtype, top_k=k), 0)
            sizes = SoftTargets(root).manifest["sizes"]
            targets = sum(v for f, v in sizes.items() if f.startswith("shard-"))
            rows.append({"classes": n_classes, "format": f"{'fp32' if dtype == 'float32' else 'fp16'} " + (f"top-{k}" if k else "full"),
                         "expected_target_bytes": (k or n_classes) * np.dtype(dtype).itemsize + k * index_dtype(n_classes).itemsize,
                         "target_bytes": targets / n, "views_bytes": sizes.get("views.npz", 0) / n, "total_bytes": sum(sizes.values()) / n})
    return rows


def main() -> None:
    args = bench_args(__doc__)
    n, epochs, rounds = (2000, 3, 2) if args.quick else (20000, 4, 4)
    regimes = ("hard-label", "cached", "online")
    results, rows = [], []
    with tempfile.TemporaryDirectory(prefix="kd-bench-cache-") as d:
        tmp = Path(d)
        base, prep, teacher, targets = setup(n, epochs, tmp)
        for (arch, width, depth), batch in STUDENTS:
            p = base.model_copy(deep=True)
            p.student.model = ModelSpec(arch=arch, width=width, depth=depth)
            p.student.train.batch_size = batch
            times: dict[str, list[float]] = {r: [] for r in regimes}
            fetch: dict[str, list[float]] = {r: [] for r in regimes}
            for _ in range(rounds):  # interleaved, so background load hits every regime alike
                for r in regimes:
                    t, f = epoch_times(r, p, prep, teacher, targets)
                    times[r] += t
                    fetch[r] += f
            med = {r: statistics.median(times[r]) for r in regimes}
            fmed = {r: statistics.median(fetch[r]) for r in regimes}
            rest = {r: statistics.median(np.subtract(times[r], fetch[r])) for r in regimes}  # forward, loss, backward, step
            name = f"{arch} {width}x{depth}, batch {batch}"
            results.append({"student": name, "epoch_seconds": times, "epoch_seconds_median": med,
                            "fetch_seconds_per_epoch_median": fmed,
                            "cached_over_hard": med["cached"] / med["hard-label"], "online_over_cached": med["online"] / med["cached"],
                            "rest_seconds_per_epoch_median": rest,
                            "cache_read_over_hard": (fmed["cached"] - fmed["hard-label"]) / med["hard-label"],
                            "loss_and_step_over_hard": (rest["cached"] - rest["hard-label"]) / med["hard-label"]})
            best = {r: min(times[r]) for r in regimes}  # the least-disturbed epoch: a check on background load
            rows += [[name, r, f"{med[r]:.3f}", f"{best[r]:.3f}", f"{med[r] / med['hard-label']:.2f}", f"{best[r] / best['hard-label']:.2f}",
                      f"{med[r] / med['cached']:.2f}", f"{fmed[r]:.3f}", f"{rest[r]:.3f}"] for r in regimes]
        sizes = bytes_per_sample(1000 if args.quick else 20000, tmp)

    n_rows = len(prep.distill_labels())
    print(f"## Epoch time: {n_rows} rows, torch threads {args.threads}, median of {rounds * (epochs - 1)} epochs per cell "
          f"({rounds} interleaved rounds x {epochs - 1} timed epochs)\n")
    print(md_table(["student", "regime", "epoch s (median)", "epoch s (min)", "x hard-label (medians)", "x hard-label (mins)",
                    "x cached (medians)", "batch fn s/epoch", "rest s/epoch"], rows))
    print("\nWhere cached loses to hard-label, as shares of a hard-label epoch: reading the cache (batch fn, cached - "
          "hard-label) / the KD loss and the rest of the step (rest, cached - hard-label): "
          + "; ".join(f"{r['student']}: {r['cache_read_over_hard']:+.0%} / {r['loss_and_step_over_hard']:+.0%}" for r in results) + "\n")
    print("## Cache bytes per sample (`soft_targets.build`, 1 view)\n")
    print(md_table(["classes", "format", "targets B/sample (expected)", "targets B/sample (on disk)", "views.npz B/sample", "total B/sample"],
                   [[s["classes"], s["format"], s["expected_target_bytes"], f"{s['target_bytes']:.1f}", f"{s['views_bytes']:.1f}",
                     f"{s['total_bytes']:.1f}"] for s in sizes]))
    out = write_json("cache", {
        "setup": {"rows": n_rows, "epochs_per_run": epochs, "rounds": rounds, "threads": args.threads, "members": MEMBERS},
        "epoch_time": results, "bytes_per_sample": sizes,
    }, args.quick)
    print(f"\nwrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
