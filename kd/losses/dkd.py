"""Decoupled KD: alpha * TCKD + beta * NCKD (Zhao et al. 2022, "Decoupled Knowledge Distillation", CVPR)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dkd_parts(student_logits: torch.Tensor, teacher_logp: torch.Tensor, target: torch.Tensor, temperature: float):
    """Return (TCKD, NCKD), each already scaled by T^2 and averaged over the batch.

    TCKD: binary KL between [p_target, 1 - p_target] of teacher and student.
    NCKD: KL between the teacher's and student's distributions over the non-target classes only.
    Their sum with weights (1, 1 - p_t_target) is classical KD (Zhao et al. 2022, eq. 7).
    """
    t = temperature
    mask = F.one_hot(target, student_logits.shape[1]).bool()
    ps = F.softmax(student_logits / t, dim=1)
    pt = F.softmax(teacher_logp / t, dim=1)
    eps = 1e-12
    bs = torch.stack([(ps * mask).sum(1), (ps * ~mask).sum(1)], 1).clamp_min(eps)
    bt = torch.stack([(pt * mask).sum(1), (pt * ~mask).sum(1)], 1).clamp_min(eps)
    tckd = (bt * (bt.log() - bs.log())).sum(1).mean() * t * t
    big = 1000.0  # masks the target class out of the non-target softmax
    log_ps_nt = F.log_softmax(student_logits / t - big * mask, dim=1)
    log_pt_nt = F.log_softmax(teacher_logp / t - big * mask, dim=1)
    pt_nt = log_pt_nt.exp() * ~mask
    nckd = (pt_nt * (log_pt_nt - log_ps_nt) * ~mask).sum(1).mean() * t * t
    return tckd, nckd


class DKD(torch.nn.Module):
    """Decoupled KD (Zhao et al. 2022). Unlabeled transfer rows use the teacher's argmax as target."""

    needs_features = False

    def __init__(self, temperature: float = 4.0, alpha: float = 1.0, beta: float = 8.0):
        super().__init__()
        self.temperature, self.alpha, self.beta = temperature, alpha, beta

    def forward(self, ctx: dict) -> torch.Tensor:
        y = ctx["y"]
        target = torch.where(y >= 0, y, ctx["teacher_logp"].argmax(1))
        tckd, nckd = dkd_parts(ctx["student_logits"], ctx["teacher_logp"], target, self.temperature)
        return self.alpha * tckd + self.beta * nckd
