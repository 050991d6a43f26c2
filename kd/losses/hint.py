"""FitNets hints: || r(f_s) - f_t ||^2 with a learned regressor r (Romero et al. 2015, arXiv:1412.6550)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class HintRegressor(nn.Module):
    """Maps a student feature to the teacher feature's shape.

    Conv maps (B, C, H, W) -> 1x1 conv to the teacher's channels, then resized to its spatial size;
    anything else is flattened and mapped by a linear layer.
    """

    def __init__(self, student_shape: tuple[int, ...], teacher_shape: tuple[int, ...]):
        super().__init__()
        self.teacher_shape = tuple(teacher_shape)
        self.conv = len(student_shape) == 3 and len(teacher_shape) == 3
        if self.conv:
            self.map = nn.Conv2d(student_shape[0], teacher_shape[0], 1)
        else:
            self.map = nn.Linear(math.prod(student_shape), math.prod(teacher_shape))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        if self.conv:
            out = self.map(f)
            if out.shape[2:] != self.teacher_shape[1:]:
                out = F.adaptive_avg_pool2d(out, self.teacher_shape[1:])
            return out
        return self.map(f.flatten(1)).view(f.shape[0], *self.teacher_shape)


class Hint(nn.Module):
    """FitNets hint loss (Romero et al. 2015); the regressor is built lazily from the first batch's shapes
    by `kd.distill` (it must exist before the optimiser is created)."""

    needs_features = True

    def __init__(self, regressor: HintRegressor):
        super().__init__()
        self.regressor = regressor

    def forward(self, ctx: dict) -> torch.Tensor:
        return F.mse_loss(self.regressor(ctx["student_feat"]), ctx["teacher_feat"])
