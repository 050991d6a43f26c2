"""Where a training step's time goes: hard-label vs cached-target epochs, per phase, before vs after a change.

The set-up is benchmarks/cache.py's (18k synthetic training rows, 64 features, 10 classes, a cache of the
3-member ensemble's fp16 log-probabilities; loss `kd` at the defaults T = 4, alpha = 0.9; AdamW; 1 thread).
For each student it trains hard-label epochs (`training.fit` on `hard_label_batches`, cross-entropy) and
cached epochs (`distill.distill_one` on the cache), first plainly (epoch time: the ratio the issue is about),
then instrumented with clocks around each phase of the real loop:

  batch      the batch function: row indexing of inputs and labels, cache reads (cached), torch wrapping
  forward    the student's forward pass (`kd.models._Net.forward`)
  loss       the loss on the logits (cross-entropy, or `losses.Combined`: kd's KL + CE)
  backward   `Tensor.backward` (the loss's and the student's autograd graph)
  optimizer  `AdamW.step` (global optimizer hooks)
  rest       the epoch minus the above: the loop, zero_grad, the LR schedule, the epoch's order, validation

Every clock is the thread's CPU time (`time.thread_time`; torch runs on this one thread), epoch times too: on a
machine shared with other jobs, wall time measures the scheduler as much as the work (both are recorded; the
ratio the issue asks about is reported in CPU time and in wall time). Clocks cost about a microsecond each, so
the instrumented phases add up to a little more than a plain step.
With `--before DIR` (a checkout of another kd version, e.g. `git archive <commit> kd | tar -x -C DIR`) it
runs the same measurement on that code in alternating subprocesses, side by side with the working tree's.

Run: python benchmarks/step_profile.py [--quick] [--before DIR --before-label COMMIT]
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

HERE = Path(__file__).resolve().parent
CLOCK = time.thread_time  # CPU time of this (the only compute) thread: what a phase costs, not how long it waited for a core
PHASES = ("batch", "forward", "loss", "backward", "optimizer")


def worker(quick: bool, threads: int) -> dict:
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    sys.path.insert(0, str(HERE))
    import cache  # benchmarks/cache.py: the same set-up and students

    import kd
    import kd.distill
    import kd.losses
    import kd.models
    from kd.config import ModelSpec
    from kd.training import cross_entropy_loss, fit, hard_label_batches

    n, epochs = (2000, 3) if quick else (20000, 5)
    tmp = Path(tempfile.mkdtemp(prefix="kd-step-profile-"))
    base, prep, teacher, targets = cache.setup(n, epochs, tmp)
    out = {"students": []}
    for (arch, width, depth), batch in cache.STUDENTS:
        p = base.model_copy(deep=True)
        p.student.model = ModelSpec(arch=arch, width=width, depth=depth)
        p.student.train.batch_size = batch
        steps = -(-len(prep.y["train"]) // batch)
        res = {"student": f"{arch} {width}x{depth}, batch {batch}", "steps_per_epoch": steps}
        for regime in ("hard-label", "cached"):
            acc = {k: 0.0 for k in PHASES}
            stamps: list[float] = []
            cpu: list[float] = []
            marks: list[dict] = []

            def clock(_e, stamps=stamps, cpu=cpu, marks=marks, acc=acc):
                stamps.append(time.perf_counter())
                cpu.append(CLOCK())
                marks.append(dict(acc))

            def run(instrument: bool, regime=regime, p=p, clock=clock, acc=acc, stamps=stamps, cpu=cpu, marks=marks):
                stamps.clear(), cpu.clear(), marks.clear()
                for k in acc:
                    acc[k] = 0.0
                patches = []
                if instrument:
                    patches = _instrument(acc, kd, torch)
                stamps.append(time.perf_counter()), cpu.append(CLOCK()), marks.append(dict(acc))
                try:
                    if regime == "hard-label":
                        torch.manual_seed(p.seed)
                        student = kd.models.build(p.student.model, prep.input_shape, prep.n_classes)
                        fit(student, len(prep.y["train"]), _timed_batch(hard_label_batches(prep.x["train"], prep.y["train"]), acc, instrument),
                            _timed_ce(cross_entropy_loss, acc) if instrument else cross_entropy_loss,
                            (prep.x["val"], prep.y["val"]), p.student.train, p.seed, on_epoch_end=clock)
                    else:
                        real_fit, real_cb = kd.distill.fit, kd.distill.cached_batches
                        with mock.patch.object(kd.distill, "fit", lambda *a, **kw: real_fit(*a, on_epoch_end=clock, **kw)), \
                                mock.patch.object(kd.distill, "cached_batches", lambda *a, **kw: _timed_batch(real_cb(*a, **kw), acc, instrument)):
                            kd.distill.distill_one(prep, p.student.model, teacher, targets, p, p.seed, None)
                finally:
                    for pt in patches:
                        pt.stop()
                # drop the first epoch (warm-up)
                ep, ep_cpu = np.diff(stamps)[1:], np.diff(cpu)[1:]
                ph = {k: np.diff([m[k] for m in marks])[1:] for k in PHASES}
                return list(ep), list(ep_cpu), {k: list(v) for k, v in ph.items()}

            plain, plain_cpu, _ = run(False)
            _, inst_cpu, phases = run(True)
            res[regime] = {"epoch_seconds": plain, "epoch_cpu_seconds": plain_cpu, "instrumented_epoch_cpu_seconds": inst_cpu,
                           "phase_cpu_seconds": phases}
        out["students"].append(res)
    return out


def _timed_batch(fn, acc, on):
    if not on:
        return fn

    def batch(idx, epoch):
        t0 = CLOCK()
        b = fn(idx, epoch)
        acc["batch"] += CLOCK() - t0
        return b
    return batch


def _timed_ce(fn, acc):
    def loss(model, batch):
        f0, t0 = acc["forward"], CLOCK()
        out = fn(model, batch)
        acc["loss"] += CLOCK() - t0 - (acc["forward"] - f0)
        return out
    return loss


def _instrument(acc, kd, torch) -> list:
    """Clocks on the student's forward, the distillation loss, backward and the optimiser step."""
    real_fwd, real_comb, real_bwd = kd.models._Net.forward, kd.losses.Combined.forward, torch.Tensor.backward

    def fwd(self, x):
        t0 = CLOCK()
        y = real_fwd(self, x)
        acc["forward"] += CLOCK() - t0
        return y

    def comb(self, ctx):
        t0 = CLOCK()
        y = real_comb(self, ctx)
        acc["loss"] += CLOCK() - t0
        return y

    def bwd(self, *a, **kw):
        t0 = CLOCK()
        y = real_bwd(self, *a, **kw)
        acc["backward"] += CLOCK() - t0
        return y

    t_opt = [0.0]
    from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

    h1 = register_optimizer_step_pre_hook(lambda *a: t_opt.__setitem__(0, CLOCK()))
    h2 = register_optimizer_step_post_hook(lambda *a: acc.__setitem__("optimizer", acc["optimizer"] + CLOCK() - t_opt[0]))

    class Handles:
        def stop(self):
            h1.remove(), h2.remove()

    patches = [mock.patch.object(kd.models._Net, "forward", fwd), mock.patch.object(kd.losses.Combined, "forward", comb),
               mock.patch.object(torch.Tensor, "backward", bwd)]
    for pt in patches:
        pt.start()
    return patches + [Handles()]


