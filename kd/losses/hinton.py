"""Hinton KD: alpha * T^2 * KL(p_t^T || p_s^T) + (1 - alpha) * CE(y, p_s) (Hinton et al. 2015, arXiv:1503.02531)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def kd_div(student_logits: torch.Tensor, teacher_logp: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(t/T) || softmax(s/T)), averaged over the batch.

    `teacher_logp` are the teacher's log-probabilities at T=1 (logits up to a constant), so
    softmax(teacher_logp / T) is exactly the teacher's distribution at temperature T. The T^2 factor
    keeps gradient magnitudes comparable across temperatures (Hinton et al. 2015, sec. 2).
    """
    t = temperature
    log_ps = F.log_softmax(student_logits / t, dim=1)
    log_pt = F.log_softmax(teacher_logp / t, dim=1)
    return F.kl_div(log_ps, log_pt, reduction="batchmean", log_target=True) * t * t


def hinton_torch(s: torch.Tensor, teacher_logp: torch.Tensor, y: torch.Tensor, temperature: float, alpha: float) -> torch.Tensor:
    """The loss as a torch expression (any device and dtype; autograd differentiates it)."""
    soft = kd_div(s, teacher_logp, temperature)
    if alpha >= 1.0 or (y < 0).all():
        return soft
    return alpha * soft + (1 - alpha) * F.cross_entropy(s, y, ignore_index=-1)


def hinton_numpy(s: np.ndarray, teacher_logp: np.ndarray, y: np.ndarray, temperature: float, alpha: float) -> tuple[float, np.ndarray] | None:
    """The loss's value and its gradient with respect to the logits `s`, in closed form (Hinton et al. 2015,
    eq. 2: dC/dz_i = (q_i - p_i) / T per soft term, times T^2): alpha * T / B * (softmax(s/T) - softmax(t/T)) +
    (1 - alpha) / n * (softmax(s) - onehot(y)) on the n labelled rows. None when a row's exponentials underflow
    (logits spread by more than ~88 * T within the batch): the torch expression takes that batch.

    On a small student the dozen torch ops of `hinton_torch` and their autograd nodes cost more in dispatch than
    in arithmetic (benchmarks/step_profile.py); here the three softmaxes are one stacked array, shifted by one
    scalar per input (softmax is shift-invariant), and row sums are a matrix product."""
    b, n_classes = s.shape
    labelled = y >= 0
    n = int(np.count_nonzero(labelled)) if alpha < 1.0 else 0
    w_soft = alpha * temperature / b if n else temperature / b  # no labelled row or alpha = 1: the soft term alone
    a = np.stack((s, teacher_logp, s))
    a[0] -= s.max()
    a[1] -= teacher_logp.max()
    a[2] -= s.max()
    a[:2] *= 1.0 / temperature
    e = np.exp(a)  # student at T, teacher at T, student at 1; unnormalised
    sums = e @ np.ones((n_classes, 1), e.dtype)
    if not sums.all():
        return None
    p = e / sums
    log_sums = np.log(sums).sum((1, 2))
    # KL(p_t || p_s) summed over rows = sum p_t * (a_t - a_s) - sum log sums_t + sum log sums_s (p_t rows sum to 1)
    value = (float(np.vdot(p[1], a[1] - a[0])) + float(log_sums[0] - log_sums[1])) * w_soft * temperature
    grad = (p[0] - p[1]) * w_soft
    if n:
        w_hard = (1 - alpha) / n
        rows = np.arange(b) if n == b else np.flatnonzero(labelled)
        labels = y[rows]
        hard = p[2]
        if n < b:
            hard[~labelled] = 0.0
        hard[rows, labels] -= 1.0
        grad += hard * w_hard
        log_sum_rows = log_sums[2] if n == b else float(np.log(sums[2, rows]).sum())
        value += float(log_sum_rows - a[2, rows, labels].sum()) * w_hard  # -log softmax(s)[y], summed
    return value, grad


class Given(torch.autograd.Function):
    """A scalar loss whose gradient with respect to its input was computed in the forward pass."""

    @staticmethod
    def forward(ctx, s: torch.Tensor, value: float, grad: torch.Tensor):
        ctx.grad = grad
        return s.new_tensor(value)

    @staticmethod
    def backward(ctx, grad_output):
        return ctx.grad * grad_output, None, None


class HintonKD(torch.nn.Module):
    """Soft-target KL at temperature T mixed with the hard-label CE by alpha (Hinton et al. 2015).

    Float32 CPU logits take `hinton_numpy` (one autograd node); anything else (GPU, mixed precision, float64) the
    torch expression. Both give the same value and gradient (tests/code/test_losses.py)."""

    needs_features = False

    def __init__(self, temperature: float = 4.0, alpha: float = 0.9):
        super().__init__()
        self.temperature, self.alpha = temperature, alpha

    def forward(self, ctx: dict) -> torch.Tensor:
        s, t, y = ctx["student_logits"], ctx["teacher_logp"], ctx["y"]
        if s.device.type == "cpu" and s.dtype == t.dtype == torch.float32 and not torch.is_autocast_enabled("cpu"):
            done = hinton_numpy(s.detach().numpy(), t.detach().numpy(), y.numpy(), self.temperature, self.alpha)
            if done is not None:
                return Given.apply(s, done[0], torch.from_numpy(done[1]))
        return hinton_torch(s, t, y, self.temperature, self.alpha)


class HardCE(torch.nn.Module):
    """Cross-entropy on hard labels; unlabeled transfer rows (label -1) are ignored."""

    needs_features = False

    def forward(self, ctx: dict) -> torch.Tensor:
        if (ctx["y"] < 0).all():
            return ctx["student_logits"].sum() * 0.0
        return F.cross_entropy(ctx["student_logits"], ctx["y"], ignore_index=-1)
