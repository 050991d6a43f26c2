"""CRD: NCE between student and teacher embeddings against K bank negatives (Tian et al. 2020, arXiv:1910.10699).

With v_s = norm(W_s f_s), v_t = norm(W_t f_t) and memory banks M_s, M_t (one row per distillation sample),
h(v, m) = exp(v . m / tau) / Z and, for each anchor, its own row as the positive and K uniform negatives:
    L_NCE(h) = -mean_batch [ log h_pos / (h_pos + K/N) + sum_K log (K/N) / (h_neg + K/N) ]
    L_CRD    = L_NCE(h(v_s, M_t[.])) + L_NCE(h(v_t, M_s[.]))
Z = mean(exp(v . m / tau)) * N on the first batch, then fixed (as in the reference implementation), and
after each step M[i] <- norm(mu * M[i] + (1 - mu) * v_i) for the batch rows i.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def nce_loss(log_h: torch.Tensor, n_data: int) -> torch.Tensor:
    """The NCE loss of log-scores `log_h` = log h (B, 1 + K), positive first, with uniform noise 1/N.

    In log space: -log(h / (h + K/N)) = softplus(log(K/N) - log h) and -log((K/N) / (h + K/N)) =
    softplus(log h - log(K/N)), so neither a score that overflows exp in float32 nor one that underflows
    to 0 turns the loss infinite.
    """
    log_noise = math.log((log_h.shape[1] - 1) / n_data)
    return (F.softplus(log_noise - log_h[:, 0]).sum() + F.softplus(log_h[:, 1:] - log_noise).sum()) / log_h.shape[0]


def bank_scores(bank: torch.Tensor, rows: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """v[b] . bank[rows[b, j]] for rows (B, 1 + K), by whichever way materialises less: all B x N products with a
    copy of the bank (N <= (1 + K) * D; on CPU also much the faster, gathering rows is slow), or the gathered
    B x (1 + K) x D rows. Either way the product holds a copy, so updating the bank in place before `backward` is safe."""
    if bank.shape[0] <= rows.shape[1] * bank.shape[1]:
        return (v @ bank.t().clone()).gather(1, rows)
    return torch.bmm(bank[rows], v.unsqueeze(2)).squeeze(2)


class Embed(nn.Module):
    """Linear map of a flattened feature to `dim`, then L2 normalisation."""

    def __init__(self, dim_in: int, dim: int):
        super().__init__()
        self.linear = nn.Linear(dim_in, dim)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.linear(f.flatten(1)), dim=1)


class CRD(nn.Module):
    """Contrastive representation distillation (Tian et al. 2020) on penultimate features.

    Needs `ctx["idx"]`, the batch's row indices into the distillation inputs. The banks and log Z are buffers, so
    they travel in checkpoints; negatives come from the torch RNG, which checkpoints also hold. The banks are
    updated only in training mode, so evaluating the loss in eval mode leaves them as they are.
    """

    needs_features = True

    def __init__(self, student_dim: int, teacher_dim: int, n_data: int, feat_dim: int = 128, nce_k: int = 16384,
                 temperature: float = 0.07, momentum: float = 0.5):
        super().__init__()
        if n_data < 2:
            raise ValueError(f"crd needs at least 2 distillation rows to draw negatives from, got {n_data}")
        self.n_data, self.k = n_data, min(nce_k, n_data - 1)
        self.temperature, self.momentum = temperature, momentum
        self.embed_s, self.embed_t = Embed(student_dim, feat_dim), Embed(teacher_dim, feat_dim)
        stdv = 1.0 / math.sqrt(feat_dim / 3)  # uniform(-stdv, stdv): rows of unit norm in expectation
        self.register_buffer("bank_s", torch.rand(n_data, feat_dim) * 2 * stdv - stdv)
        self.register_buffer("bank_t", torch.rand(n_data, feat_dim) * 2 * stdv - stdv)
        self.register_buffer("log_z", torch.full((2,), math.nan))  # log Z of student anchors, of teacher anchors; NaN = unset

    def draw(self, idx: torch.Tensor) -> torch.Tensor:
        """(B, 1 + K) bank rows: each anchor's own row, then K rows drawn uniformly from the other N - 1."""
        neg = torch.randint(0, self.n_data - 1, (len(idx), self.k))
        neg = neg + (neg >= idx.unsqueeze(1)).long()  # skip the anchor's own row
        return torch.cat([idx.unsqueeze(1), neg], 1)

    def forward(self, ctx: dict) -> torch.Tensor:
        idx = ctx["idx"].long()
        vs, vt = self.embed_s(ctx["student_feat"]), self.embed_t(ctx["teacher_feat"].detach())
        rows = self.draw(idx)
        es = bank_scores(self.bank_t, rows, vs) / self.temperature  # log exp(v . m / tau): student anchor vs teacher bank
        et = bank_scores(self.bank_s, rows, vt) / self.temperature  # teacher anchor vs student bank
        with torch.no_grad():
            for i, e in enumerate((es, et)):
                if self.log_z[i].isnan():  # Z = mean(exp(e)) * N, in logs
                    self.log_z[i] = torch.logsumexp(e.flatten(), 0) - math.log(e.numel()) + math.log(self.n_data)
        loss = nce_loss(es - self.log_z[0], self.n_data) + nce_loss(et - self.log_z[1], self.n_data)
        if self.training:
            self.update(idx, vs.detach(), vt.detach())
        return loss

    @torch.no_grad()
    def update(self, idx: torch.Tensor, vs: torch.Tensor, vt: torch.Tensor) -> None:
        """M[i] <- norm(mu * M[i] + (1 - mu) * v_i) for both banks."""
        m = self.momentum
        self.bank_s[idx] = F.normalize(self.bank_s[idx] * m + vs * (1 - m), dim=1)
        self.bank_t[idx] = F.normalize(self.bank_t[idx] * m + vt * (1 - m), dim=1)
