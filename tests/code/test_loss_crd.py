"""CRD (Tian et al. 2020) against a numpy recomputation, and the memory bank's behaviour."""

import io

import numpy as np
import pytest
import torch

from kd import losses
from kd.config import ConfigError, DistillParams, parse_params
from kd.losses.crd import CRD, bank_scores, nce_loss


def _unit(a):
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


def _hand_nce(h, n):
    """-(1/B) * sum_b [ log(h_b0 / (h_b0 + K/N)) + sum_j log((K/N) / (h_bj + K/N)) ], written out."""
    k = h.shape[1] - 1
    total = 0.0
    for row in h:
        total += np.log(row[0] / (row[0] + k / n))
        total += sum(np.log((k / n) / (v + k / n)) for v in row[1:])
    return -total / h.shape[0]


def test_nce_loss_equals_the_formula_by_hand():
    h = np.array([[0.5, 0.1, 0.2, 0.05], [0.02, 0.3, 0.01, 0.4]])
    assert nce_loss(torch.tensor(np.log(h)), 10).item() == pytest.approx(_hand_nce(h, 10), rel=1e-12)


def test_nce_loss_stays_finite_where_exp_of_the_scores_would_not():
    """Log-scores of +-100 (v.m/tau at tau = 0.01): e^100 is inf in float32 and e^-100 is 0, the loss stays finite."""
    log_h = torch.tensor([[100.0, -100.0, 90.0], [-100.0, 100.0, -95.0]])
    # by hand, K/N = 2/8: log(h/(h + K/N)) is 0 for h = e^100 and -100 - log(K/N) for h = e^-100;
    # log((K/N)/(h + K/N)) is 0 for h = e^-100 or e^-95 and log(K/N) - 90 for h = e^90, log(K/N) - 100 for e^100
    c = np.log(2 / 8)
    hand = -((0.0 + 0.0 + (c - 90)) + ((-100 - c) + (c - 100) + 0.0)) / 2
    assert nce_loss(log_h, 8).item() == pytest.approx(hand, rel=1e-6)


@pytest.mark.parametrize("k", [3, 20])  # N = 50, D = 4: gathered rows for K = 3 (N > 4 * 4), the whole bank for K = 20
def test_bank_scores_are_dot_products_with_the_drawn_rows(k):
    g = np.random.default_rng(0)
    bank, v = g.normal(size=(50, 4)), g.normal(size=(3, 4))
    rows = g.integers(0, 50, (3, 1 + k))
    expected = np.array([[bank[r] @ v[b] for r in rows[b]] for b in range(3)])
    got = bank_scores(torch.tensor(bank), torch.tensor(rows), torch.tensor(v))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12)


def _crd(n=5, s_dim=3, t_dim=2, feat_dim=4, nce_k=100, temperature=0.5, momentum=0.3, seed=0):
    torch.manual_seed(seed)
    return CRD(s_dim, t_dim, n, feat_dim, nce_k, temperature, momentum).double()


