"""kd's MNIST-1D recipe as one plain PyTorch script, with no kd import: the reference `benchmarks/parity.py`
compares `kd run` with.

Same recipe as `examples/mnist1d/params.yaml` resolved (every number below is that file's or kd's default):
  split     stratified, scikit-learn's train_test_split(random_state=seed): test 20%, then validation 10% of all
  features  standardised with the training split's mean and population std (float32)
  teacher   cnn1d (Conv1d k3 + BatchNorm + ReLU) x depth, AdaptiveAvgPool1d(4), Linear; seed = run seed
  targets   the teacher's log-softmax on the training rows, rounded to float16 (kd's cache dtype)
  student   mlp (Linear + ReLU) x depth, Linear; KD (Hinton et al. 2015): alpha T^2 KL(p_t^T || p_s^T) + (1 - alpha) CE
  scratch   the student's network on hard labels, same steps
  training  AdamW, cosine decay per step to zero, batch 100, seeded permutation per epoch, validation accuracy
            each epoch, the best epoch's weights kept, deterministic algorithms, 1 thread

    python benchmarks/plain_pytorch.py --seed 0 --out result.json
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from sklearn.model_selection import train_test_split
from torch import nn

REPO = Path(__file__).resolve().parents[1]
RECIPE = {
    "csv": "examples/mnist1d/data.csv", "test_fraction": 0.2, "val_fraction": 0.1,
    "teacher": {"width": 32, "depth": 3, "epochs": 229}, "student": {"width": 64, "depth": 2, "epochs": 229},
    "batch_size": 100, "lr": 3e-3, "weight_decay": 1e-4, "temperature": 4.0, "alpha": 0.9,
}


def split(df: pd.DataFrame, seed: int) -> dict[str, pd.DataFrame]:
    codes = np.unique(df["label"].astype(str).to_numpy(), return_inverse=True)[1]
    rows = np.arange(len(df))
    rest, test = train_test_split(rows, test_size=RECIPE["test_fraction"], random_state=seed, stratify=codes)
    rest, val = train_test_split(rest, test_size=RECIPE["val_fraction"] / (1 - RECIPE["test_fraction"]), random_state=seed,
                                 stratify=codes[rest])
    return {name: df.take(r).reset_index(drop=True) for name, r in (("train", rest), ("val", val), ("test", test))}


class Net(nn.Module):
    def __init__(self, reshape: tuple[int, ...], features: nn.Module, dim: int, n_classes: int):
        super().__init__()
        self.reshape, self.features, self.head = reshape, features, nn.Linear(dim, n_classes)

    def forward(self, x):
        return self.head(self.features(x.reshape(x.shape[0], *self.reshape)))


def mlp(n_in: int, n_classes: int, width: int, depth: int) -> nn.Module:
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Linear(n_in if i == 0 else width, width), nn.ReLU()]
    return Net((n_in,), nn.Sequential(*layers), width, n_classes)


def cnn1d(n_in: int, n_classes: int, width: int, depth: int) -> nn.Module:
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Conv1d(1 if i == 0 else width, width, 3, padding=1), nn.BatchNorm1d(width), nn.ReLU()]
    layers += [nn.AdaptiveAvgPool1d(4), nn.Flatten()]
    return Net((1, n_in), nn.Sequential(*layers), width * 4, n_classes)


@torch.no_grad()
def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    model.eval()
    pred = np.concatenate([model(torch.from_numpy(x[i : i + 1024])).argmax(1).numpy() for i in range(0, len(x), 1024)])
    return float((pred == y).mean())


def train(model: nn.Module, n: int, batch_fn, loss_fn, val: tuple[np.ndarray, np.ndarray], epochs: int, seed: int) -> int:
    torch.manual_seed(seed)
    np.random.seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=RECIPE["lr"], weight_decay=RECIPE["weight_decay"])
    bs = RECIPE["batch_size"]
    total = epochs * math.ceil(n / bs)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / total)))
    best, best_state, best_epoch = -1.0, None, 0
    for epoch in range(epochs):
        order = np.random.default_rng([seed, epoch]).permutation(n)
        model.train()
        for i in range(0, n, bs):
            loss = loss_fn(model, batch_fn(order[i : i + bs]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        acc = accuracy(model, *val)
        if acc > best:
            best, best_epoch = acc, epoch + 1
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    return best_epoch


def kd_loss(logits, t_logp, y, temp, alpha):
    """Hinton et al. 2015: alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(y, s)."""
    soft = F.kl_div(F.log_softmax(logits / temp, 1), F.log_softmax(t_logp / temp, 1), reduction="batchmean", log_target=True) * temp * temp
    return alpha * soft + (1 - alpha) * F.cross_entropy(logits, y)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--csv", type=Path, default=REPO / RECIPE["csv"])
    ap.add_argument("--out", type=Path)
    ap.add_argument("--quick", action="store_true", help="2 epochs each (parity.py --quick)")
    a = ap.parse_args()
    if a.quick:
        RECIPE["teacher"]["epochs"] = RECIPE["student"]["epochs"] = 2
    t_start = time.perf_counter()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True, warn_only=True)
    seed, times = a.seed, {}

    t0 = time.perf_counter()
    parts = split(pd.read_csv(a.csv), seed)
    features = [c for c in parts["train"].columns if c != "label"]
    xtr = parts["train"][features].to_numpy(np.float64)
    mean, std = xtr.mean(0), xtr.std(0)
    std[std < 1e-8] = 1.0
    classes = sorted(parts["train"]["label"].astype(str).unique(), key=lambda s: (float(s), s))
    index = {c: i for i, c in enumerate(classes)}
    x = {s: ((f[features].to_numpy(np.float64) - mean) / std).astype(np.float32) for s, f in parts.items()}
    y = {s: f["label"].astype(str).map(index).to_numpy(np.int64) for s, f in parts.items()}
    n_in, n_cls, n = len(features), len(classes), len(y["train"])
    times["data"] = time.perf_counter() - t0

    def hard(idx):
        return {"x": torch.from_numpy(x["train"][idx]), "y": torch.from_numpy(y["train"][idx])}

    def ce(model, b):
        return F.cross_entropy(model(b["x"]), b["y"])

    t0 = time.perf_counter()
    torch.manual_seed(seed)
    teacher = cnn1d(n_in, n_cls, RECIPE["teacher"]["width"], RECIPE["teacher"]["depth"])
    train(teacher, n, hard, ce, (x["val"], y["val"]), RECIPE["teacher"]["epochs"], seed)
    times["teacher"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    teacher.eval()
    with torch.no_grad():
        t_logp = teacher(torch.from_numpy(x["train"])).log_softmax(1).numpy().astype(np.float16).astype(np.float32)
    times["soft_targets"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    torch.manual_seed(seed)
    student = mlp(n_in, n_cls, RECIPE["student"]["width"], RECIPE["student"]["depth"])

    def cached(idx):
        return hard(idx) | {"t": torch.from_numpy(t_logp[idx])}

    def distil(model, b):
        return kd_loss(model(b["x"]), b["t"], b["y"], RECIPE["temperature"], RECIPE["alpha"])

    train(student, n, cached, distil, (x["val"], y["val"]), RECIPE["student"]["epochs"], seed)
    times["student"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    torch.manual_seed(seed)
    scratch = mlp(n_in, n_cls, RECIPE["student"]["width"], RECIPE["student"]["depth"])
    train(scratch, n, hard, ce, (x["val"], y["val"]), RECIPE["student"]["epochs"], seed)
    times["scratch"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    result = {"seed": seed, "test_accuracy": {name: accuracy(m, x["test"], y["test"]) for name, m in
                                              (("teacher", teacher), ("student", student), ("scratch", scratch))}}
    times["evaluate"] = time.perf_counter() - t0
    times["total"] = time.perf_counter() - t_start
    result |= {"seconds": times, "rows": {s: len(v) for s, v in y.items()}}
    print(json.dumps(result))
    if a.out:
        a.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
