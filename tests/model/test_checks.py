"""The checks stage end to end on synthetic data: injected covariate shift, biased student, calibration."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

from kd.calibration import ece, softmax
from kd.checks import reference_drift, run_checks
from kd.config import DataParams, Params, SyntheticParams
from kd.data import Prepared, prepare, split
from kd.sources import synthetic


def make_prep(shift: float) -> Prepared:
    dp = DataParams(
        source="synthetic",
        synthetic=SyntheticParams(n_samples=2000, n_features=8, n_classes=3, n_transfer=500, transfer_shift=shift, class_sep=1.0),
    )
    return prepare(split(synthetic(dp, seed=0), dp, seed=0), dp)


def predictions(prep: Prepared, overconfidence: float = 1.0) -> dict[str, np.ndarray]:
    """A logistic-regression 'teacher' and a 'student' with the same ranking but scaled logits."""
    clf = LogisticRegression(max_iter=500).fit(prep.x["train"], prep.y["train"])
    z_val, z_test = clf.decision_function(prep.x["val"]), clf.decision_function(prep.x["test"])
    return {
        "teacher_test": softmax(z_test),
        "student_test": softmax(z_test * overconfidence),
        "student_val_logits": z_val * overconfidence,
        "student_test_logits": z_test * overconfidence,
    }


def params(**checks) -> Params:
    p = Params()
    p.checks.drift.data_gap = checks.get("data_gap", "fail")
    p.checks.calibration.max_ece = checks.get("max_ece", 0.1)
    return p


@pytest.fixture(scope="module")
def shifted():
    return make_prep(shift=1.5)


@pytest.fixture(scope="module")
def unshifted():
    return make_prep(shift=0.0)


def gates_by_name(result: dict) -> dict[str, dict]:
    return {g["name"]: g for g in result["gates"]}


def test_shifted_transfer_set_blocks(shifted, tmp_path):
    res = run_checks(shifted, predictions(shifted), params(), tmp_path)
    g = gates_by_name(res)["drift_data_gap"]
    assert g["action"] == "fail" and not g["passed"]
    assert res["drift"]["data_gap"]["dataset_drift"] and res["drift"]["data_gap"]["drifted_share"] >= 0.8
    assert (tmp_path / "drift_data_gap.html").exists() and res["reports"]["drift_data_gap"] == "drift_data_gap.html"
    on_disk = json.loads((tmp_path / "checks.json").read_text())
    assert on_disk["gates"] == res["gates"]


def test_same_distribution_transfer_set_passes(unshifted, tmp_path):
    preds = predictions(unshifted)
    res = run_checks(unshifted, preds, params(), tmp_path)
    by = gates_by_name(res)
    assert by["drift_data_gap"]["passed"]
    # identical teacher/student predictions: fairness gates present, no amplification
    assert by["bias_amplification_group"]["value"] == pytest.approx(0.0) and by["bias_amplification_group"]["passed"]
    assert (tmp_path / "fairness_group.png").exists() and res["reports"]["fairness_group"] == "fairness_group.png"
    assert res["fairness"]["group"]["student"]["by_group"]["a"]["n"] + res["fairness"]["group"]["student"]["by_group"]["b"]["n"] == len(
        unshifted.y["test"]
    )


def test_no_transfer_set_or_off_is_skipped(unshifted, tmp_path):
    no_transfer = Prepared(**{**unshifted.__dict__, "x_transfer": None})
    p = params()
    p.checks.fairness.enabled = False
    res = run_checks(no_transfer, predictions(unshifted), p, tmp_path)
    by = gates_by_name(res)
    assert by["drift_data_gap"]["action"] == "skip" and "no transfer set" in by["drift_data_gap"]["detail"]
    assert by["fairness"]["action"] == "skip"
    assert res["drift"]["data_gap"] is None and not (tmp_path / "drift_data_gap.html").exists()


def test_biased_student_fails_amplification(unshifted, tmp_path):
    preds = predictions(unshifted)
    g = unshifted.groups["test"]["group"]
    rng = np.random.default_rng(1)
    biased = preds["student_test"].copy()
    hit = (g == "b") & (rng.random(len(g)) < 0.5)
    biased[hit] = np.eye(unshifted.n_classes)[0]  # the student sends half of group b to class 0
    p = params(data_gap="off")
    res = run_checks(unshifted, preds | {"student_test": biased}, p, tmp_path)
    by = gates_by_name(res)
    assert by["drift_data_gap"]["action"] == "skip"
    amp = by["bias_amplification_group"]
    assert amp["action"] == "fail" and not amp["passed"] and amp["value"] > p.checks.fairness.max_amplification


def test_overconfident_student_fails_calibration_and_temperature_helps(unshifted, tmp_path):
    preds = predictions(unshifted, overconfidence=8.0)
    p = params(data_gap="off", max_ece=0.05)
    res = run_checks(unshifted, preds, p, tmp_path)
    cal, gate = res["calibration"], gates_by_name(res)["calibration_ece"]
    assert cal["ece"] == pytest.approx(ece(preds["student_test"], unshifted.y["test"], p.evaluate.ece_bins))
    assert cal["ece"] > 0.05 and not gate["passed"] and gate["value"] == pytest.approx(cal["ece"])  # raw ECE gates
    assert cal["temperature"] > 2.0  # undoes most of the x8 scaling
    assert cal["ece_after_temperature"] < cal["ece"] / 2
    calibrated = run_checks(unshifted, predictions(unshifted), params(data_gap="off"), tmp_path / "ok")
    assert gates_by_name(calibrated)["calibration_ece"]["passed"]


def test_reference_drift(shifted, unshifted, tmp_path):
    names = unshifted.feature_names
    ref = pd.DataFrame(unshifted.x["train"], columns=names)
    p = params()
    p.checks.drift.reference = "fail"
    res, gate = reference_drift(ref, pd.DataFrame(shifted.x_transfer, columns=names), p, tmp_path)
    assert gate.name == "drift_reference" and gate.blocks and (tmp_path / "drift_reference.html").exists()
    res, gate = reference_drift(ref, pd.DataFrame(unshifted.x["val"], columns=names), p, tmp_path)
    assert gate.passed and res["report"] == "drift_reference.html"
    res, gate = reference_drift(ref, ref.drop(columns=[names[0]]), p, tmp_path)
    assert gate.blocks and res["schema_changed"] and names[0] in gate.detail
    p.checks.drift.reference = "off"
    assert reference_drift(ref, ref, p, tmp_path)[1].action == "skip"


def test_reference_drift_reads_text_through_its_descriptors(tmp_path):
    from toy_text import food_reviews, shout

    food = food_reviews()
    ref, cur = food.iloc[:600], food.iloc[600:1000]
    p = params()
    p.checks.drift.reference = "fail"
    res, gate = reference_drift(ref, cur, p, tmp_path, ["text"])
    assert gate.passed and "text.tokens" in res["columns"]
    res, gate = reference_drift(ref, cur.assign(text=shout(cur["text"])), p, tmp_path, ["text"])
    assert gate.blocks and res["columns"]["text.upper_share"]["drifted"]
