"""Request columns → class probabilities: a fast path for the plain case, the predictor for everything else.

`Predictor.check` + `Preprocessor.features` go through pandas, about 2 ms a call whatever the row count —
far more than the model itself (tens of µs). The fast path builds the same feature matrix with numpy straight
from the request's columns when every value is plain (a number for a numeric column, a known category string
for a categorical one, all finite). Anything else — a missing value, a numeric string, a boolean, an unknown
category — goes to `Predictor.check`, the one definition of valid input, which accepts it or names the problem.
The two paths are compared on every loaded model before it serves (`kd.serve.champion.warm_up`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from kd.predictor import Predictor

NUMBER = (int, float)  # exact types: bool (an int subclass) is refused, as Predictor.check refuses it


class Inputs:
    """Builds the model's inputs from columns (`{name: [value per row]}`) for one loaded predictor."""

    def __init__(self, predictor: Predictor):
        self.predictor = predictor
        pre = predictor.pre
        # the edge graph reads raw columns and text needs its tokenizer: both always take the checked path
        self.fast = predictor.backend != "edge" and not pre.text
        self.numeric = list(pre.numeric)
        self.mean = np.asarray(pre.mean, np.float64)
        self.std = np.asarray(pre.std, np.float64)
        self.categories: list[tuple[str, int, dict[str, int]]] = []
        offset = len(self.numeric)
        for name, values in pre.categories.items():
            self.categories.append((name, offset, {v: i for i, v in enumerate(values)}))
            offset += len(values)
        self.width = offset

    def matrix(self, columns: dict[str, list], n: int) -> np.ndarray | None:
        """The feature matrix (float32, as `Preprocessor.features` makes it), or None when a value is not plain."""
        if not self.fast:
            return None
        x = np.zeros((n, self.width), np.float32)
        if self.numeric:
            cols = []
            for name in self.numeric:
                col = columns.get(name)
                if col is None or not all(type(v) in NUMBER for v in col):
                    return None
                cols.append(col)
            try:
                num = np.array(cols, np.float64).T
            except OverflowError:  # an integer beyond float range: let the predictor say so
                return None
            if not np.isfinite(num).all():
                return None
            x[:, : len(self.numeric)] = (num - self.mean) / self.std
        rows = np.arange(n)
        for name, offset, index in self.categories:
            col = columns.get(name)
            if col is None:
                return None
            idx = [index.get(v, -1) if type(v) is str else -1 for v in col]
            if -1 in idx:
                return None
            x[rows, offset + np.asarray(idx)] = 1.0
        return x

    def checked_frame(self, columns: dict[str, list], present: set[str]) -> pd.DataFrame:
        """The rows as `Predictor.check` accepts them, or `InputError` naming the row, the column and the problem.
        `present`: the columns some row carries (a column no row carries is reported missing, not empty)."""
        frame = pd.DataFrame({c: columns[c] for c in self.predictor.columns if c in present}, dtype=object)
        return self.predictor.check(frame)

    def proba(self, columns: dict[str, list], n: int, present: set[str]) -> np.ndarray:
        """Class probabilities (N, C) of the rows, by the fast path when it applies."""
        x = self.matrix(columns, n)
        if x is not None:
            return self.predictor.proba(x)
        return self.predictor.predict_proba(self.checked_frame(columns, present), checked=True)
