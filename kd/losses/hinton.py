"""Hinton KD: alpha * T^2 * KL(p_t^T || p_s^T) + (1 - alpha) * CE(y, p_s) (Hinton et al. 2015, arXiv:1503.02531)."""

from __future__ import annotations

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


class FusedKD(torch.autograd.Function):
    """alpha * T^2 * KL(p_t^T || p_s^T) + (1 - alpha) * CE(y, p_s) as one autograd node with its closed-form
    gradient, d/ds = alpha * T * (p_s^T - p_t^T) / B + (1 - alpha) * (p_s - onehot(y)) / B_labelled
    (Hinton et al. 2015, sec. 2.1), computed in the forward pass.

    The same value and gradient as `kd_div` and `F.cross_entropy` through autograd (to float rounding; a
    test compares both), in about a third of the operations: on a small student the loss's autograd graph
    (two temperature-scaled log-softmaxes, a KL, a CE and five scalings) cost more than the student's own
    forward and backward pass (benchmarks/cache.py). Rows labelled -1 (the transfer set) take the soft term
    only; a batch without a labelled row takes the soft term alone.
    """

    @staticmethod
    def forward(ctx, student_logits: torch.Tensor, teacher_logp: torch.Tensor, y: torch.Tensor, temperature: float, alpha: float):
        s, t = student_logits.detach(), temperature
        b = s.shape[0]
        labelled = 0 if alpha >= 1.0 else b if int(y.min()) >= 0 else int((y >= 0).sum())
        w = alpha if labelled else 1.0  # no labelled row: the soft term alone
        log_ps = torch.log_softmax(s / t, 1)
        log_pt = torch.log_softmax(teacher_logp / t, 1)
        pt = log_pt.exp()
        value = torch.sub(log_pt, log_ps).mul_(pt).sum().mul_(w * t * t / b)
        grad = log_ps.exp_().sub_(pt).mul_(w * t / b)
        if labelled:
            log_p1 = torch.log_softmax(s, 1)
            value = value + F.nll_loss(log_p1, y, ignore_index=-1) * (1 - alpha)
            p1 = log_p1.exp_()
            if labelled < b:
                keep = (y >= 0).unsqueeze(1)
                p1.mul_(keep).scatter_add_(1, y.clamp(min=0).unsqueeze(1), keep.to(p1.dtype).neg_())
            else:
                p1.scatter_add_(1, y.unsqueeze(1), torch.full((b, 1), -1.0, dtype=p1.dtype))
            grad.add_(p1, alpha=(1 - alpha) / labelled)
        ctx.grad = grad
        return value

    @staticmethod
    def backward(ctx, g):
        return ctx.grad * g, None, None, None, None


class HintonKD(torch.nn.Module):
    """Soft-target KL at temperature T mixed with the hard-label CE by alpha (Hinton et al. 2015), as one
    fused autograd node (`FusedKD`)."""

    needs_features = False

    def __init__(self, temperature: float = 4.0, alpha: float = 0.9):
        super().__init__()
        self.temperature, self.alpha = temperature, alpha

    def forward(self, ctx: dict) -> torch.Tensor:
        return FusedKD.apply(ctx["student_logits"], ctx["teacher_logp"], ctx["y"], self.temperature, min(self.alpha, 1.0))


class HardCE(torch.nn.Module):
    """Cross-entropy on hard labels; unlabeled transfer rows (label -1) are ignored."""

    needs_features = False

    def forward(self, ctx: dict) -> torch.Tensor:
        if (ctx["y"] < 0).all():
            return ctx["student_logits"].sum() * 0.0
        return F.cross_entropy(ctx["student_logits"], ctx["y"], ignore_index=-1)
