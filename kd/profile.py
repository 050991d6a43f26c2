"""Exact statistics of every split, accumulated chunk by chunk: what data validation checks.

Per split and column: rows, missing values, values that are not numbers (with examples), infinite values,
min and max; label counts; group counts of the sensitive columns; and row hashes for the leakage check
(exact records and feature-only rows). Nothing here raises on bad data — bad data is what it counts.
Memory is bounded by the hashes (8 bytes per training and test row) and one chunk.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

MAX_EXAMPLES = 5


@dataclass
class ColumnStats:
    rows: int = 0
    nulls: int = 0
    non_numeric: int = 0
    examples: list = field(default_factory=list)
    dtype: str = ""
    infinite: int = 0
    min: float = np.inf
    max: float = -np.inf

    def update(self, col: pd.Series, numeric: bool) -> None:
        self.rows += len(col)
        nulls = col.isna()
        self.nulls += int(nulls.sum())
        if not numeric:
            return
        if pd.api.types.is_bool_dtype(col):
            values, bad = pd.Series(np.nan, index=col.index), ~nulls
        else:
            values = pd.to_numeric(col, errors="coerce")
            bad = values.isna() & ~nulls
        if bad.any():
            self.non_numeric += int(bad.sum())
            self.dtype = str(col.dtype)
            self.examples += [str(v) for v in col[bad].unique()[: MAX_EXAMPLES - len(self.examples)]]
        arr = values.to_numpy(np.float64)
        arr = arr[~np.isnan(arr)]
        inf = np.isinf(arr)
        self.infinite += int(inf.sum())
        finite = arr[~inf]
        if len(finite):
            self.min, self.max = min(self.min, float(finite.min())), max(self.max, float(finite.max()))


@dataclass
class SplitStats:
    columns: dict[str, ColumnStats] = field(default_factory=dict)
    missing: set[str] = field(default_factory=set)
    rows: int = 0
    labels: Counter = field(default_factory=Counter)
    groups: dict[str, Counter] = field(default_factory=dict)


def _counts(col: pd.Series) -> dict[str, int]:
    """Value counts keyed by the value as text (1 and '1' are one label, as kd.preprocess reads them)."""
    out: dict[str, int] = {}
    for value, n in col.value_counts(dropna=True).items():
        out[str(value)] = out.get(str(value), 0) + int(n)
    return out


def _hash(df: pd.DataFrame, cols: list[str]) -> np.ndarray:
    """Row hashes with numbers compared as numbers (1 == 1.0) and everything else as text."""
    norm = {}
    for c in cols:
        s = df[c]
        v = pd.to_numeric(s, errors="coerce") if not pd.api.types.is_bool_dtype(s) else None
        norm[c] = v.astype(np.float64) if v is not None and v.notna().sum() == s.notna().sum() else s.astype(str)
    return pd.util.hash_pandas_object(pd.DataFrame(norm), index=False).to_numpy(np.uint64)


@dataclass
class Profile:
    """Every split's statistics (train, val, test, and transfer when there is one)."""

    features: list[str]
    numeric: list[str]
    label: str
    sensitive: list[str]
    input_shape: tuple | None = None
    splits: dict[str, SplitStats] = field(default_factory=dict)
    _hashes: dict[str, list[np.ndarray]] = field(default_factory=dict)

    def update(self, split: str, chunk: pd.DataFrame) -> None:
        st = self.splits.setdefault(split, SplitStats())
        labelled = split != "transfer"
        expected = self.features + ([self.label] + self.sensitive if labelled else [])
        st.missing |= {c for c in expected if c not in chunk.columns}
        st.rows += len(chunk)
        for c in expected:
            if c in chunk.columns:
                st.columns.setdefault(c, ColumnStats()).update(chunk[c], c in self.numeric)
        if labelled and self.label in chunk.columns:
            st.labels.update(_counts(chunk[self.label]))
        for s in self.sensitive if labelled else []:
            if s in chunk.columns:
                st.groups.setdefault(s, Counter()).update(_counts(chunk[s]))
        if split in ("train", "test") and not st.missing:
            features = _hash(chunk, self.features)
            others = [c for c in dict.fromkeys([self.label] + self.sensitive) if c not in self.features]
            record = features * np.uint64(0x9E3779B97F4A7C15) ^ _hash(chunk, others) if others else features
            self._hashes.setdefault(f"{split}/record", []).append(record)
            self._hashes.setdefault(f"{split}/features", []).append(features)

    def leakage(self, tolerance: float) -> dict:
        """Test rows repeating a training record, against the share the training split repeats itself."""
        get = lambda k: np.concatenate(self._hashes[k]) if self._hashes.get(k) else np.zeros(0, np.uint64)  # noqa: E731
        train, test = get("train/record"), get("test/record")
        if not len(test):
            return {}
        in_train = np.isin(test, train)
        _, counts = np.unique(train, return_counts=True)
        expected = float(counts[counts > 1].sum() / max(len(train), 1))
        same_features = np.isin(get("test/features"), get("train/features"))
        return {"test_rows": int(len(test)), "exact_records_in_train": int(in_train.sum()), "share": float(in_train.mean()),
                "expected_share": expected, "tolerance": tolerance, "max_share": min(1.0, expected + tolerance),
                "feature_identical_in_train": int(same_features.sum())}
