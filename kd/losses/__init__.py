"""Distillation losses by name, combined as a weighted sum of named terms.

| name | source | needs the teacher online |
|---|---|---|
| ce   | hard-label cross-entropy | no |
| kd   | Hinton et al. 2015 | no (cached soft targets) |
| dkd  | Zhao et al. 2022 | no (cached soft targets) |
| dist | Huang et al. 2022 (DIST) | no (cached soft targets) |
| hint | Romero et al. 2015 (FitNets) | yes (features) |
| at   | Zagoruyko & Komodakis 2017 | yes (features) |
| rkd  | Park et al. 2019 | yes (features) |
| pkt  | Passalis & Tefas 2018 | yes (features) |
| crd  | Tian et al. 2020 (CRD) | yes (features, plus the batch's row indices) |
| cos  | Sanh et al. 2019 (DistilBERT hidden-state cosine) | yes (features; token inputs add `mask`) |

Each term takes a context dict: `student_logits`, `teacher_logp` (teacher log-probabilities at T=1),
`y` (-1 for unlabeled transfer rows), `idx` (the batch's row indices into the distillation inputs) and, for
feature losses, `student_feat` / `teacher_feat` (and `mask`, the non-pad tokens, for token-id inputs).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from kd.config import LOSS_NAMES, DistillParams
from kd.config.train import FEATURE_LOSSES as FEATURE_LOSSES  # one list, the config's (kd.distill reads it here)
from kd.losses.attention import AttentionTransfer
from kd.losses.cosine import HiddenCosine
from kd.losses.crd import CRD
from kd.losses.dist import DIST
from kd.losses.dkd import DKD
from kd.losses.hint import Hint, HintRegressor
from kd.losses.hinton import HardCE, HintonKD
from kd.losses.pkt import PKT
from kd.losses.rkd import RKD


class Combined(nn.Module):
    """sum_i w_i * L_i over the configured terms; `forward` returns the total and each term's value."""

    def __init__(self, terms: dict[str, nn.Module], weights: dict[str, float]):
        super().__init__()
        self.terms = nn.ModuleDict(terms)
        self.weights = weights

    @property
    def needs_features(self) -> bool:
        return any(getattr(t, "needs_features", False) for t in self.terms.values())

    def forward(self, ctx: dict) -> tuple[torch.Tensor, dict[str, float]]:
        total = None
        parts: dict[str, float] = {}
        for name, term in self.terms.items():
            value = term(ctx)
            parts[name] = float(value.detach())
            weighted = value if self.weights[name] == 1.0 else self.weights[name] * value  # no node for a weight of 1
            total = weighted if total is None else total + weighted
        return total, parts


def build(p: DistillParams, feature_shapes: tuple[tuple, tuple] | None = None, n_rows: int | None = None) -> Combined:
    """Build the configured terms. `feature_shapes` = (student, teacher) per-sample feature shapes, needed by
    'hint' to size its regressor and by 'crd' to size its embeddings; `n_rows` = number of distillation rows
    (training split + transfer rows), needed by 'crd' to size its memory banks."""
    terms: dict[str, nn.Module] = {}
    for name in p.losses:
        if name == "ce":
            terms[name] = HardCE()
        elif name == "kd":
            terms[name] = HintonKD(p.temperature, p.alpha)
        elif name == "dkd":
            terms[name] = DKD(p.temperature, p.dkd_alpha, p.dkd_beta)
        elif name == "dist":
            terms[name] = DIST(p.dist_temperature, p.dist_beta, p.dist_gamma)
        elif name == "hint":
            if feature_shapes is None:
                raise ValueError("the 'hint' loss needs the student and teacher feature shapes")
            terms[name] = Hint(HintRegressor(*feature_shapes))
        elif name == "at":
            terms[name] = AttentionTransfer()
        elif name == "rkd":
            terms[name] = RKD()
        elif name == "pkt":
            terms[name] = PKT()
        elif name == "crd":
            if feature_shapes is None or n_rows is None:
                raise ValueError("the 'crd' loss needs the student and teacher feature shapes and the number of distillation rows")
            s_dim, t_dim = (math.prod(shape) for shape in feature_shapes)
            terms[name] = CRD(s_dim, t_dim, n_rows, p.crd_feat_dim, p.crd_nce_k, p.crd_temperature, p.crd_momentum)
        elif name == "cos":
            if feature_shapes is not None and feature_shapes[0] != feature_shapes[1]:
                raise ValueError(f"the 'cos' loss needs student and teacher features of one shape; the hooked layers give "
                                 f"{feature_shapes[0]} and {feature_shapes[1]} (use minilm_layers under a minilm teacher, or other hook layers)")
            terms[name] = HiddenCosine()
        else:
            raise ValueError(f"unknown loss {name!r}; expected one of {', '.join(LOSS_NAMES)}")
    return Combined(terms, dict(p.losses))
