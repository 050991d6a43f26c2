"""DistilBERT's hidden-state loss: 1 - cos(h_s, h_t) averaged over the real tokens (Sanh et al. 2019, arXiv:1910.01108)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class HiddenCosine(nn.Module):
    """The cosine embedding loss between student and teacher hidden states of the same size (Sanh et al. 2019):
    per token (B, L, H) with pad tokens (`ctx["mask"]` False) left out, or per sample for pooled (B, H) features."""

    needs_features = True

    def forward(self, ctx: dict) -> torch.Tensor:
        s, t = ctx["student_feat"], ctx["teacher_feat"]
        if s.shape != t.shape:
            raise ValueError(f"the cos loss compares hidden states of one shape; student {tuple(s.shape)}, teacher {tuple(t.shape)}")
        loss = 1 - F.cosine_similarity(s, t, dim=-1)
        mask = ctx.get("mask")
        if s.dim() == 3 and mask is not None:
            m = mask.to(loss.dtype)
            return (loss * m).sum() / m.sum().clamp_min(1.0)
        return loss.mean()
