"""Losses against hand-computed values and their defining identities."""

import math

import pytest
import torch
import torch.nn.functional as F

from kd import losses
from kd.config import DistillParams
from kd.losses.attention import AttentionTransfer, attention_map
from kd.losses.dkd import DKD, dkd_parts
from kd.losses.hint import Hint, HintRegressor
from kd.losses.hinton import HintonKD, hinton_torch, kd_div
from kd.losses.pkt import pkt_loss
from kd.losses.rkd import rkd_angle, rkd_distance

S = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]])
T_LOGITS = torch.tensor([[1.0, 1.0, 0.0], [-1.0, 2.0, 0.5]])


def _hand_kl_t2(s, t, temp):
    total = 0.0
    for srow, trow in zip(s.tolist(), t.tolist()):
        ps = [math.exp(v / temp) for v in srow]
        pt = [math.exp(v / temp) for v in trow]
        ps = [v / sum(ps) for v in ps]
        pt = [v / sum(pt) for v in pt]
        total += sum(a * math.log(a / b) for a, b in zip(pt, ps))
    return total / len(s) * temp * temp


@pytest.mark.parametrize("temp", [1.0, 2.0, 4.0])
def test_kd_equals_hand_computed_kl_times_t_squared(temp):
    teacher_logp = T_LOGITS.log_softmax(1)  # the cache stores log-probabilities
    got = kd_div(S, teacher_logp, temp).item()
    assert got == pytest.approx(_hand_kl_t2(S, T_LOGITS, temp), rel=1e-5)


def test_kd_is_zero_when_student_equals_teacher():
    assert kd_div(T_LOGITS, T_LOGITS.log_softmax(1), 3.0).item() == pytest.approx(0.0, abs=1e-6)


def test_hinton_alpha_mixes_soft_and_hard_terms():
    y = torch.tensor([0, 1])
    ctx = {"student_logits": S, "teacher_logp": T_LOGITS.log_softmax(1), "y": y}
    soft, hard = kd_div(S, ctx["teacher_logp"], 4.0), F.cross_entropy(S, y)
    assert HintonKD(4.0, 0.7)(ctx).item() == pytest.approx((0.7 * soft + 0.3 * hard).item(), rel=1e-5)
    # unlabeled transfer rows (-1) contribute only the soft term
    ctx["y"] = torch.tensor([-1, -1])
    assert HintonKD(4.0, 0.7)(ctx).item() == pytest.approx(soft.item(), rel=1e-5)  # float32, summed in another order


@pytest.mark.parametrize("alpha,labels,spread", [(0.9, "all", 6), (0.7, "some", 6), (0.7, "none", 6), (1.0, "all", 6), (0.0, "some", 6),
                                                 (0.9, "all", 15), (0.9, "some", 400)])
def test_hinton_cpu_node_matches_the_torch_expression(alpha, labels, spread):
    """The one-node CPU form (closed-form gradient) against autograd through the torch expression in float64;
    a batch spread too wide for one shift per input (400: exponentials underflow) falls back to the torch form."""
    g = torch.Generator().manual_seed(3)
    s = (torch.randn(16, 7, generator=g) * spread).requires_grad_()
    t_logp = (torch.randn(16, 7, generator=g) * 4).log_softmax(1)
    y = torch.randint(0, 7, (16,), generator=g)
    y = {"all": y, "some": torch.where(torch.arange(16) % 3 == 0, -1, y), "none": torch.full((16,), -1)}[labels]
    fast = HintonKD(3.0, alpha)({"student_logits": s, "teacher_logp": t_logp, "y": y})
    assert fast.grad_fn.name().endswith("GivenBackward") == (spread < 400)
    (fast * 2.0).backward()  # the incoming gradient scales the closed form
    fast_grad, s.grad = s.grad.clone(), None
    ref = hinton_torch(s.double(), t_logp.double(), y, 3.0, alpha)
    (ref * 2.0).backward()
    assert fast.item() == pytest.approx(ref.item(), rel=1e-5)
    assert torch.allclose(fast_grad, s.grad.float(), atol=1e-6, rtol=1e-4)


def test_dkd_parts_reassemble_classical_kd():
    """Zhao et al. 2022 eq. 7: KD = TCKD + (1 - p_t^target) * NCKD, per sample."""
    temp, y = 2.0, torch.tensor([0, 2])
    t_logp = T_LOGITS.log_softmax(1)
    for i in range(2):
        tckd, nckd = dkd_parts(S[i : i + 1], t_logp[i : i + 1], y[i : i + 1], temp)
        pt_target = F.softmax(t_logp[i : i + 1] / temp, 1)[0, y[i]].item()
        kd = kd_div(S[i : i + 1], t_logp[i : i + 1], temp).item()
        assert (tckd + (1 - pt_target) * nckd).item() == pytest.approx(kd, rel=1e-4)


