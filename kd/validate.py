"""Data validation: Great Expectations suites over the exact statistics of every split (`kd.profile`).

The statistics are accumulated over every row, chunk by chunk, so validation is exact at any size — no
sample, no guarantee to state — and costs the same handful of expectations for 1,797 rows or 10 million.
Each suite runs on a small table with one row per checked thing (a column of a split, a class, a group,
the leakage share), and its unexpected rows name what failed. Suites are derived from the config and the
training split's schema:

- every split: expected columns present; numeric columns hold numbers, finite, with at most
  `validate.max_null_fraction` missing values; val/test values inside the training range widened by
  `validate.range_tolerance` (pixels of an image source share one range); the transfer set's shift is
  judged by the checks stage's data-gap drift test, not here (production inputs drift by nature);
- labels: val/test (and train, with `data.classes`) only in the known set; the training split has at
  least two classes and `validate.min_per_class` rows of each; `validate.min_group_size` rows per group;
- leakage: test rows repeating a training record, judged against the data's own duplicate rate (a random
  split puts as many test rows in train as training rows repeat another); feature-identical rows of
  other records are reported, not gated.

Great Expectations (GX Core 1.x, https://greatexpectations.io) runs in an ephemeral context: nothing is
written outside `out_dir`, which receives `validation.json` and the HTML Data Docs.
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
from kd.profile import Profile
from kd.sources import DataError

if TYPE_CHECKING:
    from kd.data import Frames

DUPLICATES = "no_test_rows_in_train"
COLUMNS, _TYPE = "expect_table_columns_to_match_set", "expect_column_values_to_be_in_type_list"
_NULL, _FINITE = "expect_column_values_to_not_be_null", "expect_column_values_to_be_finite"
_MIN, _MAX = "expect_column_min_to_be_between", "expect_column_max_to_be_between"
IN_SET, COUNT = "expect_column_values_to_be_in_set", "expect_table_row_count_to_be_between"
CLASSES = "expect_column_unique_value_count_to_be_between"
_FORMAT = {"result_format": "COMPLETE", "unexpected_index_column_names": ["key"]}


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


def profile_frames(frames: Frames, p: Params) -> Profile:
    """The exact statistics of in-memory splits (what `kd.ingest` accumulates chunk by chunk)."""
    src = frames.raw
    numeric = [] if p.data.is_text else [c for c in src.features if c not in p.data.categorical_columns]
    prof = Profile(src.features, numeric, src.label, list(src.sensitive),
                   src.input_shape)
    for name in ("train", "val", "test"):
        prof.update(name, getattr(frames, name))
    if frames.transfer is not None:
        prof.update("transfer", frames.transfer)
    return prof


def ranges(prof: Profile, tol: float) -> dict[str, tuple[float, float]]:
    """Value ranges learnt from the training split, widened by tol x span. Pixels of an image-shaped
    source share one range: a border pixel that is always 0 in train is no error when it is 1 in test."""
    train = prof.splits["train"].columns
    learnt = {c: (s.min, s.max) for c, s in train.items() if c in prof.numeric and s.non_numeric == 0 and np.isfinite(s.min)}
    if prof.input_shape is not None and learnt:
        shared = (min(lo for lo, _ in learnt.values()), max(hi for _, hi in learnt.values()))
        learnt = dict.fromkeys(learnt, shared)
    return {c: (lo - tol * (hi - lo), hi + tol * (hi - lo)) for c, (lo, hi) in learnt.items()}


def _tables(prof: Profile, p: Params, rng: dict, leak: dict) -> dict[str, tuple[pd.DataFrame, list]]:
    """name -> (a table with one row per checked thing, keyed by `key`; its expectations)."""
    import great_expectations.expectations as gxe

    v, known = p.validate_, _known_labels(prof, p)
    tables: dict[str, tuple[pd.DataFrame, list]] = {}
    for split, st in prof.splits.items():
        labelled = split != "transfer"
        expected = list(dict.fromkeys(prof.features + ([prof.label] + prof.sensitive if labelled else [])))
        rows = []
        for c in expected:
            cs = st.columns.get(c)
            present = c not in st.missing and cs is not None
            num = present and c in prof.numeric and cs.non_numeric == 0
            lo, hi = rng.get(c, (np.nan, np.nan)) if num and split in ("val", "test") else (np.nan, np.nan)
            rows.append({"key": c, "present": present, "numeric_ok": not present or c not in prof.numeric or cs.non_numeric == 0,
                         "null_fraction": cs.nulls / max(cs.rows, 1) if present else 0.0, "finite": not num or cs.infinite == 0,
                         "min": cs.min if num and np.isfinite(cs.min) else np.nan, "max": cs.max if num and np.isfinite(cs.max) else np.nan,
                         "lo": lo, "hi": hi})
        pair = {"or_equal": True, "ignore_row_if": "either_value_is_missing"}
        ex = [gxe.ExpectColumnValuesToBeInSet(column="present", value_set=[True], meta={"as": COLUMNS}),
              gxe.ExpectColumnValuesToBeInSet(column="numeric_ok", value_set=[True], meta={"as": _TYPE}),
              gxe.ExpectColumnValuesToBeBetween(column="null_fraction", max_value=v.max_null_fraction, meta={"as": _NULL}),
              gxe.ExpectColumnValuesToBeInSet(column="finite", value_set=[True], meta={"as": _FINITE})]  # fmt: skip
        if split in ("val", "test"):  # the transfer set's shift is the data_gap drift check's to judge
            ex += [gxe.ExpectColumnPairValuesAToBeGreaterThanB(column_A="min", column_B="lo", meta={"as": _MIN}, **pair),
                   gxe.ExpectColumnPairValuesAToBeGreaterThanB(column_A="hi", column_B="max", meta={"as": _MAX}, **pair)]  # fmt: skip
        tables[f"{split}_columns"] = (pd.DataFrame(rows), ex)
        if labelled and prof.label not in st.missing and known and (split != "train" or p.data.classes):
            lab = [{"key": k, "known": k in known, "rows": n} for k, n in sorted(st.labels.items())]
            if lab:
                tables[f"{split}_labels"] = (pd.DataFrame(lab), [gxe.ExpectColumnValuesToBeInSet(column="known", value_set=[True], meta={"as": IN_SET})])
    train = prof.splits["train"]
    if prof.label not in train.missing:
        table = pd.DataFrame([{"key": prof.label, "classes": len(train.labels)}])
        tables["train_table"] = (table, [gxe.ExpectColumnValuesToBeBetween(column="classes", min_value=2, meta={"as": CLASSES})])
        if known:
            counts = pd.DataFrame([{"key": k, "rows": train.labels.get(k, 0)} for k in known])
            tables["train_classes"] = (counts, [gxe.ExpectColumnValuesToBeBetween(column="rows", min_value=v.min_per_class, meta={"as": COUNT})])
    groups = [{"key": f"{s}={g}", "rows": n} for s, c in train.groups.items() for g, n in sorted(c.items())]
    if groups:
        tables["train_groups"] = (pd.DataFrame(groups), [gxe.ExpectColumnValuesToBeBetween(column="rows", min_value=v.min_group_size, meta={"as": "groups"})])
    if leak:
        lk = pd.DataFrame([{"key": "test", "share": leak["share"], "max_share": leak["max_share"]}])
        tables["test_leakage"] = (lk, [gxe.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A="max_share", column_B="share", or_equal=True, meta={"as": DUPLICATES},
            description=f"At most {leak['max_share']:.3f} of the test rows repeat a training record (the data's own duplicate "
                        "rate plus validate.leakage_tolerance).")])  # fmt: skip
    return tables


def _known_labels(prof: Profile, p: Params) -> list[str]:
    from kd.preprocess import natural

    return list(p.data.classes) or sorted(prof.splits["train"].labels, key=natural)


def _record(split: str, kind: str, key: str, prof: Profile, p: Params, rng: dict, leak: dict) -> dict:
    """The failure record of one unexpected row, computed from the statistics (not from GX's output)."""
    st = prof.splits[split]
    rec: dict[str, Any] = {"split": split, "column": key, "expectation": kind}
    cs = st.columns.get(key)
    if kind == COLUMNS:
        return rec | {"observed": "missing", "expected": "column present"}
    if kind == _TYPE:
        return rec | {"observed": {"dtype": cs.dtype, "non_numeric": cs.examples}, "expected": "numeric"}
    if kind == _NULL:
        return rec | {"observed": {"null_fraction": round(cs.nulls / max(cs.rows, 1), 6), "nulls": cs.nulls},
                      "expected": f"null fraction <= {p.validate_.max_null_fraction:.4g}"}
    if kind == _FINITE:
        return rec | {"observed": {"infinite": cs.infinite}, "expected": "finite numbers"}
    if kind == _MIN:
        return rec | {"observed": cs.min, "expected": f"min >= {rng[key][0]:.6g} (training range)"}
    if kind == _MAX:
        return rec | {"observed": cs.max, "expected": f"max <= {rng[key][1]:.6g} (training range)"}
    if kind == IN_SET:
        known = _known_labels(prof, p)
        return rec | {"column": prof.label, "observed": sorted(k for k in st.labels if k not in known), "expected": f"one of {known[:20]}"}
    if kind == COUNT:
        return rec | {"column": prof.label, "expectation": COUNT, "observed": {"value": key, "rows": st.labels.get(key, 0)},
                      "expected": f">= {p.validate_.min_per_class} rows"}
    if kind == "groups":
        column, value = key.split("=", 1)
        return rec | {"column": column, "expectation": COUNT, "observed": {"value": value, "rows": st.groups[column][value]},
                      "expected": f">= {p.validate_.min_group_size} rows"}
    if kind == CLASSES:
        return rec | {"observed": {"classes": len(st.labels)}, "expected": "at least 2 classes in the training split"}
    return rec | {"column": None, "expectation": DUPLICATES, "observed": {"share": round(leak["share"], 4), "rows": leak["exact_records_in_train"]},
                  "expected": f"<= {leak['max_share']:.4f} of the test rows repeat a training record "
                              "(the data's own duplicate rate + validate.leakage_tolerance)"}


def validate_profile(prof: Profile, p: Params, out_dir: Path, origin: str = "") -> dict:
    """Run the suites on the statistics; write out_dir/validation.json (the returned dict) and Data Docs
    (out_dir/data_docs/index.html). Raises nothing for failed expectations (the caller decides)."""
    os.environ["GX_ANALYTICS_ENABLED"] = "false"
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    t0, out_dir = time.perf_counter(), Path(out_dir)
    if prof.splits.get("train") is None or prof.splits["train"].rows == 0:
        raise DataError(f"{origin}: the training split has no rows; nothing to validate")
    rng = ranges(prof, p.validate_.range_tolerance)
    leak = prof.leakage(p.validate_.leakage_tolerance)
    tables = _tables(prof, p, rng, leak)
    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    docs = out_dir / "data_docs"
    shutil.rmtree(docs, ignore_errors=True)  # the index lists what is on disk: start clean
    ctx.add_data_docs_site("kd", {"class_name": "SiteBuilder", "show_how_to_buttons": False,
                                  "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs.resolve())},
                                  "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"}})  # fmt: skip
    source = ctx.data_sources.add_pandas("kd")
    failures: list[dict] = []
    for name, (table, ex) in tables.items():
        split = name.split("_")[0]
        batch = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe(name)
        suite = ctx.suites.add(gx.ExpectationSuite(name=f"kd_{name}", expectations=ex))  # all at once: add_expectation re-saves
        res = ctx.validation_definitions.add(gx.ValidationDefinition(name=f"kd_{name}", data=batch, suite=suite)).run(
            batch_parameters={"dataframe": table}, result_format=_FORMAT)
        for r in res.results:
            if r.success:
                continue
            kind = r.expectation_config.meta["as"]
            keys = [row["key"] for row in (r.result or {}).get("unexpected_index_list") or []] or [table["key"].iloc[0]]
            if kind in (IN_SET, CLASSES, DUPLICATES):  # one record says it all
                keys = keys[:1]
            failures += [_record(split, kind, k, prof, p, rng, leak) for k in keys]
    ctx.build_data_docs(site_names=["kd"])
    report = {
        "success": not failures, "n_expectations": sum(len(ex) for _, ex in tables.values()),
        "rows": {s: st.rows for s, st in prof.splits.items()}, "mode": "exact statistics of every row",
        "failures": failures, "leakage": leak, "data_docs": "data_docs/index.html",
        "suites": {name: [e.expectation_type for e in ex] for name, (_, ex) in tables.items()},
        "seconds": round(time.perf_counter() - t0, 3),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "validation.json").write_text(json.dumps(report, indent=2, default=str))
    return report


def validate_frames(frames: Frames, p: Params, out_dir: Path) -> dict:
    """`validate_profile` of in-memory splits."""
    for name in ("train", "val", "test", "transfer"):
        df = getattr(frames, name)
        if df is not None and (df.columns.duplicated().any() or not all(isinstance(c, str) for c in df.columns)):
            raise DataError(f"{frames.raw.origin} ({name} split): column names must be unique strings; found {list(df.columns)[:10]}")
    return validate_profile(profile_frames(frames, p), p, out_dir, frames.raw.origin)


def check(frames: Frames, p: Params, out_dir: Path) -> dict:
    """`validate_frames`, then raise ValidationFailed if any expectation failed."""
    report = validate_frames(frames, p, out_dir)
    if not report["success"]:
        raise ValidationFailed(report["failures"])
    return report
