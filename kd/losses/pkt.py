"""Probabilistic knowledge transfer: KL between cosine-similarity kernels (Passalis & Tefas 2018, ECCV)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def pkt_loss(fs: torch.Tensor, ft: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """KL(P_t || P_s), P = row-normalised (cos + 1) / 2 similarity matrices (Passalis & Tefas 2018, eq. 11-13)."""

    def probs(f):
        f = F.normalize(f.flatten(1), dim=1)
        k = (f @ f.t() + 1.0) / 2.0
        return k / k.sum(1, keepdim=True)

    ps, pt = probs(fs), probs(ft.detach())
    return (pt * torch.log((pt + eps) / (ps + eps))).sum(1).mean()


class PKT(nn.Module):
    """Probabilistic knowledge transfer (Passalis & Tefas 2018); embedding sizes may differ."""

    needs_features = True

    def forward(self, ctx: dict) -> torch.Tensor:
        return pkt_loss(ctx["student_feat"], ctx["teacher_feat"])
