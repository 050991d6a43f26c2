"""Student distillation, and the honest baseline: the same architecture trained from scratch on hard labels,
compute-matched to the student (same optimiser steps, same augmentation of the labelled rows).

The student learns from cached soft targets (the default) or from the teacher run online (needed for
feature losses). Multi-stage distillation (teacher -> assistants -> student, Mirzadeh et al. 2020) is a
chain of the same step; self-distillation (born-again networks, Furlanello et al. 2018) is
`student.same_as_teacher: true`. Both are configuration, not separate code paths.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from kd import augment, losses, models
from kd.config import ModelSpec, Params
from kd.data import Prepared, Rows
from kd.distributed import Runtime, runtime
from kd.hooks import FeatureTap
from kd.soft_targets import SoftTargets, cache_key
from kd.teacher import load_teacher
from kd.text import PAD_ID
from kd.training import BatchFn, FitResult, checkpoint_path, cross_entropy_loss, fit


class LogProbs(nn.Module):
    """Wraps a trained student so it can teach the next stage (outputs log-probabilities)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x).log_softmax(1)


class EpochViews:
    """Which cached view each sample shows in an epoch: drawn once per epoch, the same for cached and
    online runs, so both train on identical inputs."""

    def __init__(self, seed: int, n: int, n_views: int):
        self.seed, self.n, self.n_views = seed, n, n_views
        self._epoch, self._views = -1, np.zeros(n, np.int64)

    def __call__(self, epoch: int, idx: np.ndarray) -> np.ndarray:
        if self.n_views > 1 and epoch != self._epoch:
            self._epoch, self._views = epoch, np.random.default_rng([self.seed, epoch, 1]).integers(0, self.n_views, self.n)
        return self._views[idx]


def _rows(idx: np.ndarray) -> torch.Tensor:
    """The batch's row indices into the distillation inputs (CRD's memory-bank rows); read-only."""
    return torch.from_numpy(idx) if idx.dtype == np.int64 else torch.tensor(idx, dtype=torch.long)


def _plain(x):
    """A single memory-mapped array as a plain ndarray view (np.memmap's indexing costs microseconds per call)."""
    if isinstance(x, Rows) and len(x.parts) == 1:
        x = x.parts[0]
    return np.asarray(x) if isinstance(x, np.ndarray) else x


def cached_batches(x: np.ndarray, y: np.ndarray, targets: SoftTargets, noise_std: float, seed: int) -> BatchFn:
    """Inputs, labels and cached targets per step: the targets through the block reader (`TargetReader`:
    whole blocks read once, one fancy index per step), the inputs and labels indexed directly."""
    views = EpochViews(seed, len(x), targets.views)
    reader, x, y = targets.reader(), _plain(x), np.asarray(y)

    def batch(idx: np.ndarray, epoch: int) -> dict:
        if targets.views == 1:
            xb, t = x[idx], reader.logp(idx)
        else:
            view = views(epoch, idx)
            xb, t = augment.apply(x, idx, view, targets.view_params, noise_std), reader.logp(idx, view)
        return {"x": torch.from_numpy(xb), "y": torch.from_numpy(y[idx]), "t": torch.from_numpy(t), "idx": _rows(idx)}

    return batch


def online_batches(x: np.ndarray, y: np.ndarray, teacher: nn.Module, tap: FeatureTap | None, layer: str,
                   view_params: dict, n_views: int, noise_std: float, seed: int) -> BatchFn:
    views = EpochViews(seed, len(x), n_views)

    def batch(idx: np.ndarray, epoch: int) -> dict:
        view = views(epoch, idx)
        xb = torch.from_numpy(x[idx] if n_views == 1 else augment.apply(x, idx, view, view_params, noise_std))
        with torch.no_grad():
            t = teacher(xb)
        out = {"x": xb, "y": torch.from_numpy(y[idx]), "t": t, "idx": _rows(idx)}
        if tap is not None:
            out["t_feat"] = tap.features[layer].detach()
        return out

    return batch


def scratch_batches(x: np.ndarray, y: np.ndarray, n_rows: int, view_params: dict, n_views: int, noise_std: float, seed: int) -> BatchFn:
    """Labelled rows for the scratch baseline, stretched over the student's `n_rows` per epoch (its epoch
    also covers the unlabeled transfer rows, so the labelled rows are cycled to give the same number of
    steps) and, with views, augmented as the student's inputs are: the same mixup and noise, with mixup's
    label (the partner's label weighted by 1 - lam)."""
    views, x, y = EpochViews(seed, len(x), n_views), _plain(x), np.asarray(y)

    def batch(idx: np.ndarray, epoch: int) -> dict:
        idx = idx % len(x)
        out = {"y": torch.from_numpy(y[idx])}
        if n_views == 1:
            return out | {"x": torch.from_numpy(x[idx])}
        view = views(epoch, idx)
        partner = view_params["partner"][idx, view]
        return out | {"x": torch.from_numpy(augment.apply(x, idx, view, view_params, noise_std)),
                      "y_mix": torch.from_numpy(y[partner]), "lam": torch.from_numpy(view_params["lam"][idx, view])}

    return batch


