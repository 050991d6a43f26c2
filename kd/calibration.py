"""Calibration: expected calibration error, reliability diagrams and temperature scaling."""

from __future__ import annotations

from pathlib import Path

import numpy as np


class Bins:
    """Per-bin row counts, summed confidence and summed correctness over equal-width confidence bins, added a
    batch at a time: ECE and the reliability diagram of a split of any length from one pass (Guo et al. 2017)."""

    def __init__(self, bins: int = 15):
        self.bins = bins
        self.edges = np.linspace(0.0, 1.0, bins + 1)
        self.count = np.zeros(bins, np.int64)
        self.conf = np.zeros(bins)
        self.correct = np.zeros(bins)

    def add(self, probs: np.ndarray, y: np.ndarray) -> Bins:
        conf = probs.max(1).astype(np.float64)
        idx = np.clip(np.digitize(conf, self.edges[1:-1], right=True), 0, self.bins - 1)
        self.count += np.bincount(idx, minlength=self.bins)
        self.conf += np.bincount(idx, conf, minlength=self.bins)
        self.correct += np.bincount(idx, (probs.argmax(1) == y).astype(np.float64), minlength=self.bins)
        return self

    def ece(self) -> float:
        """Expected calibration error with equal-width confidence bins (Guo et al. 2017, eq. 3)."""
        n, m = self.count.sum(), self.count > 0
        return float(np.sum(self.count[m] / max(n, 1) * np.abs(self.correct[m] / self.count[m] - self.conf[m] / self.count[m])))

    def reliability(self) -> dict[str, list[float]]:
        m, safe = self.count > 0, np.maximum(self.count, 1)
        return {"edges": self.edges.tolist(), "accuracy": np.where(m, self.correct / safe, 0.0).tolist(),
                "confidence": np.where(m, self.conf / safe, 0.0).tolist(), "count": self.count.tolist()}


def ece(probs: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error with equal-width confidence bins (Guo et al. 2017, eq. 3)."""
    return Bins(bins).add(probs, y).ece()


def reliability_bins(probs: np.ndarray, y: np.ndarray, bins: int = 15) -> dict[str, list[float]]:
    return Bins(bins).add(probs, y).reliability()


def reliability_diagram(curves: dict[str, tuple[np.ndarray, np.ndarray] | Bins], path: Path, bins: int = 15) -> Path:
    """Plot accuracy against confidence per model (Niculescu-Mizil & Caruana 2005) to a PNG; a curve is
    (probabilities, labels) or the `Bins` a streaming pass filled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    for name, curve in curves.items():
        b = curve if isinstance(curve, Bins) else Bins(bins).add(*curve)
        r = b.reliability()
        centres = [(a + b) / 2 for a, b in zip(r["edges"][:-1], r["edges"][1:])]
        pts = [(c, a) for c, a, n in zip(centres, r["accuracy"], r["count"]) if n]
        ax.plot(*zip(*pts), marker="o", label=f"{name} (ECE {b.ece():.3f})")
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


def fit_temperature(logits: np.ndarray, y: np.ndarray, rows: int = 65536) -> float:
    """Temperature scaling (Guo et al. 2017): the T > 0 minimising validation NLL of softmax(z / T).

    The NLL is convex in b = 1/T (a log-sum-exp of b*z minus b*z_y), so Newton's method on b, with step
    halving, finds it; each iteration is one pass over the logits `rows` at a time (a memory-mapped array
    of any length is never read whole). T is kept within [1e-3, 1e3]."""
    from kd.data import row_batches

    def terms(b: float) -> tuple[float, float, float]:  # mean NLL, its first and second derivative in b
        f = g = h = 0.0
        for (i, z), (_, t) in zip(row_batches(logits, rows), row_batches(y, rows)):
            z = z.astype(np.float64)
            s = b * z
            top = s.max(1, keepdims=True)
            e = np.exp(s - top)
            total = e.sum(1, keepdims=True)
            p = e / total
            mean = (p * z).sum(1)
            zy = z[np.arange(len(z)), t]
            f += float(np.sum(np.log(total[:, 0]) + top[:, 0] - b * zy))
            g += float(np.sum(mean - zy))
            h += float(np.sum((p * z * z).sum(1) - mean**2))
        n = max(len(y), 1)
        return f / n, g / n, h / n

    lo, hi = 1e-3, 1e3
    b = 1.0
    f, g, h = terms(b)
    for _ in range(100):
        step = g / h if h > 1e-12 else np.sign(g) * b
        for _ in range(30):  # halve the step until the NLL does not increase
            nb = float(np.clip(b - step, lo, hi))
            nf, ng, nh = terms(nb)
            if nf <= f + 1e-15:
                break
            step /= 2
        else:
            break
        moved = abs(nb - b)
        b, f, g, h = nb, nf, ng, nh
        if moved <= 1e-10 * b:
            break
    return float(1.0 / b)
