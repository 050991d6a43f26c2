"""The core of the `checks` stage: data-gap drift, group fairness and calibration, each as gates.

Pure functions of arrays and params (no Prefect, no MLflow): the pipeline stage feeds them the
prepared data and the models' test predictions and logs what they write to `out_dir`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from kd.calibration import Bins, fit_temperature, softmax
from kd.config import Params
from kd.data import Prepared, row_batches
from kd.drift import MAX_ROWS, drift_gate, drift_report
from kd.fairness import fairness_checks
from kd.gates import Gate, at_most, skipped


def _jsonable(x):
    """numpy scalars/arrays -> Python, NaN/inf -> None (checks.json stays strict JSON)."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _frame(x: np.ndarray, names: list[str], max_rows: int, seed: int) -> pd.DataFrame:
    """A seeded sample of at most `max_rows` rows (read from the memory map, never the whole array)."""
    idx = np.arange(len(x)) if len(x) <= max_rows else np.sort(np.random.default_rng(seed).choice(len(x), max_rows, replace=False))
    return pd.DataFrame(np.asarray(x[idx], dtype=np.float64), columns=names)


def data_gap_drift(prep: Prepared, p: Params, out_dir: Path) -> tuple[dict | None, Gate]:
    """Covariate shift between the labelled training split and the unlabeled transfer set (Evidently).

    A transfer set far from the training data means the teacher's soft targets there are
    extrapolations (Hinton et al. 2015 distil on a transfer set assumed to match the task).
    """
    d = p.checks.drift
    if not d.enabled:
        return None, skipped("drift_data_gap", "checks.drift.enabled is false")
    if d.data_gap == "off":
        return None, skipped("drift_data_gap", "checks.drift.data_gap is off")
    if prep.x_transfer is None or len(prep.x_transfer) == 0:
        return None, skipped("drift_data_gap", "no transfer set: the student distils on the training split only")
    if p.data.is_text:
        return None, skipped("drift_data_gap", "text: the prepared inputs are token ids, not features a drift test reads")
    result = drift_report(
        _frame(prep.x["train"], prep.feature_names, MAX_ROWS, 0),
        _frame(prep.x_transfer, prep.feature_names, MAX_ROWS, 1),
        out_dir / "drift_data_gap.html",
        d.drift_share,
        title="train vs transfer set",
    )
    return result, drift_gate("drift_data_gap", result, d.data_gap)


def reference_drift(reference: pd.DataFrame, current: pd.DataFrame, p: Params, out_dir: Path,
                    text_columns: tuple[str, ...] | list[str] = ()) -> tuple[dict, Gate]:
    """Drift of this run's training features against the champion's (Evidently DataDriftPreset); free-text
    columns through their descriptors (`kd.text.descriptors`).

    Both tables must have the same feature columns; a different feature set is reported as a
    (failed, per checks.drift.reference) gate without running the tests.
    """
    d = p.checks.drift
    if not d.enabled:
        return {}, skipped("drift_reference", "checks.drift.enabled is false")
    if d.reference == "off":
        return {}, skipped("drift_reference", "checks.drift.reference is off")
    ref_cols, cur_cols = [str(c) for c in reference.columns], [str(c) for c in current.columns]
    if ref_cols != cur_cols:
        gone = [c for c in ref_cols if c not in cur_cols]
        new = [c for c in cur_cols if c not in ref_cols]
        detail = (
            f"feature columns differ from the champion's: removed {gone[:5]}, added {new[:5]}"
            if gone or new
            else "feature columns are in a different order than the champion's"
        )
        return {"schema_changed": True, "detail": detail}, Gate("drift_reference", False, None, None, d.reference, detail)
    result = drift_report(reference, current, out_dir / "drift_reference.html", d.drift_share, title="champion training data vs this run's",
                          text_columns=text_columns)
    result["report"] = "drift_reference.html"
    return result, drift_gate("drift_reference", result, d.reference)


def calibration_check(preds: dict[str, np.ndarray], prep: Prepared, p: Params) -> tuple[dict, Gate]:
    """Student ECE on the test split (Guo et al. 2017) and what temperature scaling would make of it.

    The gate uses the raw ECE: the deployed student outputs softmax(z), not softmax(z / T).
    """
    c, bins = p.checks.calibration, p.evaluate.ece_bins
    y_test = prep.y["test"]
    probs = preds.get("student_test")
    raw = _streamed_ece(probs if probs is not None else preds["student_test_logits"], y_test, bins, None if probs is not None else 1.0)
    out: dict = {"ece": raw, "bins": bins, "max_ece": c.max_ece}
    note = ""
    if c.temperature_scaling:
        if preds.get("student_val_logits") is None or preds.get("student_test_logits") is None:
            out["temperature_scaling"] = "skipped: student_val_logits / student_test_logits not given"
        else:
            t = fit_temperature(preds["student_val_logits"], prep.y["val"])
            after = _streamed_ece(preds["student_test_logits"], y_test, bins, t)
            out |= {"temperature": t, "ece_after_temperature": after}
            note = f"; temperature scaling T={t:.3g} (fit on val) would give {after:.4f}"
    gate = at_most("calibration_ece", raw, c.max_ece, detail=f"student test ECE {raw:.4f} <= {c.max_ece:g} ({bins} bins){note}")
    return out, gate