def test_dkd_zero_when_equal_and_weights_apply():
    y = torch.tensor([0, 1])
    t_logp = T_LOGITS.log_softmax(1)
    ctx = {"student_logits": T_LOGITS, "teacher_logp": t_logp, "y": y}
    assert DKD(4.0, 1.0, 8.0)(ctx).item() == pytest.approx(0.0, abs=1e-5)
    ctx["student_logits"] = S
    tckd, nckd = dkd_parts(S, t_logp, y, 4.0)
    assert DKD(4.0, 2.0, 3.0)(ctx).item() == pytest.approx((2 * tckd + 3 * nckd).item(), rel=1e-5)


@pytest.mark.parametrize("s_shape,t_shape", [((8,), (16,)), ((4, 4, 4), (8, 2, 2)), ((4, 3, 3), (12,)), ((5,), (2, 2, 2))])
def test_hint_regressor_maps_student_features_to_teacher_shape(s_shape, t_shape):
    reg = HintRegressor(s_shape, t_shape)
    fs, ft = torch.randn(3, *s_shape), torch.randn(3, *t_shape)
    assert reg(fs).shape == ft.shape
    loss = Hint(reg)({"student_feat": fs, "teacher_feat": ft})
    loss.backward()
    assert loss.item() > 0 and all(p.grad is not None for p in reg.parameters())


def test_attention_transfer_zero_for_same_map_and_pools_sizes():
    f = torch.randn(2, 4, 6, 6)
    at = AttentionTransfer()
    assert at({"student_feat": f, "teacher_feat": f * 3}).item() == pytest.approx(0.0, abs=1e-6)  # scale-free
    assert at({"student_feat": torch.randn(2, 4, 6, 6), "teacher_feat": torch.randn(2, 8, 3, 3)}).item() > 0
    assert torch.allclose(attention_map(f).norm(dim=1), torch.ones(2))


def test_relational_losses_are_invariant_to_scale_and_positive_otherwise():
    e = torch.randn(6, 5)
    assert rkd_distance(e * 4.0, e).item() == pytest.approx(0.0, abs=1e-6)
    assert rkd_angle(e * 4.0, e).item() == pytest.approx(0.0, abs=1e-6)
    assert rkd_distance(torch.randn(6, 3), e).item() > 0
    assert pkt_loss(e, e).item() == pytest.approx(0.0, abs=1e-6)
    assert pkt_loss(torch.randn(6, 3), e).item() > 0


def test_combined_is_weighted_sum_and_unknown_name_lists_choices():
    p = DistillParams(losses={"kd": 0.5, "ce": 2.0}, temperature=2.0, alpha=1.0)
    combo = losses.build(p)
    y = torch.tensor([0, 1])
    ctx = {"student_logits": S, "teacher_logp": T_LOGITS.log_softmax(1), "y": y}
    total, parts = combo(ctx)
    assert total.item() == pytest.approx(0.5 * parts["kd"] + 2.0 * parts["ce"], rel=1e-6)
    assert not combo.needs_features
    with pytest.raises(ValueError, match="expected some of ce, kd, dkd"):
        DistillParams(losses={"kld": 1.0})


def test_stored_reference_values():
    """Regression values computed once with this implementation (guards against silent formula changes)."""
    t_logp = T_LOGITS.log_softmax(1)
    y = torch.tensor([0, 2])
    assert kd_div(S, t_logp, 4.0).item() == pytest.approx(0.52811, rel=1e-4)
    tckd, nckd = dkd_parts(S, t_logp, y, 4.0)
    assert (tckd.item(), nckd.item()) == pytest.approx((0.18421, 0.50536), rel=1e-4)


def test_mixup_cross_entropy_weights_both_labels():
    """Mixed inputs (Zhang et al. 2018): lam * CE(y) + (1 - lam) * CE(y_mix), against a hand computation."""
    from kd.training import cross_entropy_loss

    def ce(row, label):
        return math.log(sum(math.exp(v) for v in row)) - row[label]

    batch = {"x": S, "y": torch.tensor([0, 2]), "y_mix": torch.tensor([1, 2]), "lam": torch.tensor([0.75, 0.6])}
    loss, parts = cross_entropy_loss(lambda x: x, batch)
    rows = S.tolist()
    hand = (0.75 * ce(rows[0], 0) + 0.25 * ce(rows[0], 1) + 0.6 * ce(rows[1], 2) + 0.4 * ce(rows[1], 2)) / 2
    assert loss.item() == pytest.approx(hand, rel=1e-6) and parts["ce"] == pytest.approx(hand, rel=1e-6)
    plain, _ = cross_entropy_loss(lambda x: x, {"x": S, "y": torch.tensor([0, -1])})  # unlabeled rows ignored
    assert plain.item() == pytest.approx(ce(rows[0], 0), rel=1e-6)