def train_scratch(prep: Prepared, p: Params, seed: int, ckpt: Path | None = None, rt: Runtime | None = None) -> tuple[nn.Module, FitResult]:
    """The scratch baseline: the student's architecture on hard labels only, compute-matched to the student.

    Same optimiser, schedule, batch size, epochs and steps per epoch as the distilled student, and the
    same augmentation of its labelled rows when the student sees augmented views (`soft_targets.views`
    > 1). Without a transfer set the views are exactly the student's (same rows, same seed); unlabeled
    rows are never used, they have no label.
    """
    sp = p.soft_targets
    x, y = prep.x["train"], prep.y["train"]
    vp = augment.view_params(len(x), sp.views, sp.augment, p.seed) if sp.views > 1 else {}
    torch.manual_seed(seed)
    model = models.build(p.student_spec(), prep.input_shape, prep.n_classes)
    batches = scratch_batches(x, y, len(prep.distill_inputs()), vp, sp.views, sp.augment.noise_std, seed)
    res = fit(model, len(prep.distill_inputs()), batches, cross_entropy_loss, (prep.x["val"], prep.y["val"]), p.student.train, seed,
              ckpt, desc="scratch", rt=rt)
    return model, res


def distill_batches(prep: Prepared, teacher: nn.Module, targets: SoftTargets | None, p: Params, seed: int,
                    tap: FeatureTap | None = None, layer: str = "features") -> BatchFn:
    """The distillation batches: from the cached soft targets, or from `teacher` run online."""
    x, y = prep.distill_inputs(), prep.distill_labels()
    if targets is not None:
        return cached_batches(x, y, targets, p.soft_targets.augment.noise_std, seed)
    vp = augment.view_params(len(x), p.soft_targets.views, p.soft_targets.augment, p.seed)
    return online_batches(x, y, teacher, tap, layer, vp, p.soft_targets.views, p.soft_targets.augment.noise_std, seed)


def distill_one(prep: Prepared, spec: ModelSpec, teacher: nn.Module, targets: SoftTargets | None, p: Params,
                seed: int, ckpt: Path | None, feature_model: nn.Module | None = None, rt: Runtime | None = None) -> tuple[nn.Module, dict]:
    """Distil one model of `spec` from `teacher` (online) or from `targets` (cached)."""
    d = p.distill
    x = prep.distill_inputs()
    torch.manual_seed(seed)
    student = models.build(spec, prep.input_shape, prep.n_classes)
    feature_model = feature_model or getattr(teacher, "feature_model", teacher)
    if spec.arch == "minilm_layers":  # DistilBERT: start from every other layer of the teacher
        student.init_from_teacher(feature_model)
    s_layer, t_layer = d.hint_layer_student or "features", d.hint_layer_teacher or "features"
    needs_features = any(name in losses.FEATURE_LOSSES for name in d.losses)
    s_tap = t_tap = None
    shapes = None
    if needs_features:
        s_tap, t_tap = FeatureTap(student, [s_layer]), FeatureTap(feature_model, [t_layer])
        with torch.no_grad():
            probe = torch.from_numpy(x[:2])
            student.eval(), student(probe), teacher(probe)
        shapes = tuple(s_tap.features[s_layer].shape[1:]), tuple(t_tap.features[t_layer].shape[1:])
    loss = losses.build(d, shapes, n_rows=len(x))
    batches = distill_batches(prep, teacher, targets, p, seed, t_tap, t_layer)

    def loss_fn(model: nn.Module, batch: dict):
        ctx = {"student_logits": model(batch["x"]), "teacher_logp": batch["t"], "y": batch["y"], "idx": batch["idx"]}
        if s_tap is not None:
            ctx["student_feat"], ctx["teacher_feat"] = s_tap.features[s_layer], batch["t_feat"]
            if not batch["x"].is_floating_point():  # token ids: the real tokens, for per-token feature losses
                ctx["mask"] = batch["x"] != PAD_ID
        return loss(ctx)

    res = fit(student, len(x), batches, loss_fn, (prep.x["val"], prep.y["val"]), p.student.train, seed, ckpt,
              extra_modules=[loss], desc="distill", rt=rt)
    for tap in (s_tap, t_tap):
        if tap is not None:
            tap.remove()
    return student, {"val_accuracy": res.best_val_accuracy, "best_epoch": res.best_epoch, "epochs": res.epochs_run,
                     "resumed_from_epoch": res.resumed_from,
                     "history": res.history, "source": "cache" if targets is not None else "online"}