def _streamed_ece(values: np.ndarray, y: np.ndarray, bins: int, temperature: float | None) -> float:
    """ECE (Guo et al. 2017) over probabilities, or over softmax(logits / temperature), read a batch at a time."""
    acc = Bins(bins)
    for (_, v), (_, t) in zip(row_batches(values), row_batches(y)):
        acc.add(v if temperature is None else softmax(v.astype(np.float64), temperature), t)
    return acc.ece()


def sample_guarantee(rows: int, total: int, what: str, seeds: tuple[int, ...]) -> dict:
    """What a seeded sample of `rows` of `total` rows guarantees about each column: by the
    Dvoretzky-Kiefer-Wolfowitz inequality (Massart 1990), with probability >= 95% the sample's empirical CDF
    is within eps = sqrt(ln(2 / 0.05) / (2 rows)) of the full column's everywhere (sampling without
    replacement from the finite split only tightens it); eps = 0 when the sample is the whole split."""
    eps = 0.0 if rows >= total else math.sqrt(math.log(2 / 0.05) / (2 * max(rows, 1)))
    return {"rows": rows, "of": total, "exact": rows >= total, "seeds": list(seeds), "cdf_within": round(eps, 4), "confidence": 0.95,
            "how": f"a seeded sample of the {what} (Evidently renders per column; beyond {MAX_ROWS} rows it is sampled): "
                   f"each column's empirical CDF within {eps:.4f} of the full split's (DKW, 95%)"}


def run_checks(prep: Prepared, preds: dict[str, np.ndarray], p: Params, out_dir: Path) -> dict:
    """Drift (data gap), fairness (teacher vs student) and calibration gates; writes out_dir/checks.json.

    preds keys: 'teacher_test' and 'student_test' (probabilities N x C), 'student_val_logits',
    'student_test_logits'. Returns {"gates", "drift", "fairness", "calibration", "reports"} where
    reports maps a report name to its file name relative to out_dir.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    gates: list[Gate] = []
    reports: dict[str, str] = {}

    gap, g = data_gap_drift(prep, p, out_dir)
    gates.append(g)
    if gap is not None:
        gap["report"] = "drift_data_gap.html"
        reports["drift_data_gap"] = "drift_data_gap.html"

    fairness: dict = {}
    if not p.checks.fairness.enabled:
        gates.append(skipped("fairness", "checks.fairness.enabled is false"))
    else:
        models = {k: preds[f"{k}_test"] for k in ("teacher", "student", "scratch") if f"{k}_test" in preds}
        fairness, fg = fairness_checks(
            prep.y["test"],
            models,
            prep.groups.get("test", {}),
            prep.classes,
            p.checks.fairness,
            out_dir,
        )
        gates += fg
        reports |= {f"fairness_{attr}": r["chart"] for attr, r in fairness.items()}

    calibration, cg = calibration_check(preds, prep, p)
    gates.append(cg)
    n_test = len(prep.y["test"])
    coverage = {  # which rows each check read: a seeded sample where the library needs a DataFrame, else all
        "drift_data_gap": sample_guarantee(min(len(prep.x["train"]), MAX_ROWS), len(prep.x["train"]), "training split", seeds=(0, 1))
        | {"transfer_rows": 0 if prep.x_transfer is None else min(len(prep.x_transfer), MAX_ROWS)},
        "fairness": {"rows": n_test, "of": n_test, "exact": True,
                     "how": "every test row, as weighted (label, prediction, group) triples: fairlearn's weighted rates equal the per-row ones"},
        "calibration": {"rows": n_test, "of": n_test, "exact": True, "how": "every test row, read a batch at a time"},
    }

    result = _jsonable(
        {
            "gates": [x.to_dict() for x in gates],
            "drift": {"data_gap": gap},
            "fairness": fairness,
            "calibration": calibration,
            "coverage": coverage,
            "reports": reports,
        }
    )
    (out_dir / "checks.json").write_text(json.dumps(result, indent=2, allow_nan=False))
    return result