def test_crd_forward_and_bank_update_match_numpy():
    crd = _crd()
    assert crd.k == 4  # nce_k = 100 clipped to N - 1
    g = np.random.default_rng(1)
    ws, bs, wt, bt = g.normal(size=(4, 3)), g.normal(size=4), g.normal(size=(4, 2)), g.normal(size=4)
    mem_s, mem_t = g.normal(size=(5, 4)), g.normal(size=(5, 4))
    fs, ft = g.normal(size=(2, 3)), g.normal(size=(2, 2))
    idx = np.array([3, 0])
    rows = np.array([[3, 1, 1, 4, 0], [0, 2, 3, 3, 1]])  # anchor first, then K = 4 negatives
    with torch.no_grad():
        for lin, w, b in ((crd.embed_s.linear, ws, bs), (crd.embed_t.linear, wt, bt)):
            lin.weight.copy_(torch.tensor(w)), lin.bias.copy_(torch.tensor(b))
        crd.bank_s.copy_(torch.tensor(mem_s)), crd.bank_t.copy_(torch.tensor(mem_t))
    crd.draw = lambda _idx: torch.tensor(rows)
    ctx = {"student_feat": torch.tensor(fs), "teacher_feat": torch.tensor(ft), "idx": torch.tensor(idx)}
    got = crd(ctx).item()

    vs, vt = _unit(fs @ ws.T + bs), _unit(ft @ wt.T + bt)
    hs = np.exp(np.array([[mem_t[r] @ vs[b] for r in rows[b]] for b in range(2)]) / 0.5)  # student anchor, teacher bank
    ht = np.exp(np.array([[mem_s[r] @ vt[b] for r in rows[b]] for b in range(2)]) / 0.5)  # teacher anchor, student bank
    zs, zt = hs.mean() * 5, ht.mean() * 5
    assert got == pytest.approx(_hand_nce(hs / zs, 5) + _hand_nce(ht / zt, 5), rel=1e-9)
    np.testing.assert_allclose(crd.log_z.numpy(), np.log([zs, zt]), rtol=1e-12)
    exp_s, exp_t = mem_s.copy(), mem_t.copy()
    exp_s[idx] = _unit(0.3 * mem_s[idx] + 0.7 * vs)
    exp_t[idx] = _unit(0.3 * mem_t[idx] + 0.7 * vt)
    np.testing.assert_allclose(crd.bank_s.numpy(), exp_s, rtol=1e-12)  # untouched rows unchanged too
    np.testing.assert_allclose(crd.bank_t.numpy(), exp_t, rtol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(crd.bank_s.numpy()[idx], axis=1), 1.0, rtol=1e-12)

    # Z is estimated once: a second batch with other features keeps it
    crd({"student_feat": torch.tensor(fs) * 3 + 1, "teacher_feat": torch.tensor(ft) - 2, "idx": torch.tensor(idx)})
    np.testing.assert_allclose(crd.log_z.numpy(), np.log([zs, zt]), rtol=1e-12)


def test_loss_falls_as_the_student_embedding_moves_toward_the_teacher_bank_row():
    crd = _crd(n=8, s_dim=4, t_dim=4, feat_dim=4).eval()  # eval: no bank update between the three evaluations
    with torch.no_grad():
        crd.embed_s.linear.weight.copy_(torch.eye(4)), crd.embed_s.linear.bias.zero_()  # v_s = f_s / |f_s|
        crd.log_z.fill_(0.0)
    crd.draw = lambda idx: torch.tensor([[2, 0, 1, 3, 4, 5, 6, 7]])
    target = crd.bank_t[2].clone()
    away = torch.randn(4, dtype=torch.float64)
    ft = torch.randn(1, 4, dtype=torch.float64)
    values = [crd({"student_feat": ((1 - a) * away + a * target)[None], "teacher_feat": ft, "idx": torch.tensor([2])}).item()
              for a in (0.0, 0.5, 0.9, 1.0)]
    assert values == sorted(values, reverse=True) and values[0] - values[-1] > 0.1
    assert torch.equal(crd.bank_t[2], target)  # eval mode left the bank alone


def test_negatives_are_uniform_over_the_other_rows_and_k_is_clipped():
    torch.manual_seed(0)
    assert CRD(3, 3, 10, 4, nce_k=4).k == 4 and CRD(3, 3, 10, 4, nce_k=50).k == 9
    crd = CRD(3, 3, 6, 4, nce_k=1000)
    idx = torch.tensor([0, 3, 5])
    rows = torch.cat([crd.draw(idx) for _ in range(400)])  # 1200 anchors x 5 negatives
    assert rows.shape[1] == 1 + 5 and torch.equal(rows[:, 0], idx.repeat(400))
    assert not (rows[:, 1:] == rows[:, :1]).any()  # never the anchor itself
    for a in (0, 3, 5):
        neg = rows[rows[:, 0] == a, 1:].flatten()
        counts = np.bincount(neg.numpy(), minlength=6)
        others = np.delete(counts, a)
        assert counts[a] == 0 and np.all(np.abs(others / len(neg) - 1 / 5) < 0.03), counts
    with pytest.raises(ValueError, match="at least 2 distillation rows"):
        CRD(3, 3, 1, 4)


