"""The monitoring signals on known values: disagreement and KL, the confidence estimate, logged
probabilities, feedback accuracy; the drift signals run the gates' own Evidently code on shifted data."""

import math

import numpy as np
import pandas as pd
import pytest

from kd import monitor as M
from kd.config import Params


def test_disagreement_and_kl_by_hand():
    t = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    s = np.array([[0.7, 0.3], [0.6, 0.4], [0.6, 0.4]])
    out = M.disagreement(t, s, {"g": np.array(["a", "a", "b"])})
    kl = [0.9 * math.log(0.9 / 0.7) + 0.1 * math.log(0.1 / 0.3), 0.2 * math.log(0.2 / 0.6) + 0.8 * math.log(0.8 / 0.4), 0.0]
    assert out["top1"] == pytest.approx(1 / 3) and out["kl"] == pytest.approx(np.mean(kl))
    assert out["by_group"]["g"]["a"] == {"rows": 2, "top1": 0.5, "kl": pytest.approx(np.mean(kl[:2]))}
    assert out["by_group"]["g"]["b"]["top1"] == 0.0


def test_confidence_estimate_with_and_without_temperature():
    probs = np.array([[0.8, 0.2], [0.5, 0.5]])
    assert M.confidence_estimate(probs, 1.0) == pytest.approx(0.65)
    # T = 2: softmax(log p / 2) = sqrt(p) renormalised
    sharp = np.sqrt(probs) / np.sqrt(probs).sum(1, keepdims=True)
    assert M.confidence_estimate(probs, 2.0) == pytest.approx(sharp.max(1).mean())


def test_logged_probabilities_in_class_order():
    window = pd.DataFrame({"probabilities": [{"no": 0.3, "yes": 0.7}, {"yes": 0.1, "no": 0.9}]})
    np.testing.assert_allclose(M.probabilities(window, ["no", "yes"]), [[0.3, 0.7], [0.9, 0.1]])


def test_feedback_accuracy_gate_and_too_few_labels():
    p = Params.model_validate({"monitor": {"min_feedback_rows": 4, "max_accuracy_drop": 0.1}})
    window = pd.DataFrame({"label": ["a", "b", "a", "b", "a"], "feedback": ["a", "a", "a", "a", None]})
    out, gates = M.feedback_quality(window, ["a", "b"], [], test_accuracy=0.9, p=p, out=None)
    assert out["accuracy"] == 0.5 and out["rows"] == 4
    gate = gates[0]
    assert gate.name == "accuracy_drop" and gate.blocks and gate.value == pytest.approx(0.4)
    few = Params.model_validate({"monitor": {"min_feedback_rows": 10}})
    _, gates = M.feedback_quality(window, ["a", "b"], [], 0.9, few, None)
    assert all(g.action == "skip" for g in gates)


def test_data_drift_sees_a_shifted_window(tmp_path):
    rng = np.random.default_rng(0)
    ref = pd.DataFrame({"a": rng.normal(size=600), "b": rng.normal(size=600)})
    p = Params.model_validate({"monitor": {"drift_share": 0.5}})
    same, g_same = M.data_drift(ref, pd.DataFrame({"a": rng.normal(size=400), "b": rng.normal(size=400)}), ["a", "b"], p, tmp_path)
    moved, g_moved = M.data_drift(ref, pd.DataFrame({"a": rng.normal(3, 1, 400), "b": rng.normal(size=400) * 3}), ["a", "b"], p, tmp_path)
    assert g_same.passed and not g_moved.passed and g_moved.blocks
    assert moved["columns"]["a"]["drifted"] and moved["columns"]["b"]["drifted"] and (tmp_path / "data_drift.html").exists()
