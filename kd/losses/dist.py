"""DIST: beta * tau^2 * inter + gamma * tau^2 * intra, Pearson relations of p^tau (Huang et al. 2022, arXiv:2205.10536)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pearson(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Pearson correlation of each row of `a` with the same row of `b` (cosine of the centred rows)."""
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def dist_parts(student_logits: torch.Tensor, teacher_logp: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (inter, intra), each already scaled by tau^2.

    With P = softmax(z / tau) of shape (B, C):
    inter = 1 - mean_i rho(P_s[i, :], P_t[i, :])   (inter-class: each sample's relation over classes)
    intra = 1 - mean_c rho(P_s[:, c], P_t[:, c])   (intra-class: each class's relation over the batch)
    A batch of one row has no intra-class relation: that term is 0 there.
    rho is Pearson's correlation, so a student whose probabilities are one positive affine map of the teacher's
    for every sample (the teacher's mixed with the uniform distribution: a * p_t + (1 - a) / C) has loss 0: DIST asks for relations, not values.
    """
    t = temperature
    ps = F.softmax(student_logits / t, dim=1)
    pt = F.softmax(teacher_logp / t, dim=1)
    inter = 1 - pearson(ps, pt).mean()
    # a batch of one row has no spread over the batch: no intra-class relation to match
    intra = 1 - pearson(ps.t(), pt.t()).mean() if len(ps) > 1 else ps.sum() * 0.0
    return inter * t * t, intra * t * t


class DIST(torch.nn.Module):
    """DIST (Huang et al. 2022) from the cached teacher log-probabilities; needs no labels and no features."""

    needs_features = False

    def __init__(self, temperature: float = 1.0, beta: float = 1.0, gamma: float = 1.0):
        super().__init__()
        self.temperature, self.beta, self.gamma = temperature, beta, gamma

    def forward(self, ctx: dict) -> torch.Tensor:
        inter, intra = dist_parts(ctx["student_logits"], ctx["teacher_logp"], self.temperature)
        return self.beta * inter + self.gamma * intra
