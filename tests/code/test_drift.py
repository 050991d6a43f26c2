"""Drift detection with injected covariate shift, the drift gate, and no network use."""

from __future__ import annotations

import socket
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from toy_text import food_reviews, shout

from kd.drift import drift_gate, drift_report

COLS = [f"f{i}" for i in range(10)]
SHIFTED = COLS[:8]  # 8 of 10 columns shifted -> share 0.8 >= 0.5


@pytest.fixture(scope="module", autouse=True)
def no_network():
    """Any TCP/UDP connection attempt (telemetry, CDN fetch) fails the test."""

    def refuse(self, *args, **kwargs):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            raise AssertionError(f"network access attempted: {args}")
        return real(self, *args, **kwargs)

    real = socket.socket.connect
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", refuse)
        mp.setattr(socket.socket, "connect_ex", refuse)
        yield


def gaussian(n: int, seed: int, shift: float = 0.0) -> pd.DataFrame:
    x = np.random.default_rng(seed).normal(0, 1, (n, len(COLS)))
    x[:, : len(SHIFTED)] += shift  # unit std, so the shift is in std-devs
    return pd.DataFrame(x, columns=COLS)


def test_injected_shift_is_detected_and_blocks(tmp_path):
    res = drift_report(gaussian(600, 0), gaussian(400, 1, shift=1.5), tmp_path / "d.html", drift_share=0.5)
    assert res["dataset_drift"] is True
    assert res["drifted_share"] >= 0.8
    assert res["n_columns"] == 10
    assert all(res["columns"][c]["drifted"] for c in SHIFTED)
    assert set(res["columns"][COLS[0]]) == {"drifted", "score", "method", "threshold"}
    html = tmp_path / "d.html"
    assert html.exists() and html.stat().st_size > 10_000 and res["report"] == str(html)
    gate = drift_gate("drift_data_gap", res, "fail")
    assert gate.blocks and not gate.passed and gate.value == pytest.approx(res["drifted_share"])
    warn = drift_gate("drift_data_gap", res, "warn")
    assert not warn.passed and not warn.blocks


def test_same_distribution_passes(tmp_path):
    res = drift_report(gaussian(600, 0), gaussian(400, 1), tmp_path / "d.html", drift_share=0.5)
    assert res["dataset_drift"] is False
    assert res["drifted_share"] < 0.5
    assert res["subsampled"] == ""
    gate = drift_gate("drift_reference", res, "fail")
    assert gate.passed and not gate.blocks


def test_subsampling_is_reported_and_deterministic(tmp_path):
    ref, cur = gaussian(300, 0), gaussian(300, 1, shift=1.5)
    a = drift_report(ref, cur, tmp_path / "a.html", max_rows=120)
    b = drift_report(ref, cur, tmp_path / "b.html", max_rows=120)
    assert a["subsampled"] and a["rows"] == {"reference": 300, "current": 300}
    assert a["columns"] == b["columns"]
    assert a["dataset_drift"]


def test_gate_off_or_missing_is_skipped():
    g = drift_gate("drift_data_gap", None, "fail", "no transfer set")
    assert g.action == "skip" and g.passed and not g.blocks and g.detail == "no transfer set"
    g = drift_gate("drift_data_gap", {"dataset_drift": True}, "off")
    assert g.action == "skip" and not g.blocks


def test_column_mismatch_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="only in reference"):
        drift_report(gaussian(50, 0), gaussian(50, 1).drop(columns=["f3"]), tmp_path / "x.html")


def test_import_is_lazy():
    code = "import sys, kd.drift; assert 'evidently' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_text_descriptors_by_hand():
    from kd.text import descriptors

    d = descriptors(["Hello, World 42", "hello 🦜", None, "ÉTÉ à Paris"], "review")
    assert list(d.columns) == [f"review.{k}" for k in ("chars", "words", "tokens", "unk_share", "non_letter_share", "upper_share", "digit_share")]
    # "Hello, World 42": 15 chars, 3 words, WordPiece hello , world 42; 10 letters (2 upper), 2 spaces, 2 digits, 1 comma
    assert d.iloc[0].tolist() == pytest.approx([15, 3, 4, 0, 3 / 15, 2 / 10, 2 / 15])
    # the parrot is not in the uncased vocabulary: one [UNK] of 2 tokens; 1 of 7 chars neither letter nor space
    assert d.iloc[1].tolist() == pytest.approx([7, 2, 2, 0.5, 1 / 7, 0, 0])
    assert d.iloc[2].tolist() == [0, 0, 0, 0, 0, 0, 0]  # missing text: the empty string, no division by zero
    assert d.loc[3, "review.upper_share"] == pytest.approx(4 / 9)  # É T É P of 9 letters


def test_text_drift_is_read_through_descriptors(tmp_path):
    """Real reviews: another sample of the same reviews does not drift; shouted reviews with emoji drift on
    the character mix; reviews cut to 60 characters drift on length."""
    food = food_reviews()
    ref, same = food.iloc[:600], food.iloc[600:1000]
    res = drift_report(ref, same, tmp_path / "same.html", text_columns=["text"])
    assert not res["dataset_drift"] and res["n_columns"] == 7 and "text.unk_share" in res["columns"]
    shouted = same.assign(text=shout(same["text"]))
    res = drift_report(ref, shouted, tmp_path / "shouted.html", text_columns=["text"])
    assert res["dataset_drift"]
    assert all(res["columns"][f"text.{k}"]["drifted"] for k in ("unk_share", "upper_share", "digit_share", "non_letter_share"))
    short = same.assign(text=same["text"].str.slice(0, 60))
    res = drift_report(ref, short, tmp_path / "short.html", text_columns=["text"])
    assert all(res["columns"][f"text.{k}"]["drifted"] for k in ("chars", "words", "tokens"))


def test_text_column_must_exist(tmp_path):
    with pytest.raises(ValueError, match=r"text column\(s\) \['review'\]"):
        drift_report(gaussian(50, 0), gaussian(50, 1), tmp_path / "x.html", text_columns=["review"])
