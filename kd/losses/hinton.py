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


class HintonKD(torch.nn.Module):
    """Soft-target KL at temperature T mixed with the hard-label CE by alpha (Hinton et al. 2015)."""

    needs_features = False

    def __init__(self, temperature: float = 4.0, alpha: float = 0.9):
        super().__init__()
        self.temperature, self.alpha = temperature, alpha

    def forward(self, ctx: dict) -> torch.Tensor:
        soft = kd_div(ctx["student_logits"], ctx["teacher_logp"], self.temperature)
        if self.alpha >= 1.0 or (ctx["y"] < 0).all():
            return soft
        hard = F.cross_entropy(ctx["student_logits"], ctx["y"], ignore_index=-1)
        return self.alpha * soft + (1 - self.alpha) * hard


class HardCE(torch.nn.Module):
    """Cross-entropy on hard labels; unlabeled transfer rows (label -1) are ignored."""

    needs_features = False

    def forward(self, ctx: dict) -> torch.Tensor:
        if (ctx["y"] < 0).all():
            return ctx["student_logits"].sum() * 0.0
        return F.cross_entropy(ctx["student_logits"], ctx["y"], ignore_index=-1)
