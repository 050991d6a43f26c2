"""Calibration: expected calibration error, reliability diagrams and temperature scaling."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def ece(probs: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error with equal-width confidence bins (Guo et al. 2017, eq. 3)."""
    conf = probs.max(1)
    correct = (probs.argmax(1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            total += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(total)


def reliability_bins(probs: np.ndarray, y: np.ndarray, bins: int = 15) -> dict[str, list[float]]:
    conf = probs.max(1)
    correct = (probs.argmax(1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    acc, mean_conf, count = [], [], []
    for b in range(bins):
        m = idx == b
        count.append(int(m.sum()))
        acc.append(float(correct[m].mean()) if m.any() else 0.0)
        mean_conf.append(float(conf[m].mean()) if m.any() else 0.0)
    return {"edges": edges.tolist(), "accuracy": acc, "confidence": mean_conf, "count": count}


def reliability_diagram(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, bins: int = 15) -> Path:
    """Plot accuracy against confidence per model (Niculescu-Mizil & Caruana 2005) to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    for name, (probs, y) in curves.items():
        r = reliability_bins(probs, y, bins)
        centres = [(a + b) / 2 for a, b in zip(r["edges"][:-1], r["edges"][1:])]
        pts = [(c, a) for c, a, n in zip(centres, r["accuracy"], r["count"]) if n]
        ax.plot(*zip(*pts), marker="o", label=f"{name} (ECE {ece(probs, y, bins):.3f})")
    ax.set(xlabel="confidence", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1), title="Reliability diagram")
    ax.legend(loc="upper left", fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = logits / temperature
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """Temperature scaling (Guo et al. 2017): the T > 0 minimising validation NLL of softmax(z / T)."""
    import torch

    z = torch.as_tensor(logits, dtype=torch.float64)
    t = torch.as_tensor(y, dtype=torch.long)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z / log_t.exp(), t)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.exp().item())
