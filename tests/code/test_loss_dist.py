"""DIST (Huang et al. 2022) against numpy's Pearson correlation, and the invariances that define it."""

import numpy as np
import pytest
import torch

from kd import losses
from kd.config import DistillParams
from kd.losses.dist import DIST, dist_parts
from kd.losses.hinton import kd_div

S = np.array([[2.0, 0.5, -1.0, 0.3], [0.1, 0.2, 0.3, -0.4], [-1.0, 1.5, 0.0, 0.8]])
T_LOGITS = np.array([[1.0, 1.0, 0.0, -2.0], [-1.0, 2.0, 0.5, 0.0], [0.3, -0.2, 1.1, 0.4]])


def _softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _hand_parts(s_logits, t_logits, tau):
    """tau^2 * (1 - mean of row correlations), tau^2 * (1 - mean of column correlations), with np.corrcoef in float64."""
    ps, pt = _softmax(s_logits / tau), _softmax(t_logits / tau)  # the teacher's T=1 log-probs shift t_logits by a row constant
    inter = 1 - np.mean([np.corrcoef(ps[i], pt[i])[0, 1] for i in range(ps.shape[0])])
    intra = 1 - np.mean([np.corrcoef(ps[:, c], pt[:, c])[0, 1] for c in range(ps.shape[1])]) if len(ps) > 1 else np.nan
    return tau * tau * inter, tau * tau * intra


def _hand_dist(s_logits, t_logits, tau, beta, gamma):
    inter, intra = _hand_parts(s_logits, t_logits, tau)
    return beta * inter + gamma * intra


def _ctx(s_logits, t_logits):
    t_logp = torch.tensor(t_logits, dtype=torch.float32).log_softmax(1)  # the cache stores log-probabilities at T=1
    return {"student_logits": torch.tensor(s_logits, dtype=torch.float32), "teacher_logp": t_logp, "y": torch.full((len(s_logits),), -1)}


@pytest.mark.parametrize("tau,beta,gamma", [(1.0, 1.0, 1.0), (2.0, 0.5, 2.0), (4.0, 1.0, 0.0)])
def test_dist_equals_numpy_pearson_relations(tau, beta, gamma):
    got = DIST(tau, beta, gamma)(_ctx(S, T_LOGITS)).item()
    assert got == pytest.approx(_hand_dist(S, T_LOGITS, tau, beta, gamma), rel=1e-5)


@pytest.mark.parametrize("tau", [1.0, 3.0])
def test_dist_is_zero_for_the_teacher_mixed_with_uniform_where_kd_is_not(tau):
    """Pearson is invariant to one positive affine map of every row and column: a*p_t + (1-a)/C is such a map."""
    pt = _softmax(T_LOGITS / tau)
    s_logits = tau * np.log(0.3 * pt + 0.7 / pt.shape[1])  # softmax(s_logits / tau) = the mixture
    ctx = _ctx(s_logits, T_LOGITS)
    inter, intra = dist_parts(ctx["student_logits"], ctx["teacher_logp"], tau)
    assert (inter.item(), intra.item()) == pytest.approx((0.0, 0.0), abs=2e-5 * tau * tau)  # float32 rounding of 1 - rho
    assert kd_div(ctx["student_logits"], ctx["teacher_logp"], tau).item() > 0.01


def test_per_sample_mixtures_keep_inter_zero_but_not_intra():
    pt = _softmax(T_LOGITS)
    a = np.array([[0.9], [0.2], [0.5]])  # a different affine map per row: rows stay correlated, columns do not
    ctx = _ctx(np.log(a * pt + (1 - a) / pt.shape[1]), T_LOGITS)
    inter, intra = dist_parts(ctx["student_logits"], ctx["teacher_logp"], 1.0)
    assert inter.item() == pytest.approx(0.0, abs=1e-5)
    assert intra.item() > 0.01
    assert intra.item() == pytest.approx(_hand_parts(ctx["student_logits"].double().numpy(), T_LOGITS, 1.0)[1], rel=1e-4)


def test_reversed_ranking_costs_more_than_one():
    """Anti-correlated rows give 1 - rho > 1 (rho in [-1, 1], so each term lies in [0, 2] * tau^2)."""
    ctx = _ctx(-T_LOGITS, T_LOGITS)
    inter, _ = dist_parts(ctx["student_logits"], ctx["teacher_logp"], 1.0)
    assert 1.0 < inter.item() <= 2.0


def test_batch_of_one_has_no_intra_term_and_finite_gradients():
    s = torch.tensor(S[:1], dtype=torch.float32, requires_grad=True)
    ctx = {"student_logits": s, "teacher_logp": torch.tensor(T_LOGITS[:1], dtype=torch.float32).log_softmax(1), "y": torch.tensor([0])}
    loss = DIST(1.0, 1.0, 1.0)(ctx)
    loss.backward()
    assert loss.item() == pytest.approx(_hand_parts(S[:1], T_LOGITS[:1], 1.0)[0], rel=1e-5)
    assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0


def test_kd_plus_dist_is_the_weighted_sum_with_separate_temperatures():
    p = DistillParams(losses={"kd": 1.0, "dist": 0.5}, temperature=4.0, alpha=1.0, dist_temperature=1.0, dist_beta=2.0, dist_gamma=1.0)
    combo = losses.build(p)
    total, parts = combo(_ctx(S, T_LOGITS))
    assert not combo.needs_features
    assert parts["dist"] == pytest.approx(_hand_dist(S, T_LOGITS, 1.0, 2.0, 1.0), rel=1e-5)
    assert parts["kd"] == pytest.approx(kd_div(*(_ctx(S, T_LOGITS)[k] for k in ("student_logits", "teacher_logp")), 4.0).item(), rel=1e-5)  # float32 in both, summed in another order
    assert total.item() == pytest.approx(1.0 * parts["kd"] + 0.5 * parts["dist"], rel=1e-6)

