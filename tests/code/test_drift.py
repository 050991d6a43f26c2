"""Drift detection with injected covariate shift, the drift gate, and no network use."""

from __future__ import annotations

import socket
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

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
