"""The training loop shared by teachers, students and the scratch baseline.

Read top to bottom: seed, optimiser, cosine schedule, resume from the last checkpoint, then per epoch a
seeded permutation, steps, validation, early stopping and, every `checkpoint_every` seconds and at the end, a
checkpoint. Batches and losses come from callables, so the same loop trains on hard labels, cached soft
targets or an online teacher.
Determinism on CPU: the epoch order depends only on (rows, seed, epoch) — a uniform permutation up to 65,536
rows, a block shuffle beyond (`kd.blocks`: sequential reads of large data) — and the torch RNG state is
checkpointed, so a killed-and-resumed run ends with the same weights as an uninterrupted one.
Under torch.distributed (`kd.distributed`) each rank takes its share of every global batch, its loss
weighted by that share, and DistributedDataParallel averages the gradients: N processes take the steps
one process would, up to float summation order. Rank 0 writes the checkpoints.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from kd.blocks import epoch_order
from kd.config import TrainParams
from kd.distributed import Runtime
from kd.failpoints import crash_point
from kd.models import safe_load

BatchFn = Callable[[np.ndarray, int], dict]  # (row indices, epoch) -> batch dict
LossFn = Callable[[nn.Module, dict], tuple[torch.Tensor, dict[str, float]]]


@dataclass
class FitResult:
    epochs_run: int
    best_epoch: int
    best_val_accuracy: float
    history: list[dict] = field(default_factory=list)
    resumed_from: int = 0


class StopTraining(Exception):
    """Raised by a step callback to simulate a killed process (tests of resume)."""


def set_seed(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    torch.use_deterministic_algorithms(True, warn_only=True)


@torch.no_grad()
def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray, batch: int = 1024) -> float:
    model.eval()
    device = next(model.parameters(), torch.empty(0)).device  # an ONNX member has no parameters: the CPU
    preds = [model(torch.from_numpy(x[i : i + batch]).to(device)).argmax(1).cpu().numpy() for i in range(0, len(x), batch)]
    return float((np.concatenate(preds) == y).mean()) if len(y) else 0.0


def make_optimizer(params, tp: TrainParams) -> torch.optim.Optimizer:
    if tp.optimizer == "sgd":
        return torch.optim.SGD(params, lr=tp.lr, momentum=tp.momentum, weight_decay=tp.weight_decay, nesterov=True)
    return torch.optim.AdamW(params, lr=tp.lr, weight_decay=tp.weight_decay)


def fit(
    model: nn.Module,
    n_rows: int,
    batch_fn: BatchFn,
    loss_fn: LossFn,
    val: tuple[np.ndarray, np.ndarray],
    tp: TrainParams,
    seed: int,
    ckpt: Path | None = None,
    extra_modules: list[nn.Module] | None = None,
    on_epoch_end: Callable[[int], None] | None = None,
    desc: str = "train",
    rt: Runtime | None = None,
) -> FitResult:
    """Train `model` in place (ending on its best validation weights, on the CPU) and return the history."""
    set_seed(seed)
    rt = rt or Runtime()
    extra = nn.ModuleList(extra_modules or [])  # e.g. FitNets regressors, trained with the student
    if rt.world > 1 and (any(True for _ in extra.parameters()) or any(True for _ in extra.buffers())):
        raise ValueError(f"{desc}: a loss with trained heads or memory banks (hint, at, crd) cannot be distributed yet; "
                         "set distributed.nproc: 1 or use kd, dkd, dist, rkd or pkt")
    model.to(rt.device)
    extra.to(rt.device)
    opt = make_optimizer(list(model.parameters()) + list(extra.parameters()), tp)
    scaler = rt.grad_scaler()  # amp: fp16 scales the loss; bf16 and fp32 pass through
    steps_per_epoch = math.ceil(n_rows / tp.batch_size)
    total = tp.epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, (lambda s: 0.5 * (1 + math.cos(math.pi * s / total))) if tp.schedule == "cosine" else (lambda s: 1.0)
    )
    state = {"epoch": 0, "best_acc": -1.0, "best_epoch": 0, "best_state": None, "bad_epochs": 0, "history": []}
    resumed = 0
    if ckpt is not None and ckpt.exists():
        saved = safe_load(ckpt)
        model.load_state_dict(saved["model"])
        extra.load_state_dict(saved["extra"])
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["scheduler"])
        torch.set_rng_state(saved["torch_rng"])
        state = saved["state"]
        resumed = state["epoch"]
    trained = model
    if rt.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        trained = DistributedDataParallel(model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)

    saved_at = time.monotonic()  # checkpoints every `rt.checkpoint_every` seconds of training, and at the end
    progress = None
    if tp.progress:
        from tqdm import tqdm

        progress = tqdm(total=tp.epochs, initial=state["epoch"], desc=desc, leave=False)

    def finished() -> bool:  # all epochs run, or early stopping
        return state["epoch"] >= tp.epochs or state["bad_epochs"] > (tp.patience or math.inf)

    while not finished():
        epoch = state["epoch"]
        order = epoch_order(n_rows, seed, epoch)
        model.train()
        extra.train()
        sums: dict[str, float] = {}
        for i in range(0, n_rows, tp.batch_size):
            rows = order[i : i + tp.batch_size]
            share = rt.share(rows)
            weight = len(share) * rt.world / len(rows)  # DDP averages over ranks; this makes it the global batch mean
            batch = _to(batch_fn(share if len(share) else rows[:1], epoch), rt.device)
            with rt.autocast():  # mixed precision (amp) of the forward pass and loss; off: no-op
                loss, parts = loss_fn(trained, batch)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss * weight if rt.world > 1 else loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v / steps_per_epoch
        val_acc = accuracy(model, *val)
        state["history"].append({"epoch": epoch + 1, "val_accuracy": val_acc, **sums})
        if val_acc > state["best_acc"]:
            state.update(best_acc=val_acc, best_epoch=epoch + 1, best_state={k: v.detach().cpu().clone() for k, v in model.state_dict().items()}, bad_epochs=0)
        else:
            state["bad_epochs"] += 1
        state["epoch"] = epoch + 1
        if ckpt is not None and rt.main and (finished() or time.monotonic() - saved_at >= rt.checkpoint_every):
            _save_checkpoint(ckpt, model, extra, opt, sched, state)
            saved_at = time.monotonic()
            crash_point(f"fit:{desc}:epoch-{epoch + 1}")
        if progress:
            progress.update(1)
            progress.set_postfix(val_acc=f"{val_acc:.4f}", **{k: f"{v:.3f}" for k, v in sums.items()})
        if on_epoch_end:
            on_epoch_end(epoch + 1)
    if progress:
        progress.close()
    if state["best_state"] is not None:
        model.load_state_dict(state["best_state"])
    model.to("cpu")
    extra.to("cpu")
    return FitResult(state["epoch"], state["best_epoch"], state["best_acc"], state["history"], resumed)


def _to(batch: dict, device: torch.device) -> dict:
    if device.type == "cpu":
        return batch
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def checkpoint_path(ckpt_dir: Path | None, kind: str, **determines) -> Path | None:
    """Where a run resumes from: the key hashes everything that determines the weights (data version,
    teacher, every training setting), so a resume after any change starts afresh instead of mixing runs."""
    if ckpt_dir is None:
        return None
    key = hashlib.sha256(json.dumps(determines, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return Path(ckpt_dir) / f"{kind}-{key}.pt"


def _save_checkpoint(path: Path, model, extra, opt, sched, state) -> None:
    """Write to a temporary file and rename, so a kill mid-write never leaves a torn checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(
        {"model": model.state_dict(), "extra": extra.state_dict(), "optimizer": opt.state_dict(),
         "scheduler": sched.state_dict(), "torch_rng": torch.get_rng_state(), "state": state},
        tmp,
    )
    tmp.replace(path)


def hard_label_batches(x: np.ndarray, y: np.ndarray) -> BatchFn:
    def batch(idx: np.ndarray, _epoch: int) -> dict:
        return {"x": torch.from_numpy(x[idx]), "y": torch.from_numpy(y[idx])}

    return batch


def cross_entropy_loss(model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
    """Hard-label cross-entropy; a batch of mixed inputs (with `y_mix` and `lam`) gets mixup's label,
    lam * CE(y) + (1 - lam) * CE(y_mix) (Zhang et al. 2018)."""
    logits = model(batch["x"])
    if "lam" not in batch:
        loss = nn.functional.cross_entropy(logits, batch["y"], ignore_index=-1)
    else:
        ce = nn.functional.cross_entropy(logits, batch["y"], reduction="none")
        ce_mix = nn.functional.cross_entropy(logits, batch["y_mix"], reduction="none")
        loss = (batch["lam"] * ce + (1 - batch["lam"]) * ce_mix).mean()
    return loss, {"ce": float(loss.detach())}
