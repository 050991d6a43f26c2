"""Data validation of the raw splits: an expectation suite derived from the config and the training schema.

Validation runs on Great Expectations (GX Core 1.x, https://greatexpectations.io) in an ephemeral context:
nothing is written outside `out_dir`, which receives `validation.json` and the HTML Data Docs.

GX costs a few milliseconds per expectation, so wide data (more than `WIDE_FEATURES` numeric features, e.g.
784 pixels) is validated through a column profile instead: one row per feature (numeric dtype, null fraction,
min, max, learnt bounds) checked by four expectations whose unexpected rows name the columns. The cross-frame
check (test rows duplicated in train) is computed in pandas and validated through a helper column, so it
appears in the Data Docs like every other expectation.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from kd.config import Params
from kd.sources import DataError

if TYPE_CHECKING:  # kd.data imports scikit-learn; keep this module's import light
    from kd.data import Frames

WIDE_FEATURES = 128  # above this many numeric features, per-feature checks run on a column profile
DUPLICATES = "no_test_rows_in_train"
_HELPER = "_kd_test_row_in_train"  # helper column added to (a copy of) the test frame
_NUMERIC = ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
            "float16", "float32", "float64", "Int64", "Float64", "int", "float"]  # fmt: skip
_TYPE, _NULL = "expect_column_values_to_be_in_type_list", "expect_column_values_to_not_be_null"
_MIN, _MAX = "expect_column_min_to_be_between", "expect_column_max_to_be_between"
_PROFILE_FORMAT = {"result_format": "COMPLETE", "unexpected_index_column_names": ["column"]}


class ValidationFailed(DataError):
    """Expectations that failed; `failures` holds one record per failure, `str()` one line per record."""

    def __init__(self, failures: list[dict]) -> None:
        self.failures = failures
        lines = [f"data validation failed: {len(failures)} expectation(s) not met"]
        for f in failures:
            col = f"column {f['column']!r}" if f["column"] is not None else "(table)"
            expected = f" (expected {f['expected']})" if f.get("expected") else ""
            lines.append(f"  - {f['split']}: {col}: {f['expectation']}: observed {json.dumps(f['observed'], default=str)}{expected}")
        super().__init__("\n".join(lines))


def _native(v: Any) -> Any:
    """A numpy scalar as a plain Python value (GX renders row-condition parameters with repr)."""
    return v.item() if isinstance(v, np.generic) else v


def _is_numeric(s: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s)


def _duplicate_mask(test: pd.DataFrame, train: pd.DataFrame, features: list[str]) -> np.ndarray:
    """Test rows whose feature values equal some training row (row hashes; NaN equals NaN)."""
    cols = [c for c in features if c in test.columns and c in train.columns]
    if not cols or test.empty:
        return np.zeros(len(test), bool)
    h_train = pd.util.hash_pandas_object(train[cols], index=False)
    return pd.util.hash_pandas_object(test[cols], index=False).isin(h_train).to_numpy()


def _ranges(frames: Frames, numeric: list[str], tol: float) -> dict[str, tuple[float, float]]:
    """Value ranges learnt from the training split, widened by tol x span. Pixels of an image-shaped
    source share one range: a border pixel that is always 0 in train is no error when it is 1 in test."""
    train = frames.train
    learnt = {c: (float(train[c].min()), float(train[c].max())) for c in numeric
              if c in train.columns and _is_numeric(train[c]) and train[c].notna().any()}  # fmt: skip
    if frames.raw.input_shape is not None and learnt:
        shared = (min(lo for lo, _ in learnt.values()), max(hi for _, hi in learnt.values()))
        learnt = dict.fromkeys(learnt, shared)
    return {c: (lo - tol * (hi - lo), hi + tol * (hi - lo)) for c, (lo, hi) in learnt.items()}


def _profile(df: pd.DataFrame, numeric: list[str], ranges: dict[str, tuple[float, float]]) -> pd.DataFrame:
    """One row per numeric feature present in `df`: dtype check, null fraction, min/max and learnt bounds."""
    cols = [c for c in numeric if c in df.columns]
    num = [c for c in cols if _is_numeric(df[c])]
    nan = (np.nan, np.nan)
    return pd.DataFrame({
        "column": cols, "numeric": [c in set(num) for c in cols],
        "null_fraction": df[cols].isna().mean().to_numpy(float) if cols else np.zeros(0),
        "min": df[num].min().reindex(cols).to_numpy(float), "max": df[num].max().reindex(cols).to_numpy(float),
        "lo": [ranges.get(c, nan)[0] for c in cols], "hi": [ranges.get(c, nan)[1] for c in cols],
    })  # fmt: skip


def _build_suites(frames: Frames, p: Params, ranges: dict[str, tuple[float, float]], wide: bool) -> dict[str, list]:
    """Expectation lists per batch ('train', ..., and 'train_columns', ... for wide data's column profiles)."""
    import great_expectations.expectations as gxe
    from great_expectations.expectations.row_conditions import Column

    raw, v, train = frames.raw, p.validate_, frames.train
    label, sensitive = raw.label, list(raw.sensitive)
    numeric = [c for c in raw.features if c not in p.data.categorical_columns]
    mostly = 1.0 - v.max_null_fraction
    # The known label set is compared as strings (as kd.data does); value_set adds the native values that match.
    train_labels = [_native(x) for x in train[label].dropna().unique()] if label in train.columns else []
    known = list(p.data.classes) or sorted({str(x) for x in train_labels})
    seen = {_native(x) for f in (frames.train, frames.val, frames.test) if label in f.columns for x in f[label].dropna().unique()}
    matched = {x for x in seen if str(x) in known}
    value_set = sorted(matched | {k for k in known if k not in {str(x) for x in matched}}, key=str)

    suites: dict[str, list] = {}
    for name in ("train", "val", "test") + (("transfer",) if frames.transfer is not None else ()):
        cols = raw.features if name == "transfer" else list(dict.fromkeys(raw.features + [label] + sensitive))
        per_column = [c for c in numeric if not wide]
        ex: list = [gxe.ExpectTableColumnsToMatchSet(column_set=cols, exact_match=False)]
        ex += [gxe.ExpectColumnValuesToNotBeNull(column=c, mostly=mostly) for c in cols if c not in numeric or not wide]
        ex += [gxe.ExpectColumnValuesToBeInTypeList(column=c, type_list=_NUMERIC) for c in per_column]
        if name != "train":
            for c in (c for c in per_column if c in ranges):
                ex += [gxe.ExpectColumnMinToBeBetween(column=c, min_value=ranges[c][0]),
                       gxe.ExpectColumnMaxToBeBetween(column=c, max_value=ranges[c][1])]  # fmt: skip
        if known and (name in ("val", "test") or (name == "train" and p.data.classes)):
            ex.append(gxe.ExpectColumnValuesToBeInSet(column=label, value_set=value_set))
        if name == "train":
            by_str = {str(x): x for x in train_labels}
            for k in known:
                ex.append(gxe.ExpectTableRowCountToBeBetween(min_value=v.min_per_class, row_condition=Column(label) == by_str.get(k, k),
                                                             meta={"column": label, "value": k}))  # fmt: skip
            for s in sensitive:
                for g in train[s].dropna().unique() if s in train.columns else []:
                    ex.append(gxe.ExpectTableRowCountToBeBetween(min_value=v.min_group_size, row_condition=Column(s) == _native(g),
                                                                 meta={"column": s, "value": str(g)}))  # fmt: skip
        if name == "test":
            ex.append(gxe.ExpectColumnSumToBeBetween(
                column=_HELPER, min_value=0, max_value=v.max_duplicate_test_rows, meta={"kd": DUPLICATES},
                description=f"At most {v.max_duplicate_test_rows} test rows equal a training row (feature-only row equality)."))  # fmt: skip
        suites[name] = ex
        if wide:  # the column profile: per-feature checks as four expectations over one row per feature
            prof = [gxe.ExpectColumnValuesToBeInSet(column="numeric", value_set=[True], meta={"as": _TYPE}),
                    gxe.ExpectColumnValuesToBeBetween(column="null_fraction", max_value=v.max_null_fraction, meta={"as": _NULL})]  # fmt: skip
            if name != "train":
                pair = {"or_equal": True, "ignore_row_if": "either_value_is_missing"}
                prof += [gxe.ExpectColumnPairValuesAToBeGreaterThanB(column_A="min", column_B="lo", meta={"as": _MIN}, **pair),
                         gxe.ExpectColumnPairValuesAToBeGreaterThanB(column_A="hi", column_B="max", meta={"as": _MAX}, **pair)]  # fmt: skip
            suites[f"{name}_columns"] = prof
    return suites


def _column_record(split: str, kind: str, s: pd.Series, p: Params, ranges: dict[str, tuple[float, float]]) -> dict:
    """A per-column failure record; the observed value is computed from the data so both modes agree."""
    rec: dict[str, Any] = {"split": split, "column": s.name, "expectation": kind}
    if kind == _TYPE:
        bad = s[pd.to_numeric(s, errors="coerce").isna() & s.notna()]
        return rec | {"observed": {"dtype": str(s.dtype), "non_numeric": [str(x) for x in bad.unique()[:5]]}, "expected": "numeric"}
    if kind == _NULL:
        n = int(s.isna().sum())
        return rec | {"observed": {"null_fraction": round(n / max(len(s), 1), 6), "nulls": n},
                      "expected": f"null fraction <= {p.validate_.max_null_fraction:.4g}"}  # fmt: skip
    lo, hi = ranges[str(s.name)]
    if kind == _MIN:
        return rec | {"observed": float(s.min()), "expected": f"min >= {lo:.6g} (training range)"}
    return rec | {"observed": float(s.max()), "expected": f"max <= {hi:.6g} (training range)"}


def _error(info: dict | None) -> str | None:
    """The message of an expectation that raised; GX nests metric errors under their metric ids."""
    infos = [info or {}] if "raised_exception" in (info or {}) else list((info or {}).values())
    for i in infos:
        if isinstance(i, dict) and i.get("raised_exception"):
            return str(i.get("exception_message") or "error").splitlines()[0][:300]
    return None


def _failures(split: str, res: Any, df: pd.DataFrame, p: Params, ranges: dict[str, tuple[float, float]]) -> list[dict]:
    """Failure records of one validation result; errors caused by an already reported column are dropped."""
    out: list[dict] = []
    errored: list[dict] = []
    for r in res.results:
        if r.success:
            continue
        cfg, result = r.expectation_config, r.result or {}
        kind, kw, meta = cfg.type, cfg.kwargs, cfg.meta or {}
        col = kw.get("column", meta.get("column"))
        rec: dict[str, Any] = {"split": split, "column": col, "expectation": kind}
        if (err := _error(r.exception_info)) is not None:
            errored.append(rec | {"observed": {"error": err}})
        elif "as" in meta:  # a column-profile check: one record per unexpected feature column
            for row in result.get("unexpected_index_list") or []:
                out.append(_column_record(split, meta["as"], df[row["column"]], p, ranges))
        elif kind == "expect_table_columns_to_match_set":
            for m in result.get("details", {}).get("mismatched", {}).get("missing", []):
                out.append(rec | {"column": m, "observed": "missing", "expected": "column present"})
        elif meta.get("kd") == DUPLICATES:
            out.append(rec | {"column": None, "expectation": DUPLICATES, "observed": int(result.get("observed_value") or 0),
                              "expected": f"<= {kw.get('max_value')} test rows equal to a training row"})  # fmt: skip
        elif kind == "expect_table_row_count_to_be_between":
            out.append(rec | {"observed": {"value": meta.get("value"), "rows": result.get("observed_value")},
                              "expected": f">= {kw.get('min_value')} rows"})  # fmt: skip
        elif kind == "expect_column_values_to_be_in_set":
            vals = sorted({str(x) for x in result.get("partial_unexpected_list", [])})
            out.append(rec | {"observed": vals, "expected": f"one of {[str(x) for x in kw['value_set']][:20]}"})
        elif kind in (_MIN, _MAX) and df[col].notna().sum() == 0:
            continue  # an all-null column has no min/max; the null check reports it
        elif kind in (_TYPE, _NULL, _MIN, _MAX):
            out.append(_column_record(split, kind, df[col], p, ranges))
        else:
            out.append(rec | {"observed": result.get("observed_value")})
    # A missing or non-numeric column makes its other expectations raise: report it once.
    named = {f["column"] for f in out if f["expectation"] in (_TYPE, "expect_table_columns_to_match_set")}
    return out + [e for e in errored if e["column"] not in named]


def validate_frames(frames: Frames, p: Params, out_dir: Path) -> dict:
    """Build a suite from the config and the training split's schema, validate every split.

    Writes out_dir/validation.json (the returned dict) and HTML Data Docs under out_dir/data_docs/ (index.html).
    Returns {"success", "n_expectations", "failures", "data_docs", "suite", "seconds"}.
    Raises nothing for failed expectations (the caller decides); raises DataError only for unusable input.
    """
    os.environ["GX_ANALYTICS_ENABLED"] = "false"
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    t0, out_dir, raw = time.perf_counter(), Path(out_dir), frames.raw
    batches = {"train": frames.train, "val": frames.val, "test": frames.test}
    if frames.transfer is not None:
        batches["transfer"] = frames.transfer
    if frames.train.empty:
        raise DataError(f"{raw.origin}: the training split has no rows; nothing to validate")
    for name, df in batches.items():
        if df.columns.duplicated().any() or not all(isinstance(c, str) for c in df.columns):
            raise DataError(f"{raw.origin} ({name} split): column names must be unique strings; found {list(df.columns)[:10]}")
    numeric = [c for c in raw.features if c not in p.data.categorical_columns]
    wide = len(numeric) > WIDE_FEATURES
    ranges = _ranges(frames, numeric, p.validate_.range_tolerance)
    suites = _build_suites(frames, p, ranges, wide)
    batches["test"] = frames.test.assign(**{_HELPER: _duplicate_mask(frames.test, frames.train, raw.features)})
    if wide:
        batches |= {f"{n}_columns": _profile(df, numeric, ranges) for n, df in list(batches.items())}

    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    docs = out_dir / "data_docs"
    shutil.rmtree(docs, ignore_errors=True)  # the index lists what is on disk: start clean
    ctx.add_data_docs_site("kd", {"class_name": "SiteBuilder", "show_how_to_buttons": False,
                                  "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs.resolve())},
                                  "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"}})  # fmt: skip
    source = ctx.data_sources.add_pandas("kd")
    failures: list[dict] = []
    summary: dict[str, dict] = {}
    for name, ex in suites.items():
        split = name.removesuffix("_columns")
        batch_def = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe(name)
        suite = ctx.suites.add(gx.ExpectationSuite(name=f"kd_{name}", expectations=ex))  # all at once: add_expectation re-saves
        vd = ctx.validation_definitions.add(gx.ValidationDefinition(name=f"kd_{name}", data=batch_def, suite=suite))
        res = vd.run(batch_parameters={"dataframe": batches[name]}, result_format=_PROFILE_FORMAT if name != split else "BASIC")
        failures += _failures(split, res, batches[split], p, ranges)
        for e in ex:
            kw = {k: val for k, val in e.configuration.kwargs.items() if val is not None and k != "batch_id"}
            kw |= {"mostly": e.mostly} if e.expectation_type == _NULL else {}
            key = json.dumps([e.expectation_type, kw], sort_keys=True, default=str)
            summary.setdefault(key, {"type": e.expectation_type, "kwargs": kw, "batches": []})["batches"].append(name)
    ctx.build_data_docs(site_names=["kd"])
    index = docs / "index.html"
    if not index.exists():
        raise DataError(f"{docs}: Great Expectations did not write the Data Docs index.html")
    report = {
        "success": not failures,
        "n_expectations": sum(len(ex) for ex in suites.values()),
        "mode": "column_profile" if wide else "per_column",
        "failures": failures,
        "data_docs": index.relative_to(out_dir).as_posix(),
        "suite": list(summary.values()),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "validation.json").write_text(json.dumps(report, indent=2, default=str))
    return report


def check(frames: Frames, p: Params, out_dir: Path) -> dict:
    """`validate_frames`, then raise ValidationFailed if any expectation failed."""
    report = validate_frames(frames, p, out_dir)
    if not report["success"]:
        raise ValidationFailed(report["failures"])
    return report
