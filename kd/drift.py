"""Data drift between two feature tables with Evidently's `DataDriftPreset` (Evidently 0.7 API).

Evidently picks a statistical test per column (K-S / chi-square for <= 1000 reference rows,
normed Wasserstein / Jensen-Shannon distance above; Z-test for binary columns) and calls the data
set drifted when the share of drifted columns reaches `drift_share`. A free-text column is compared through
its numeric descriptors (`kd.text.descriptors`: length, words, tokens, out-of-vocabulary share, character
mix), as Evidently's text descriptors do: no test reads unique strings. Evidently is imported lazily:
it takes ~5 s to import. Its telemetry (used by its UI service, not by reports) is disabled via
`DO_NOT_TRACK` / `ITERATIVE_DO_NOT_TRACK` before the import; the saved HTML is self-contained.
"""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from kd.gates import Gate, skipped

# Rendering is per column (plotly) and grows with rows; beyond this many rows per side we subsample.
MAX_ROWS = 5000
SUBSAMPLE_SEED = 0


def _evidently():
    """Import Evidently with its usage telemetry switched off (evidently.telemetry, iterative_telemetry)."""
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("ITERATIVE_DO_NOT_TRACK", "1")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation noise from its UI dependencies (litestar, numpy.core)
        from evidently import DataDefinition, Dataset, Report
        from evidently.presets import DataDriftPreset

    return DataDefinition, Dataset, Report, DataDriftPreset


def _subsample(df: pd.DataFrame, max_rows: int, seed: int) -> pd.DataFrame:
    if len(df) <= max_rows:
        return df
    idx = np.sort(np.random.default_rng(seed).choice(len(df), max_rows, replace=False))
    return df.iloc[idx].reset_index(drop=True)


def _describe_text(frame: pd.DataFrame, text_columns: list[str]) -> pd.DataFrame:
    """`frame` with each text column replaced, at its position, by its numeric descriptors."""
    from kd.text import descriptors

    missing = [c for c in text_columns if c not in frame.columns]
    if missing:
        raise ValueError(f"drift: text column(s) {missing} not in the table")
    parts = [descriptors(frame[c], c) if c in text_columns else frame[[c]] for c in frame.columns]
    return pd.concat([p.reset_index(drop=True) for p in parts], axis=1)


def drift_report(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    out_html: Path,
    drift_share: float = 0.5,
    title: str = "",
    max_rows: int = MAX_ROWS,
    text_columns: tuple[str, ...] | list[str] = (),
) -> dict:
    """Per-column drift tests + share of drifted columns (Evidently DataDriftPreset); saves HTML at `out_html`.

    Returns {"drifted_share", "dataset_drift" (share >= drift_share), "n_columns", "columns":
    {col: {"drifted", "score", "method", "threshold"}}, "report", "drift_share", "rows", "subsampled",
    "seconds"}. Tables longer than `max_rows` are subsampled (seed 0) and "subsampled" says so. Each of
    `text_columns` is replaced by its descriptors (`<column>.chars`, ...), so those are the columns tested.
    """
    reference = reference.rename(columns=str)
    current = current.rename(columns=str)
    if list(reference.columns) != list(current.columns):
        only_ref = [c for c in reference.columns if c not in current.columns]
        only_cur = [c for c in current.columns if c not in reference.columns]
        raise ValueError(
            f"drift: reference and current tables need the same columns in the same order; "
            f"only in reference: {only_ref[:5]}, only in current: {only_cur[:5]}"
        )
    if reference.empty or current.empty:
        raise ValueError(f"drift: empty table (reference {reference.shape}, current {current.shape})")
    rows = {"reference": len(reference), "current": len(current)}
    reference = _subsample(reference.reset_index(drop=True), max_rows, SUBSAMPLE_SEED)
    current = _subsample(current.reset_index(drop=True), max_rows, SUBSAMPLE_SEED + 1)
    subsampled = rows != {"reference": len(reference), "current": len(current)}
    if text_columns:
        reference, current = (_describe_text(t, list(text_columns)) for t in (reference, current))

    DataDefinition, Dataset, Report, DataDriftPreset = _evidently()
    numeric = [c for c in reference.columns if pd.api.types.is_numeric_dtype(reference[c]) and not pd.api.types.is_bool_dtype(reference[c])]
    categorical = [c for c in reference.columns if c not in numeric]
    # Explicit column types: left to itself Evidently calls low-cardinality numbers categorical.
    definition = DataDefinition(numerical_columns=numeric, categorical_columns=categorical)
    t0 = time.perf_counter()
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")  # constant columns (digits' border pixels) warn in corrcoef
        snap = Report([DataDriftPreset(drift_share=drift_share)], include_tests=True).run(
            Dataset.from_pandas(current, data_definition=definition),
            Dataset.from_pandas(reference, data_definition=definition),
            name=title or None,
        )
        out_html = Path(out_html)
        out_html.parent.mkdir(parents=True, exist_ok=True)
        snap.save_html(str(out_html))
    seconds = time.perf_counter() - t0

    d = snap.dict()
    status = {t["metric_config"]["params"].get("column"): t["status"] for t in d["tests"] if t["id"] == "drift"}
    columns: dict[str, dict] = {}
    share = None
    for m in d["metrics"]:
        kind = m["config"]["type"]
        if kind.endswith(":DriftedColumnsCount"):
            share = float(m["value"]["share"])
        elif kind.endswith(":ValueDrift"):
            col = m["config"]["column"]
            columns[col] = {
                "drifted": status.get(col) == "FAIL",
                "score": float(m["value"]),
                "method": str(m["config"]["method"]),
                "threshold": float(m["config"]["threshold"]),
            }
    n = len(columns)
    if share is None:  # never seen with 0.7.23; keep a consistent answer if the preset changes
        share = sum(c["drifted"] for c in columns.values()) / max(n, 1)
    return {
        "drifted_share": share,
        "dataset_drift": bool(share >= drift_share),
        "n_columns": n,
        "n_drifted": sum(c["drifted"] for c in columns.values()),
        "columns": columns,
        "report": str(out_html),
        "drift_share": float(drift_share),
        "rows": rows,
        "subsampled": f"{len(reference)} reference / {len(current)} current rows (seed {SUBSAMPLE_SEED})" if subsampled else "",
        "seconds": round(seconds, 2),
    }


def drift_gate(name: str, result: dict | None, action: str, why_skipped: str = "") -> Gate:
    """Gate on Evidently's dataset drift (share of drifted columns >= drift_share); 'off' or no result -> skipped."""
    if action == "off":
        return skipped(name, why_skipped or "disabled in checks.drift")
    if result is None:
        return skipped(name, why_skipped or "no data to compare")
    if action not in ("fail", "warn"):
        raise ValueError(f"drift gate {name}: action must be fail, warn or off, not {action!r}")
    drifted = [col for col, c in result["columns"].items() if c["drifted"]]
    detail = (
        f"{len(drifted)}/{result['n_columns']} columns drifted "
        f"(share {result['drifted_share']:.3f}, dataset drift at >= {result['drift_share']:.3g})"
        + (f"; e.g. {', '.join(drifted[:3])}" if drifted else "")
        + (f"; subsampled to {result['subsampled']}" if result.get("subsampled") else "")
    )
    return Gate(name, not result["dataset_drift"], float(result["drifted_share"]), float(result["drift_share"]), action, detail)  # type: ignore[arg-type]