def distill_qat(prep: Prepared, student: nn.Module, teacher: nn.Module, targets: SoftTargets | None, p: Params, seed: int,
                ckpt: Path | None, rt: Runtime | None = None, on_epoch_end=None) -> tuple[nn.Module, dict]:
    """Quantization-aware distillation (`kd.qat`): fine-tune the distilled `student` with fake int8 quantization
    under the very loss and batches that distilled it (`student.qat`). Returns the fake-quantized student."""
    from kd import qat

    x = prep.distill_inputs()
    loss = losses.build(p.distill, None, n_rows=len(x))

    def loss_fn(model: nn.Module, batch: dict):
        return loss({"student_logits": model(batch["x"]), "teacher_logp": batch["t"], "y": batch["y"], "idx": batch["idx"]})

    model, res = qat.finetune(student, len(x), distill_batches(prep, teacher, targets, p, seed), loss_fn, (prep.x["val"], prep.y["val"]),
                              p.student.train, p.student.qat, seed, ckpt, rt, on_epoch_end)
    return model, {"val_accuracy": res.best_val_accuracy, "best_epoch": res.best_epoch, "epochs": res.epochs_run,
                   "resumed_from_epoch": res.resumed_from, "history": res.history}


def distill(prep: Prepared, teacher_dir: Path, cache_dir: Path, p: Params, out_dir: Path, ckpt_dir: Path | None = None) -> dict:
    """Train the student (through any assistants) and the scratch baseline; write both to `out_dir` (rank 0
    of a distributed run writes; every rank trains)."""
    rt = runtime(p.device, p.distributed.backend, p.amp, p.checkpoint_every)
    teacher, tsum = load_teacher(teacher_dir)
    needs_online = p.distill.teacher_source == "online" or any(n in losses.FEATURE_LOSSES for n in p.distill.losses)
    targets = None
    if not needs_online:
        key = cache_key(tsum["teacher_hash"], prep.meta["data_hash"], p.soft_targets, p.seed)
        targets = SoftTargets(cache_dir, expected_key=key)
    chain = list(p.distill.assistants) + [p.student_spec()]
    determines = {"data": prep.meta.get("data_hash", ""), "teacher": tsum["teacher_hash"], "student": p.student.model_dump(),
                  "distill": p.distill.model_dump(), "soft_targets": p.soft_targets.model_dump(), "seed": p.seed,
                  "teacher_spec": p.teacher.model.model_dump() if p.student.same_as_teacher else None,
                  "precision": str(rt.amp_dtype)}  # amp changes the weights: a resume under another precision starts afresh
    current, feature_model, stages, done = teacher, teacher.feature_model, [], []
    for i, spec in enumerate(chain):
        ckpt = checkpoint_path(ckpt_dir, f"distill-{i}", **determines)
        student_teacher = current
        student, info = distill_one(prep, spec, current, targets if i == 0 else None, p, p.seed + i, ckpt, feature_model, rt)
        stages.append({"arch": spec.arch, "width": spec.width, "depth": spec.depth, **info})
        current, feature_model = LogProbs(student).eval(), student
        done.append(ckpt)
    qat_model, qat_info = None, None
    if p.student.qat.enabled:  # the fine-tune resumes from its own checkpoint; the student's is kept until it ends
        qat_ckpt = checkpoint_path(ckpt_dir, "distill-qat", **determines)
        i = len(chain) - 1
        qat_model, qat_info = distill_qat(prep, student, student_teacher, targets if i == 0 else None, p, p.seed + i, qat_ckpt, rt)
        done.append(qat_ckpt)
    for ckpt in done:
        if ckpt is not None and rt.main:
            ckpt.unlink(missing_ok=True)
    spec = p.student_spec()
    if rt.main:
        for sub in ("student", "scratch"):
            (out_dir / sub).mkdir(parents=True, exist_ok=True)
        models.save(student, spec, prep.input_shape, prep.classes, out_dir / "student" / "model.pt")
        (out_dir / "student" / "qat.pt").unlink(missing_ok=True)
        if qat_model is not None:
            from kd import qat

            qat.save(qat_model, spec, prep.classes, out_dir / "student" / "qat.pt")

    ckpt = checkpoint_path(ckpt_dir, "scratch", data=prep.meta.get("data_hash", ""), spec=spec.model_dump(),
                           train=p.student.train.model_dump(), soft_targets=p.soft_targets.model_dump(), seed=p.seed,
                           transfer_rows=0 if prep.x_transfer is None else len(prep.x_transfer), precision=str(rt.amp_dtype))
    scratch, sres = train_scratch(prep, p, p.seed, ckpt, rt)
    if not rt.main:
        return {}
    models.save(scratch, spec, prep.input_shape, prep.classes, out_dir / "scratch" / "model.pt")
    if ckpt is not None:
        ckpt.unlink(missing_ok=True)
    summary = {
        "teacher_hash": tsum["teacher_hash"],
        "stages": stages,
        "student_val_accuracy": stages[-1]["val_accuracy"],
        "scratch_val_accuracy": sres.best_val_accuracy,
        "losses": p.distill.losses,
        "processes": rt.world,
    }
    if qat_info is not None:
        summary["qat"] = {k: v for k, v in qat_info.items() if k != "history"} | {"loss": list(p.distill.losses)}
    (out_dir / "distill.json").write_text(json.dumps(summary, indent=2))
    return summary
