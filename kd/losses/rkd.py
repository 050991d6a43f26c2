"""Relational KD, distance + angle terms (Park et al. 2019, "Relational Knowledge Distillation", CVPR)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _pdist(e: torch.Tensor) -> torch.Tensor:
    d = torch.cdist(e, e)
    mean = d[d > 0].mean() if (d > 0).any() else d.new_tensor(1.0)
    return d / mean


def rkd_distance(fs: torch.Tensor, ft: torch.Tensor) -> torch.Tensor:
    """Huber loss between mean-normalised pairwise distances (Park et al. 2019, eq. 3-4)."""
    with torch.no_grad():
        t = _pdist(ft)
    return F.smooth_l1_loss(_pdist(fs), t)


def rkd_angle(fs: torch.Tensor, ft: torch.Tensor) -> torch.Tensor:
    """Huber loss between cosines of angles formed by triplets of embeddings (Park et al. 2019, eq. 5-6)."""

    def angles(e):
        diff = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)
        return torch.bmm(diff, diff.transpose(1, 2)).flatten()

    with torch.no_grad():
        t = angles(ft)
    return F.smooth_l1_loss(angles(fs), t)


class RKD(nn.Module):
    """Relational KD on penultimate embeddings: w_d * distance + w_a * angle (Park et al. 2019)."""

    needs_features = True

    def __init__(self, w_distance: float = 1.0, w_angle: float = 2.0):
        super().__init__()
        self.w_distance, self.w_angle = w_distance, w_angle

    def forward(self, ctx: dict) -> torch.Tensor:
        fs, ft = ctx["student_feat"].flatten(1), ctx["teacher_feat"].flatten(1)
        return self.w_distance * rkd_distance(fs, ft) + self.w_angle * rkd_angle(fs, ft)
