"""What a loss costs per training step: kd alone vs kd+dist (cached targets) vs kd+crd (teacher online).

One student (mlp 32x1) on a 20k-sample synthetic set (64 features, 10 classes; 18k distillation rows) at
batch 64 and 256, one torch thread. Each regime goes through the library's own path: `distill.distill_one`
builds the student, the loss (`losses.build`), the batch function (`cached_batches` or `online_batches` with
the forward hooks) and the `loss_fn` it hands to `fit`; `kd.distill.fit` is replaced only by a loop that runs
the same step as `training.fit` (batch, loss, zero_grad, backward, AdamW step) for a fixed number of steps and
times each one, split into the batch function ("batch fn": for online regimes the teacher's forward pass) and
the rest (student forward, loss, backward, optimiser step).

Regimes: kd (cache), kd+dist (cache), kd (online: the teacher's cost without a feature loss), kd+crd (online,
the defaults: K = 16384 negatives, 128-d embeddings, a bank row per distillation sample) and kd+crd with
K = 1024, so CRD's own cost is kd+crd minus kd (online). The teacher is an untrained mlp 256x2 (its cost,
not its accuracy, matters). Regimes are interleaved over rounds; each run's first steps are dropped as
warm-up and the median of the rest is reported.

Run: python benchmarks/loss_cost.py [--quick]   (full: under 7 minutes on 2 cores)
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
from kd.config import ModelSpec, parse_params
from kd.soft_targets import SoftTargets, build, cache_key
from kd.teacher import Teacher, predict_logp
from kd.training import FitResult, make_optimizer

TEACHER = {"arch": "mlp", "width": 256, "depth": 2}
# name, losses, online, extra distill params
REGIMES = [
    ("kd (cache)", {"kd": 1.0}, False, {}),
    ("kd+dist (cache)", {"kd": 1.0, "dist": 1.0}, False, {}),
    ("kd (online)", {"kd": 1.0}, True, {}),
    ("kd+crd (online, K=16384)", {"kd": 1.0, "crd": 0.8}, True, {}),
    ("kd+crd (online, K=1024)", {"kd": 1.0, "crd": 0.8}, True, {"crd_nce_k": 1024}),
]
BATCHES = (64, 256)


def setup(n: int, tmp: Path):
    p = parse_params({
        "data": {"source": "synthetic", "val_fraction": 0.05, "test_fraction": 0.05,
                 "synthetic": {"n_samples": n, "n_features": 64, "n_classes": 10}},
        "student": {"model": {"arch": "mlp", "width": 32, "depth": 1}},
    })
    prep = data.prepare(data.split(sources.load_source(p.data), p.data, p.seed), p.data)
    prep.meta["data_hash"] = data.save(prep, tmp / "prepared")
    torch.manual_seed(0)
    teacher = Teacher([models.build(ModelSpec(**TEACHER), prep.input_shape, prep.n_classes)]).eval()
    key = cache_key(models.state_hash([m.state_dict() for m in teacher.members]), prep.meta["data_hash"], p.soft_targets, p.seed)
    build(tmp / "cache", key, prep.distill_inputs(), lambda xb: predict_logp(teacher, xb), prep.n_classes, p.soft_targets, p.seed)
    return p, prep, teacher, SoftTargets(tmp / "cache", expected_key=key)


def step_times(p, prep, teacher, targets, steps: int, warmup: int) -> tuple[list[float], list[float]]:
    """Run `steps` training steps of the regime configured in `p` through `distill_one`; return (step seconds,
    batch-function seconds) per step, without the first `warmup` steps."""
    steps_s, fetch_s = [], []

    def timed_fit(model, n_rows, batch_fn, loss_fn, val, tp, seed, ckpt=None, extra_modules=None, **_kw):
        extra = torch.nn.ModuleList(extra_modules or [])
        opt = make_optimizer(list(model.parameters()) + list(extra.parameters()), tp)
        model.train(), extra.train()
        order = np.random.default_rng([seed, 0]).permutation(n_rows)
        for s in range(steps):
            i = (s * tp.batch_size) % (n_rows - tp.batch_size)
            t0 = time.perf_counter()
            batch = batch_fn(order[i : i + tp.batch_size], 0)
            t1 = time.perf_counter()
            loss, _ = loss_fn(model, batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            t2 = time.perf_counter()
            steps_s.append(t2 - t0)
            fetch_s.append(t1 - t0)
        return FitResult(0, 0, 0.0)

    with mock.patch.object(kd.distill, "fit", timed_fit):
        kd.distill.distill_one(prep, p.student.model, teacher, targets, p, p.seed, None)
    return steps_s[warmup:], fetch_s[warmup:]


def main() -> None:
    args = bench_args(__doc__)
    n, steps, warmup, rounds = (2000, 12, 2, 2) if args.quick else (20000, 110, 10, 4)
    results, rows = [], []
    with tempfile.TemporaryDirectory(prefix="kd-bench-loss-") as d:
        base, prep, teacher, targets = setup(n, Path(d))
        n_rows = len(prep.distill_labels())
        for batch in BATCHES:
            times: dict[str, list[float]] = {r[0]: [] for r in REGIMES}
            fetch: dict[str, list[float]] = {r[0]: [] for r in REGIMES}
            for _ in range(rounds):  # interleaved, so background load hits every regime alike
                for name, loss_weights, online, extra in REGIMES:
                    p = base.model_copy(deep=True)
                    p.student.train.batch_size = batch
                    p.distill.losses = loss_weights
                    for k, v in extra.items():
                        setattr(p.distill, k, v)
                    t, f = step_times(p, prep, teacher, None if online else targets, steps, warmup)
                    times[name] += t
                    fetch[name] += f
            med = {r: statistics.median(v) for r, v in times.items()}
            fmed = {r: statistics.median(v) for r, v in fetch.items()}
            rest = {r: statistics.median(np.subtract(times[r], fetch[r])) for r in times}
            base_name = "kd (cache)"
            results.append({"batch": batch, "step_ms_median": {r: v * 1e3 for r, v in med.items()},
                            "batch_fn_ms_median": {r: v * 1e3 for r, v in fmed.items()},
                            "rest_ms_median": {r: v * 1e3 for r, v in rest.items()},
                            "over_kd_cache": {r: med[r] / med[base_name] for r in med},
                            "steps_per_cell": len(times[base_name])})
            rows += [[batch, r, f"{med[r] * 1e3:.2f}", f"{fmed[r] * 1e3:.2f}", f"{rest[r] * 1e3:.2f}", f"{med[r] / med[base_name]:.2f}"]
                     for r in med]

    k_default = min(base.distill.crd_nce_k, n_rows - 1)
    print(f"## Time per training step: mlp 32x1 student, {n_rows} distillation rows, torch threads {args.threads}, "
          f"median of {rounds * (steps - warmup)} steps per cell ({rounds} interleaved rounds x {steps - warmup} timed steps)\n")
    print(md_table(["batch", "regime", "step ms (median)", "batch fn ms", "rest ms", "x kd (cache)"], rows))
    print(f"\nCRD's own cost is kd+crd minus kd (online); its default K here is min(16384, N - 1) = {k_default}.")
    out = write_json("loss_cost", {
        "setup": {"rows": n_rows, "steps_per_run": steps, "warmup_steps": warmup, "rounds": rounds, "threads": args.threads,
                  "student": "mlp 32x1", "teacher": TEACHER, "regimes": [{"name": r[0], "losses": r[1], "online": r[2], **r[3]} for r in REGIMES],
                  "crd_k_default": k_default},
        "results": results,
    }, args.quick)
    print(f"\nwrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
