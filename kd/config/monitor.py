"""Params of monitoring (`kd monitor`, flows/monitor.py): the window of logged predictions, the signals'
thresholds, and what a breach does (start the retraining deployment, at most once per cooldown)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from kd.config.base import Section

Action = Literal["fail", "warn", "off"]


class MonitorParams(Section):
    window_hours: float = Field(24.0, gt=0)
    """the window of the prediction log a monitoring run reads (ending now)"""
    min_rows: int = Field(100, ge=1)
    """fewer logged predictions in the window: report, decide nothing"""
    max_rows: int = Field(20000, ge=10)
    """a seeded sample of at most this many logged rows is compared with the reference"""
    teacher_rows: int = Field(2000, ge=10)
    """logged rows the registered teacher re-scores for the disagreement signal"""
    drift_share: float = Field(0.5, gt=0, le=1)
    """share of drifted feature columns at which the window counts as drifted (Evidently)"""
    data_drift: Action = "fail"
    """window vs the champion's training reference: fail (starts retraining), warn or off"""
    prediction_drift: Action = "warn"
    """predicted classes and confidences vs those on the reference"""
    disagreement: Action = "fail"
    """teacher-student top-1 disagreement on logged rows vs on the reference"""
    max_disagreement_rise: float = Field(0.05, ge=0, le=1)
    """how much higher the window's disagreement may be than the reference's"""
    estimate: Action = "warn"
    """the confidence-based accuracy estimate (calibration caveat: reported, warn by default)"""
    max_estimated_drop: float = Field(0.05, ge=0, le=1)
    """estimated accuracy may fall this far below the test accuracy"""
    accuracy: Action = "fail"
    """accuracy on rows whose label came back (feedback)"""
    max_accuracy_drop: float = Field(0.05, ge=0, le=1)
    """accuracy on feedback may fall this far below the test accuracy"""
    min_feedback_rows: int = Field(50, ge=1)
    """labelled rows needed before accuracy and fairness on feedback are judged"""
    trigger: bool = True
    """start the retraining deployment when a signal set to fail is breached"""
    deployment: str = "kd-retrain/nightly"
    """the Prefect deployment a breach starts (flow/deployment name)"""
    cooldown_hours: float = Field(6.0, ge=0)
    """after starting a retraining run, do not start another for this long"""
    experiment: str = "kd-monitoring"
    """MLflow experiment of the monitoring runs (metrics, reports, decisions)"""
    transfer_export: bool = True
    """write the window's inputs to transfer_path (DVC-tracked) for the retraining run's transfer set"""
    transfer_path: str = "data/production"
    """a Parquet directory (DVC-tracked) the inputs go to; data.transfer: parquet:<this> distils on them"""
    transfer_max_rows: int = Field(100000, ge=1)
    """at most this many logged inputs are kept (the newest)"""