def test_gradients_reach_both_embedding_heads_not_the_banks_or_the_teacher():
    crd = _crd(n=6)
    fs = torch.randn(3, 3, dtype=torch.float64, requires_grad=True)
    ft = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    crd({"student_feat": fs, "teacher_feat": ft, "idx": torch.tensor([0, 4, 5])}).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in crd.parameters())
    assert fs.grad.abs().sum() > 0 and ft.grad is None
    assert not crd.bank_s.requires_grad and not crd.bank_t.requires_grad


def test_banks_and_z_are_state_so_a_reloaded_loss_continues_exactly():
    crd = _crd(n=7)
    batches = [{"student_feat": torch.randn(2, 3, dtype=torch.float64), "teacher_feat": torch.randn(2, 2, dtype=torch.float64),
                "idx": torch.tensor(i)} for i in ([0, 1], [2, 6], [3, 1])]
    crd(batches[0])
    buf = io.BytesIO()
    torch.save(crd.state_dict(), buf)
    assert {"bank_s", "bank_t", "log_z"} <= set(crd.state_dict())
    torch.manual_seed(5)
    expected = [crd(b).item() for b in batches[1:]]
    fresh = _crd(n=7, seed=99)
    buf.seek(0)
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    torch.manual_seed(5)
    assert [fresh(b).item() for b in batches[1:]] == expected


def test_build_sizes_crd_from_shapes_and_rows_and_combines_it():
    p = DistillParams(losses={"ce": 1.0, "crd": 0.8}, crd_feat_dim=16, crd_nce_k=4096)
    with pytest.raises(ValueError, match="number of distillation rows"):
        losses.build(p, ((8,), (2, 3, 3)))
    combo = losses.build(p, ((8,), (2, 3, 3)), n_rows=30)
    crd = combo.terms["crd"]
    assert combo.needs_features and crd.k == 29 and crd.bank_s.shape == (30, 16)
    assert crd.embed_s.linear.in_features == 8 and crd.embed_t.linear.in_features == 18
    assert {n for n, _ in combo.named_parameters()} >= {"terms.crd.embed_s.linear.weight", "terms.crd.embed_t.linear.weight"}
    ctx = {"student_logits": torch.randn(4, 3), "y": torch.tensor([0, 2, -1, 1]), "teacher_logp": torch.randn(4, 3).log_softmax(1),
           "student_feat": torch.randn(4, 8), "teacher_feat": torch.randn(4, 2, 3, 3), "idx": torch.tensor([5, 0, 29, 7])}
    total, parts = combo(ctx)
    assert total.item() == pytest.approx(parts["ce"] + 0.8 * parts["crd"], rel=1e-6)


def test_unknown_loss_lists_the_new_names_and_impossible_values_name_their_key():
    with pytest.raises(ValueError, match="expected some of ce, kd, dkd, dist, hint, at, rkd, pkt, crd"):
        DistillParams(losses={"crd2": 1.0})
    for key, value in (("crd_feat_dim", 0), ("crd_nce_k", 0), ("crd_temperature", 0.0), ("crd_momentum", 1.0),
                       ("dist_temperature", -1.0), ("dist_beta", -0.5), ("dist_gamma", -1.0)):
        with pytest.raises(ConfigError, match=rf"distill\.{key}: "):
            parse_params({"distill": {key: value}})
    with pytest.raises(ConfigError, match=r"distill\.losses: .*no negative weights"):
        parse_params({"distill": {"losses": {"kd": 1.0, "dist": -1.0}}})
