"""Attention transfer: || Q_s/|Q_s| - Q_t/|Q_t| ||_2 with Q = mean_c |A_c|^p (Zagoruyko & Komodakis 2017, ICLR)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def attention_map(f: torch.Tensor, p: int = 2) -> torch.Tensor:
    """Spatial attention of a (B, C, H, W) map, flattened and L2-normalised; a (B, D) vector is its own map."""
    a = f.pow(p).mean(1) if f.dim() == 4 else f.pow(p)
    return F.normalize(a.flatten(1), dim=1)


class AttentionTransfer(nn.Module):
    """Attention transfer (Zagoruyko & Komodakis 2017). Maps of different spatial size are pooled to the smaller."""

    needs_features = True

    def __init__(self, p: int = 2):
        super().__init__()
        self.p = p

    def forward(self, ctx: dict) -> torch.Tensor:
        fs, ft = ctx["student_feat"], ctx["teacher_feat"]
        if fs.dim() == 4 and ft.dim() == 4 and fs.shape[2:] != ft.shape[2:]:
            size = min(fs.shape[2], ft.shape[2]), min(fs.shape[3], ft.shape[3])
            fs, ft = F.adaptive_avg_pool2d(fs, size), F.adaptive_avg_pool2d(ft, size)
        qs, qt = attention_map(fs, self.p), attention_map(ft, self.p)
        if qs.shape != qt.shape:
            raise ValueError(
                f"attention transfer needs maps of equal size; student gives {tuple(qs.shape[1:])}, teacher "
                f"{tuple(qt.shape[1:])} — hook layers with matching spatial size (distill.hint_layer_*)"
            )
        return (qs - qt).pow(2).sum(1).mean()
