"""Does distillation beat training the student alone? Teacher / scratch / distilled students, per loss.

For each configuration and seed: split the data by the seed, train the teacher once (`train_teacher`),
cache its soft targets once (`soft_targets.build`), train the scratch baseline (`distill.train_scratch`, as
`distill.distill` does: same student architecture, hard labels, the student's number of steps) and one distilled student per loss (`distill.distill_one`, from the
cache, or with the teacher online for the feature losses rkd / pkt, which hook the first member's
`features`). Reported: test accuracy and ECE (`evaluate.classification`, 15 bins), mean +- std over seeds,
and the paired accuracy difference to the scratch student of the same seed.

Configurations:
  digits-default  the embedded default (params.yaml): sklearn digits, teacher cnn2d 32x2 (25 epochs),
                  student mlp 32x1 (40 epochs).
  digits-tiny     a tiny student (mlp 8x1) and a 3-member ensemble teacher (cnn2d 32x2, resnet 32x2,
                  mlp 128x2) on digits. Digits is nearly solved and the teacher is almost one-hot on its
                  training rows, so there is little for soft targets to add; hence
  synthetic-hard  where a teacher can carry information the labels do not: 10 overlapping Gaussian
                  classes in 16 features (class_sep 1.5), 30% label noise, 1000 labelled training rows and
                  a 10k-row unlabeled transfer set that only the distilled students see (Hinton's transfer
                  set); ensemble teacher of 3 mlp 128x2, tiny student mlp 8x1; a 1125-row test set.
                  "kd T=4, labelled rows only" distils without the transfer set, to separate its effect
                  from that of the soft targets.
Seeds 0-4 everywhere (the split, the initialisation and the batch order change with the seed).
Losses: kd (T=4 and T=1, alpha 0.9), ce+dkd (alpha 1, beta 8, T=4), ce+rkd and ce+pkt (teacher online).

Run: python benchmarks/kd_quality.py [--quick]   (full: about 10 minutes on 2 cores, 1 torch thread)
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import md_table, write_json

from kd import data, sources
from kd.config import parse_params
from kd.distill import distill_one, train_scratch
from kd.evaluate import batched, classification, torch_predict
from kd.losses import FEATURE_LOSSES
from kd.soft_targets import SoftTargets, build, cache_key
from kd.teacher import load_teacher, predict_logp, train_teacher

# name -> (losses, temperature, distil on the labelled rows only)
VARIANTS = {
    "kd T=4": ({"kd": 1.0}, 4.0, False),
    "kd T=1": ({"kd": 1.0}, 1.0, False),
    "ce+dkd": ({"ce": 1.0, "dkd": 1.0}, 4.0, False),
    "ce+rkd (online)": ({"ce": 1.0, "rkd": 1.0}, 4.0, False),
    "ce+pkt (online)": ({"ce": 1.0, "pkt": 1.0}, 4.0, False),
}
LABELLED_ONLY = {"kd T=4, labelled rows only": ({"kd": 1.0}, 4.0, True)}


def configs(quick: bool) -> dict[str, tuple[list[int], callable, dict]]:
    """name -> (seeds, seed -> raw params, extra variants)."""
    te, se = (2, 2) if quick else (25, 40)
    tiny = {"model": {"arch": "mlp", "width": 8, "depth": 1}, "train": {"epochs": se}}

    def default(s):
        return {"seed": s, "teacher": {"model": {"arch": "cnn2d", "width": 32, "depth": 2}, "train": {"epochs": te}},
                "student": {"model": {"arch": "mlp", "width": 32, "depth": 1}, "train": {"epochs": se}}}

    def digits_tiny(s):
        members = [{"arch": "cnn2d", "width": 32, "depth": 2}, {"arch": "resnet", "width": 32, "depth": 2},
                   {"arch": "mlp", "width": 128, "depth": 2}]
        return {"seed": s, "student": tiny, "teacher": {"mode": "ensemble", "train": {"epochs": te},
                                                        "members": [m | {"seed": 10 * s + i} for i, m in enumerate(members)]}}

    def synthetic_hard(s):
        syn = {"n_samples": 2500, "n_features": 16, "n_classes": 10, "class_sep": 1.5, "label_noise": 0.3,
               "n_transfer": 500 if quick else 10000}
        split = {"val_fraction": 0.15, "test_fraction": 0.45}  # 1000 labelled training rows, a 1125-row test set
        return {"seed": s, "data": {"source": "synthetic", "synthetic": syn, **split}, "student": tiny,
                "teacher": {"mode": "ensemble", "train": {"epochs": te},
                            "members": [{"arch": "mlp", "width": 128, "depth": 2, "seed": 10 * s + i} for i in range(3)]}}

    seeds = [0] if quick else [0, 1, 2, 3, 4]
    return {"digits-default": (seeds, default, {}), "digits-tiny": (seeds, digits_tiny, {}),
            "synthetic-hard": (seeds, synthetic_hard, LABELLED_ONLY)}


def test_metrics(model: torch.nn.Module, prep: data.Prepared, bins: int) -> dict:
    return classification(batched(torch_predict(model), prep.x["test"]), prep.y["test"], bins)


def run_seed(raw_params: dict, seed: int, variants: dict) -> tuple[dict[str, dict], int]:
    """Teacher, scratch and every variant for one seed; returns (model name -> test metrics, test rows)."""
    p = parse_params(raw_params)
    prep = data.prepare(data.split(sources.load_source(p.data), p.data, seed), p.data)
    bins = p.evaluate.ece_bins
    with tempfile.TemporaryDirectory(prefix="kd-bench-quality-") as d:
        tmp = Path(d)
        prep.meta["data_hash"] = data.save(prep, tmp / "prepared")
        train_teacher(prep, p, tmp / "teacher")
        teacher, tsum = load_teacher(tmp / "teacher")
        key = cache_key(tsum["teacher_hash"], prep.meta["data_hash"], p.soft_targets, seed)
        build(tmp / "cache", key, prep.distill_inputs(), lambda xb: predict_logp(teacher, xb), prep.n_classes, p.soft_targets, seed)
        targets = SoftTargets(tmp / "cache", expected_key=key)
        out = {"teacher": test_metrics(teacher, prep, bins)}

        scratch, _ = train_scratch(prep, p, seed)  # as distill.distill trains it: the student's steps, transfer rows included
        out["scratch"] = test_metrics(scratch, prep, bins)

        for name, (losses, temperature, labelled_only) in variants.items():
            q = p.model_copy(deep=True)
            q.distill.losses, q.distill.temperature = losses, temperature
            online = any(n in FEATURE_LOSSES for n in losses)
            # Training rows come first in the cache, so the labelled-only run reads the same targets.
            qprep = dataclasses.replace(prep, x_transfer=None) if labelled_only else prep
            student, _ = distill_one(qprep, q.student.model, teacher, None if online else targets, q, seed, None, teacher.feature_model)
            out[name] = test_metrics(student, prep, bins)
    return out, len(prep.y["test"])


def summarise(per_seed: list[dict[str, dict]]) -> list[dict]:
    rows = []
    scratch = np.array([r["scratch"]["accuracy"] for r in per_seed])
    for name in per_seed[0]:
        acc = np.array([r[name]["accuracy"] for r in per_seed])
        ece = np.array([r[name]["ece"] for r in per_seed])
        diff = acc - scratch
        rows.append({"model": name, "acc_mean": acc.mean(), "acc_std": acc.std(ddof=1) if len(acc) > 1 else 0.0,
                     "ece_mean": ece.mean(), "ece_std": ece.std(ddof=1) if len(ece) > 1 else 0.0,
                     "delta_mean": diff.mean(), "delta_std": diff.std(ddof=1) if len(diff) > 1 else 0.0,
                     "seeds_above_scratch": int((diff > 0).sum()), "seeds_below_scratch": int((diff < 0).sum())})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 seed, 2 epochs, small transfer set: a smoke test")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--only", nargs="*", help="run only these configurations")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    results, start = {}, time.perf_counter()
    for name, (seeds, make, extra) in configs(args.quick).items():
        if args.only and name not in args.only:
            continue
        t0 = time.perf_counter()
        runs = [run_seed(make(s), s, VARIANTS | extra) for s in seeds]
        per_seed, n_test = [r[0] for r in runs], runs[0][1]
        rows = summarise(per_seed)
        results[name] = {"seeds": seeds, "params": make(seeds[0]), "per_seed": per_seed, "summary": rows,
                         "seconds": time.perf_counter() - t0}
        print(f"## {name}: {len(seeds)} seed(s) {seeds}, {n_test} test rows, {results[name]['seconds'] / 60:.1f} min\n")
        print(md_table(
            ["model", "test accuracy", "vs scratch (paired)", "seeds above / below scratch", "ECE"],
            [[r["model"], f"{r['acc_mean']:.4f} ± {r['acc_std']:.4f}",
              "—" if r["model"] == "scratch" else f"{r['delta_mean']:+.4f} ± {r['delta_std']:.4f}",
              "—" if r["model"] == "scratch" else f"{r['seeds_above_scratch']} / {r['seeds_below_scratch']}",
              f"{r['ece_mean']:.4f} ± {r['ece_std']:.4f}"] for r in rows]) + "\n", flush=True)
    out = write_json("kd_quality", {"configs": results, "total_seconds": time.perf_counter() - start,
                                    "threads": args.threads}, args.quick)
    print(f"total {(time.perf_counter() - start) / 60:.1f} min; wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
