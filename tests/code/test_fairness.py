"""Group metrics against hand counts, and the bias-amplification gate on an injected bias."""

from __future__ import annotations

import numpy as np
import pytest
from fairlearn.metrics import demographic_parity_difference, equalized_odds_difference

from kd.config import FairnessParams
from kd.fairness import fairness_checks, group_report

# Group a: 3/4 correct, group b: 1/4 correct; overall 4/8. A tool that reports the overall
# accuracy per group (Evidently's GroupBy(Accuracy())) would say 0.5 for both.
Y = np.array([0, 1, 1, 0, 1, 0, 1, 1])
P = np.array([0, 1, 0, 0, 0, 1, 1, 0])
G = np.array(["a", "a", "a", "a", "b", "b", "b", "b"])


def test_binary_group_metrics_match_hand_count():
    r = group_report(Y, P, G, ["no", "yes"])
    a, b = r["by_group"]["a"], r["by_group"]["b"]
    assert (a["n"], b["n"]) == (4, 4)
    assert a["accuracy"] == pytest.approx(3 / 4) and b["accuracy"] == pytest.approx(1 / 4)
    assert a["selection_rate"] == pytest.approx(1 / 4) and b["selection_rate"] == pytest.approx(2 / 4)
    assert a["tpr"] == pytest.approx(1 / 2) and b["tpr"] == pytest.approx(1 / 3)  # TP / positives
    assert a["fpr"] == pytest.approx(0.0) and b["fpr"] == pytest.approx(1.0)  # FP / negatives
    assert r["positive_class"] == "yes" and r["accuracy_difference"] == pytest.approx(0.5)
    assert r["demographic_parity_difference"] == pytest.approx(0.25)
    assert r["equalized_odds_difference"] == pytest.approx(1.0)
    # ... and agree with fairlearn's own functions
    assert r["demographic_parity_difference"] == pytest.approx(demographic_parity_difference(Y, P, sensitive_features=G))
    assert r["equalized_odds_difference"] == pytest.approx(equalized_odds_difference(Y, P, sensitive_features=G))


def test_multiclass_is_one_vs_rest_max_over_classes():
    y = np.array([0, 1, 2, 0, 1, 2, 0, 0])
    p = np.array([0, 1, 2, 0, 1, 1, 1, 0])
    g = np.array(["a", "a", "a", "a", "b", "b", "b", "b"])
    r = group_report(y, p, g, ["x", "y", "z"])
    assert r["task"] == "multiclass" and r["positive_class"] is None
    assert r["by_group"]["a"]["accuracy"] == pytest.approx(1.0) and r["by_group"]["b"]["accuracy"] == pytest.approx(0.5)
    # class z: a has TPR 1 (1/1), b has TPR 0 (0/1) -> EO 1.0; selection rates 1/4 vs 0 -> DP 0.25
    z = r["per_class"]["z"]
    assert z["equalized_odds_difference"] == pytest.approx(1.0)
    assert z["demographic_parity_difference"] == pytest.approx(0.25)
    # class y: selection rates 1/4 (a) vs 3/4 (b) -> DP 0.5, the worst class
    assert r["demographic_parity_difference"] == pytest.approx(0.5) and r["worst_class"]["demographic_parity_difference"] == "y"
    assert r["equalized_odds_difference"] == pytest.approx(max(c["equalized_odds_difference"] for c in r["per_class"].values()))


def test_undefined_rate_is_not_counted_as_zero():
    # group b has no positives of class 1: its TPR is undefined, not 0 (which would give EO 1.0)
    y = np.array([1, 1, 0, 0, 0, 0])
    p = np.array([1, 1, 0, 0, 0, 0])
    g = np.array(["a", "a", "a", "b", "b", "b"])
    r = group_report(y, p, g, ["0", "1"])
    assert r["by_group"]["b"]["tpr"] is None
    assert r["equalized_odds_difference"] == pytest.approx(0.0)


def _biased_predictions(seed: int = 0, n: int = 2000):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    g = np.where(rng.random(n) < 0.5, "a", "b")
    teacher = np.where(rng.random(n) < 0.9, y, rng.integers(0, 3, n))  # errors independent of the group
    student = teacher.copy()
    hit = (g == "b") & (rng.random(n) < 0.4)
    student[hit] = 0  # the student pushes group b to class 0
    return y, g, teacher, student


