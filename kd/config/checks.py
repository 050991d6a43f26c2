"""Params of the checks stage and of publication: drift, fairness, calibration, gates, registry."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field

from kd.config.base import Section


class DriftParams(Section):
    enabled: bool = True
    """run the Evidently drift checks"""
    # Share of drifted columns above which the data set is called drifted (Evidently DataDriftPreset).
    drift_share: float = Field(0.5, gt=0, le=1)
    """share of drifted columns at which the data set counts as drifted"""
    data_gap: Literal["fail", "warn", "off"] = "warn"
    """teacher training data vs the transfer set: fail, warn or off"""
    reference: Literal["fail", "warn", "off"] = "warn"
    """the champion's training data vs this run's: fail, warn or off"""


class FairnessParams(Section):
    enabled: bool = True
    """run the per-group fairness checks"""
    # Absolute bound on the student's equalized-odds difference (fairlearn).
    max_disparity: float = Field(0.2, ge=0, le=1)
    """bound on the student's disparity (fairlearn difference)"""
    # Bias amplification: student disparity - teacher disparity <= epsilon (Lukasik et al. 2021).
    max_amplification: float = Field(0.05, ge=0, le=1)
    """student disparity may exceed the teacher's by at most this (Lukasik et al. 2021)"""
    # Disparities between tiny groups are noise: a 19-row group should not decide a promotion.
    min_group_size: int = Field(30, ge=1)
    """test rows a group needs to count in the fairness gates (smaller groups are reported, not gated)"""
    metric: Literal["equalized_odds_difference", "demographic_parity_difference"] = "equalized_odds_difference"
    """disparity metric of both fairness gates"""


class CalibrationParams(Section):
    max_ece: float = Field(0.1, ge=0, le=1)
    """bound on the student's test ECE"""
    temperature_scaling: bool = True
    """also fit a temperature on the validation split and report ECE after it"""


class ChecksParams(Section):
    drift: DriftParams = Field(default_factory=DriftParams)
    fairness: FairnessParams = Field(default_factory=FairnessParams)
    calibration: CalibrationParams = Field(default_factory=CalibrationParams)


class GateParams(Section):
    """Promotion gates, in the manner of TFX's model blessing (Evaluator thresholds)."""

    min_accuracy: float = Field(0.0, ge=0, le=1)
    """student test accuracy at least this"""
    max_latency_ms: float = Field(1e9, gt=0)
    """student p50 latency at batch 1 at most this"""
    max_size_bytes: int = Field(10**12, gt=0)
    """student serialized size at most this"""
    min_retention: float = Field(0.0, ge=0, le=1.5, description="student acc >= r * teacher acc")
    max_champion_drop: float = Field(0.01, ge=0, le=1, description="student acc >= champion acc - delta")


class RegistryParams(Section):
    tracking_uri: str = ""
    """MLflow tracking and registry URI; empty: $MLFLOW_TRACKING_URI, else sqlite:///<project>/mlflow.db"""
    experiment: str = "kd"
    """MLflow experiment of the pipeline runs"""
    model_name: str = "kd-student"
    """registered model name of the students"""
    teacher_model_name: str = "kd-teacher"
    """registered model name of the teachers (linked from each student's lineage tags)"""

    def uri(self, root: str | Path) -> str:
        """The tracking and registry URI: the configured one, $MLFLOW_TRACKING_URI, or the project's SQLite file."""
        return self.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(Path(root) / 'mlflow.db').resolve()}"