def summarise(runs: list[dict]) -> list[dict]:
    """Medians over every timed epoch of every run, per student, regime and phase (CPU microseconds per step)."""
    rows = []
    for i, s in enumerate(runs[0]["students"]):
        steps = s["steps_per_epoch"]
        row = {"student": s["student"], "steps_per_epoch": steps}
        for regime in ("hard-label", "cached"):
            def pool(key, regime=regime):
                return [e for r in runs for e in r["students"][i][regime][key]]
            ph = {k: statistics.median([v for r in runs for v in r["students"][i][regime]["phase_cpu_seconds"][k]]) for k in PHASES}
            inst = statistics.median(pool("instrumented_epoch_cpu_seconds"))
            row[regime] = {"epoch_wall_seconds_median": statistics.median(pool("epoch_seconds")),
                           "epoch_cpu_seconds_median": statistics.median(pool("epoch_cpu_seconds")),
                           "us_per_step": {k: v / steps * 1e6 for k, v in ph.items()} | {"rest": (inst - sum(ph.values())) / steps * 1e6,
                                                                                          "instrumented_step": inst / steps * 1e6}}
        for kind in ("cpu", "wall"):
            key = f"epoch_{kind}_seconds_median"
            row[f"cached_over_hard_{kind}"] = row["cached"][key] / row["hard-label"][key]
        rows.append(row)
    return rows


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--before", type=Path, help="a directory holding another version's kd/ package, measured side by side")
    ap.add_argument("--before-label", default="before")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(worker(a.quick, a.threads)))
        return
    sys.path.insert(0, str(HERE))
    from _common import md_table, write_json

    load_start = os.getloadavg()
    codes = {"after": HERE.parent} | ({a.before_label: a.before.resolve()} if a.before else {})
    runs: dict[str, list[dict]] = {c: [] for c in codes}
    cmd = [sys.executable, __file__, "--worker", "--threads", str(a.threads)] + (["--quick"] if a.quick else [])
    for r in range(1 if a.quick else a.rounds):  # alternating, so background load hits both versions alike
        for label, root in codes.items():
            env = os.environ | {"PYTHONPATH": str(root), "OMP_NUM_THREADS": str(a.threads)}
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            runs[label].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"round {r + 1} {label} done", file=sys.stderr, flush=True)
    summary = {label: summarise(v) for label, v in runs.items()}
    table = []
    for label, rows in summary.items():
        for row in rows:
            for regime in ("hard-label", "cached"):
                us = row[regime]["us_per_step"]
                table.append([label, row["student"], regime, f"{row[regime]['epoch_cpu_seconds_median']:.3f}",
                              *(f"{us[k]:.0f}" for k in (*PHASES, "rest")), f"{us['instrumented_step']:.0f}",
                              f"{row['cached_over_hard_cpu']:.2f}" if regime == "cached" else "",
                              f"{row['cached_over_hard_wall']:.2f}" if regime == "cached" else ""])
    print(md_table(["code", "student", "regime", "epoch CPU s", *(f"{k} µs" for k in PHASES), "rest µs", "step µs (instrumented)",
                    "cached ÷ hard (CPU)", "cached ÷ hard (wall)"], table))
    argv = ["DIR" if a.before and Path(x).resolve() == a.before.resolve() else x for x in sys.argv[1:]]  # no machine path
    out = write_json("step_profile", {"command": "python benchmarks/step_profile.py " + " ".join(argv),
                                      "loadavg_start_end": [load_start, os.getloadavg()], "threads": a.threads, "rounds": a.rounds,
                                      "before": a.before_label if a.before else None, "summary": summary, "runs": runs}, a.quick)
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