def test_bias_amplification_fails_for_biased_student(tmp_path):
    y, g, teacher, student = _biased_predictions()
    res, gates = fairness_checks(y, {"teacher": teacher, "student": student, "scratch": teacher}, {"group": g}, ["c0", "c1", "c2"],
                                 FairnessParams(), tmp_path)
    by = {x.name: x for x in gates}
    assert set(by) == {"fairness_group", "bias_amplification_group", "bias_vs_scratch_group"}
    assert by["bias_vs_scratch_group"].blocks  # the scratch model (here: as fair as the teacher) is fairer too
    t, s = res["group"]["teacher"], res["group"]["student"]
    assert t["equalized_odds_difference"] < 0.1
    assert by["bias_amplification_group"].blocks
    assert by["bias_amplification_group"].value == pytest.approx(s["equalized_odds_difference"] - t["equalized_odds_difference"])
    assert by["fairness_group"].blocks  # the student's disparity (~0.4) is over 0.2 too
    assert s["by_group"]["b"]["accuracy"] < t["by_group"]["b"]["accuracy"] - 0.15
    assert abs(s["by_group"]["a"]["accuracy"] - t["by_group"]["a"]["accuracy"]) < 1e-12
    assert (tmp_path / "fairness_group.png").stat().st_size > 5_000


def test_identical_student_has_zero_amplification(tmp_path):
    y, g, teacher, _ = _biased_predictions()
    probs = np.eye(3)[teacher] * 0.8 + 0.2 / 3  # probabilities are accepted too
    p = FairnessParams(metric="demographic_parity_difference")
    res, gates = fairness_checks(y, {"teacher": probs, "student": teacher, "scratch": teacher}, {"group": g}, ["c0", "c1", "c2"], p, tmp_path)
    assert res["group"]["metric"] == "demographic_parity_difference"
    amp = next(x for x in gates if x.name == "bias_amplification_group")
    assert amp.value == pytest.approx(0.0) and amp.passed
    assert not any(x.blocks for x in gates)


def test_no_sensitive_attributes_is_one_skipped_gate(tmp_path):
    res, gates = fairness_checks(Y, {"teacher": P, "student": P}, {}, ["no", "yes"], FairnessParams(), tmp_path)
    assert res == {} and len(gates) == 1 and gates[0].action == "skip" and not gates[0].blocks


def test_small_groups_are_reported_not_gated(tmp_path):
    """A 19-row group must not decide a promotion: its rates are reported, the gates use the big groups."""
    y, g, teacher, student = _biased_predictions()
    g = g.astype(object)
    tiny = np.flatnonzero(g == "a")[:19]
    g[tiny] = "tiny"
    student = student.copy()
    student[tiny] = (y[tiny] + 1) % 3  # the student is always wrong on the tiny group
    res, gates = fairness_checks(y, {"teacher": teacher, "student": student, "scratch": teacher}, {"group": g}, ["c0", "c1", "c2"],
                                 FairnessParams(min_group_size=30), tmp_path)
    r = res["group"]
    assert r["small_groups"] == {"tiny": 19} and r["student"]["by_group"]["tiny"]["accuracy"] == 0.0
    gated_groups = set(group_report(y[g != "tiny"], student[g != "tiny"], g[g != "tiny"], ["c0", "c1", "c2"])["by_group"])
    assert gated_groups == {"a", "b"}
    by = {x.name: x for x in gates}
    expected = group_report(y[g != "tiny"], student[g != "tiny"], g[g != "tiny"], ["c0", "c1", "c2"])["equalized_odds_difference"]
    assert by["fairness_group"].value == pytest.approx(expected) and "not gated: ['tiny']" in by["fairness_group"].detail


def test_too_few_big_groups_skip_the_gates_with_the_sizes(tmp_path):
    y, g, teacher, student = _biased_predictions(n=200)
    res, gates = fairness_checks(y, {"teacher": teacher, "student": student, "scratch": teacher}, {"group": g}, ["c0", "c1", "c2"],
                                 FairnessParams(min_group_size=150), tmp_path)
    assert len(gates) == 3 and all(x.action == "skip" and not x.blocks for x in gates)
    assert "min_group_size" in gates[0].detail and "'a':" in gates[0].detail


def test_student_as_unfair_as_scratch_is_not_blamed_on_distillation(tmp_path):
    """Small models can be less fair than the teacher on their own: amplification vs the teacher fails,
    the comparison with the scratch student (the same small model, no teacher) passes."""
    y, g, teacher, student = _biased_predictions()
    res, gates = fairness_checks(y, {"teacher": teacher, "student": student, "scratch": student.copy()}, {"group": g},
                                 ["c0", "c1", "c2"], FairnessParams(), tmp_path)
    by = {x.name: x for x in gates}
    assert by["bias_amplification_group"].blocks and by["bias_vs_scratch_group"].passed
    assert by["bias_vs_scratch_group"].value == pytest.approx(0.0)
