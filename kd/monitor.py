"""Monitoring a deployed student from its prediction log: each signal a plain function of a window of
logged rows and the champion's bundles; `flows/monitor.py` orders them, logs them and decides.

The signals use the code the promotion gates use (Evidently drift from `kd.drift`, fairlearn group
metrics from `kd.fairness`), never a copy:
- data drift: the window's raw feature columns against the champion's training reference (free text
  through its descriptors: length, tokens, out-of-vocabulary share, character mix);
- prediction drift: the window's predicted classes and confidences against the reference's;
- accuracy and per-group fairness, on the rows whose label came back (`POST /feedback`);
- teacher-student disagreement: a sample of logged rows re-scored by the registered teacher — top-1
  disagreement and KL(teacher || student), per window and per sensitive group, against the same measure
  on the reference rows (a rising disagreement means the student is leaving the region where it matched
  its teacher, labels or not);
- a confidence-based accuracy estimate: the mean top-class probability after the temperature fitted on
  the validation split (Guo et al. 2017), which equals accuracy for a calibrated model on its own data;
  under shift calibration degrades (Ovadia et al. 2019), so it is reported with the test ECE as its caveat.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from kd.config import Params
from kd.drift import drift_gate, drift_report
from kd.gates import Gate, at_most, skipped


def probabilities(window: pd.DataFrame, classes: list[str]) -> np.ndarray:
    """The logged probabilities as an (N, C) array in `classes` order (logged as class -> probability)."""
    col = window["probabilities"]
    if len(col) and isinstance(col.iloc[0], dict):
        return np.array([[row.get(c, 0.0) for c in classes] for row in col], np.float64)
    return np.array(col.tolist(), np.float64).reshape(len(window), len(classes))


def data_drift(reference: pd.DataFrame, window: pd.DataFrame, features: list[str], p: Params, out: Path,
               text: tuple[str, ...] | list[str] = ()) -> tuple[dict, Gate]:
    """Raw feature columns of the window against the champion's training reference (Evidently DataDriftPreset);
    the `text` columns through their descriptors (`kd.text.descriptors`)."""
    m = p.monitor
    result = drift_report(reference[features], window[features], out / "data_drift.html", m.drift_share,
                          title="champion's training reference vs production window", text_columns=text)
    return result, drift_gate("data_drift", result, m.data_drift)


def prediction_drift(reference: pd.DataFrame, window: pd.DataFrame, p: Params, out: Path) -> tuple[dict, Gate]:
    """Predicted classes and top-class confidences of the window against those on the reference (Evidently)."""
    ref = pd.DataFrame({"prediction": reference["__prediction"].astype(str), "confidence": reference["__confidence"].astype(float)})
    cur = pd.DataFrame({"prediction": window["label"].astype(str), "confidence": window["confidence"].astype(float)})
    result = drift_report(ref, cur, out / "prediction_drift.html", 0.5, title="predictions: reference vs production window")
    return result, drift_gate("prediction_drift", result, p.monitor.prediction_drift)


def disagreement(teacher_probs: np.ndarray, student_probs: np.ndarray, groups: dict[str, np.ndarray] | None = None) -> dict:
    """Top-1 disagreement and mean KL(teacher || student) over rows, overall and per group of each attribute
    (the distillation objective of Hinton et al. 2015, measured where the student now works)."""
    t = np.clip(teacher_probs, 1e-12, 1.0)
    s = np.clip(student_probs, 1e-12, 1.0)
    differ = t.argmax(1) != s.argmax(1)
    kl = (t * (np.log(t) - np.log(s))).sum(1)
    out = {"rows": int(len(t)), "top1": float(differ.mean()) if len(t) else 0.0, "kl": float(kl.mean()) if len(t) else 0.0, "by_group": {}}
    for attr, g in (groups or {}).items():
        g = np.asarray(g).astype(str)
        out["by_group"][attr] = {str(v): {"rows": int((g == v).sum()), "top1": float(differ[g == v].mean()), "kl": float(kl[g == v].mean())}
                                 for v in np.unique(g)}
    return out


def disagreement_gate(window: dict, reference: dict, p: Params) -> Gate:
    rise = window["top1"] - reference["top1"]
    return at_most("teacher_disagreement", rise, p.monitor.max_disagreement_rise, action=p.monitor.disagreement,
                   detail=f"top-1 disagreement {window['top1']:.3f} on {window['rows']} logged rows vs {reference['top1']:.3f} "
                          f"on the training reference: +{rise:.3f} <= {p.monitor.max_disagreement_rise:g}")


def confidence_estimate(probs: np.ndarray, temperature: float) -> float:
    """Expected accuracy from confidence: mean max of softmax(log p / T) (Guo et al. 2017 temperature)."""
    if not len(probs):
        return float("nan")
    z = np.log(np.clip(probs, 1e-12, 1.0)) / temperature
    z -= z.max(1, keepdims=True)
    e = np.exp(z)
    return float((e / e.sum(1, keepdims=True)).max(1).mean())


def estimate_gate(estimate: float, test_accuracy: float, test_ece: float, p: Params) -> Gate:
    drop = test_accuracy - estimate
    return at_most("estimated_accuracy_drop", drop, p.monitor.max_estimated_drop, action=p.monitor.estimate,
                   detail=f"confidence-based estimate {estimate:.4f} vs test accuracy {test_accuracy:.4f}: drop {drop:+.4f} "
                          f"<= {p.monitor.max_estimated_drop:g} (caveat: calibration; test ECE {test_ece:.4f}, worse under shift)")


def feedback_quality(window: pd.DataFrame, classes: list[str], sensitive: list[str], test_accuracy: float, p: Params,
                     out: Path) -> tuple[dict, list[Gate]]:
    """Accuracy and per-group fairness on the rows whose true label came back (the gates' fairlearn code);
    with a `teacher_label` column (the teacher's class index per row), amplification against the teacher."""
    from kd.fairness import fairness_checks

    rows = window[window["feedback"].notna()] if "feedback" in window else window.iloc[:0]
    if len(rows) < p.monitor.min_feedback_rows:
        why = f"{len(rows)} rows with feedback, fewer than monitor.min_feedback_rows ({p.monitor.min_feedback_rows})"
        return {"rows": len(rows)}, [skipped("accuracy_drop", why), skipped("fairness", why)]
    index = {c: i for i, c in enumerate(classes)}
    known = rows["feedback"].astype(str).isin(index) & rows["label"].astype(str).isin(index)
    rows = rows[known]
    y = rows["feedback"].astype(str).map(index).to_numpy()
    pred = rows["label"].astype(str).map(index).to_numpy()
    acc = float((y == pred).mean())
    gates = [at_most("accuracy_drop", test_accuracy - acc, p.monitor.max_accuracy_drop, action=p.monitor.accuracy,
                     detail=f"accuracy {acc:.4f} on {len(rows)} labelled rows vs test {test_accuracy:.4f}")]
    preds = {"student": pred} | ({"teacher": rows["teacher_label"].astype(int).to_numpy()} if "teacher_label" in rows else {})
    groups = {s: rows[s].astype(str).to_numpy() for s in sensitive if s in rows.columns}
    fairness, fg = fairness_checks(y, preds, groups, classes, p.checks.fairness, out)
    return {"rows": int(len(rows)), "accuracy": acc, "fairness": fairness}, gates + [g for g in fg if not g.name.startswith("bias_vs_scratch")]
