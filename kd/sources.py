"""Data source adapters behind one interface: `load_source(params) -> RawData`.

Each adapter returns raw, untransformed frames (features + label + sensitive columns); splitting and
preprocessing happen in `kd.data` so every source gets the same deterministic treatment.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from kd.config import DataParams


class DataError(ValueError):
    """Input data that cannot be used; the message names the file, the column and what was expected."""


@dataclass
class RawData:
    frame: pd.DataFrame  # labelled rows: features, the label column, sensitive columns
    label: str
    features: list[str]
    sensitive: list[str]
    input_shape: tuple[int, ...] | None = None  # image-shaped sources (digits, npz images)
    fixed_test: pd.DataFrame | None = None  # sources that ship their own test split (npz)
    fixed_val: pd.DataFrame | None = None
    transfer: pd.DataFrame | None = None  # unlabeled features (Hinton's transfer set)
    origin: str = ""


def load_source(p: DataParams, base: Path | None = None) -> RawData:
    """Load `p.source` (paths relative to `base`) and the optional transfer set."""
    kind, _, rest = p.source.partition(":")
    base = base or Path.cwd()
    if p.source == "sklearn:digits":
        raw = _digits(p)
    elif p.source == "synthetic":
        raw = synthetic(p)
    elif kind in ("csv", "parquet"):
        raw = _tabular(_read_table(base / rest, kind), p, origin=rest)
    elif kind == "npz":
        raw = _npz(base / rest, p)
    else:  # config validation already rejects this; kept for library callers
        raise DataError(f"unknown data source {p.source!r}")
    if p.transfer:
        tkind, _, tpath = p.transfer.partition(":")
        if tkind not in ("csv", "parquet"):
            raise DataError(f"data.transfer {p.transfer!r}: expected csv:PATH or parquet:PATH")
        t = _read_table(base / tpath, tkind)
        missing = [c for c in raw.features if c not in t.columns]
        if missing:
            raise DataError(f"{tpath}: transfer set lacks feature column(s) {missing[:5]}")
        raw.transfer = t[raw.features]
    return raw


def _read_table(path: Path, kind: str) -> pd.DataFrame:
    if not path.exists():
        raise DataError(f"{path}: file not found")
    suffix = path.suffix.lower()
    expected = {"csv": (".csv", ".gz", ".txt"), "parquet": (".parquet", ".pq")}[kind]
    if suffix not in expected:
        raise DataError(f"{path}: unknown file type {suffix!r} for a {kind} source; expected {', '.join(expected)}")
    try:
        df = pd.read_csv(path) if kind == "csv" else pd.read_parquet(path)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty") from None
    except Exception as err:  # noqa: BLE001 - parser errors come in many types
        raise DataError(f"{path}: cannot be read as {kind}: {err}") from None
    if df.empty:
        raise DataError(f"{path}: the file has a header but no rows")
    return df


def _tabular(df: pd.DataFrame, p: DataParams, origin: str) -> RawData:
    if p.label_column not in df.columns:
        raise DataError(
            f"{origin}: missing label column {p.label_column!r}; columns are {list(df.columns)[:10]} "
            "(set data.label_column)"
        )
    missing = [c for c in p.feature_columns + p.sensitive_columns + p.categorical_columns if c not in df.columns]
    if missing:
        raise DataError(f"{origin}: missing column(s) {missing} that the config names; the file has {list(df.columns)[:12]}")
    excluded = {p.label_column} | (set() if p.sensitive_as_features else set(p.sensitive_columns))
    features = list(p.feature_columns) or [c for c in df.columns if c not in excluded]
    if not features:
        raise DataError(f"{origin}: no feature columns left besides the label and sensitive columns")
    return RawData(df, p.label_column, features, list(p.sensitive_columns), origin=origin)


def _digits(p: DataParams) -> RawData:
    from sklearn.datasets import load_digits

    d = load_digits()
    features = [f"px{i}" for i in range(d.data.shape[1])]
    df = pd.DataFrame(d.data.astype(np.float32), columns=features)
    df[p.label_column] = d.target.astype(np.int64)
    return RawData(df, p.label_column, features, [], input_shape=(1, 8, 8), origin="sklearn:digits")


def _npz(path: Path, p: DataParams) -> RawData:
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.suffix.lower() != ".npz":
        raise DataError(f"{path}: unknown file type {path.suffix!r} for an npz source; expected .npz")
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    need = ["x_train", "y_train", "x_test", "y_test"]
    missing = [k for k in need if k not in arrays]
    if missing:
        raise DataError(f"{path}: missing array(s) {missing}; an npz source needs {need} (optional x_val, y_val, x_transfer)")
    shape = tuple(arrays["x_train"].shape[1:])
    features = [f"x{i}" for i in range(int(np.prod(shape)))]

    def frame(x_key: str, y_key: str | None) -> pd.DataFrame:
        x = arrays[x_key]
        if x.shape[1:] != shape:
            raise DataError(f"{path}: {x_key} has shape {x.shape[1:]} per sample, x_train has {shape}")
        if not np.issubdtype(x.dtype, np.number):
            raise DataError(f"{path}: {x_key} has non-numeric dtype {x.dtype}")
        df = pd.DataFrame(x.reshape(len(x), -1), columns=features)
        if y_key is not None:
            y = arrays[y_key]
            if len(y) != len(x):
                raise DataError(f"{path}: {y_key} has {len(y)} rows, {x_key} has {len(x)}")
            df[p.label_column] = y
        return df

    return RawData(
        frame("x_train", "y_train"),
        p.label_column,
        features,
        [],
        input_shape=shape if len(shape) > 1 else None,
        fixed_test=frame("x_test", "y_test"),
        fixed_val=frame("x_val", "y_val") if "x_val" in arrays and "y_val" in arrays else None,
        transfer=frame("x_transfer", None) if "x_transfer" in arrays else None,
        origin=str(path),
    )


def synthetic(p: DataParams, seed: int = 0) -> RawData:
    """Gaussian class blobs with controllable overlap, label noise, group bias and covariate shift."""
    s = p.synthetic
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (s.n_classes, s.n_features))
    centres *= s.class_sep / np.maximum(np.linalg.norm(centres, axis=1, keepdims=True), 1e-9) * np.sqrt(2)
    y = rng.integers(0, s.n_classes, s.n_samples)
    x = centres[y] + rng.normal(0, 1, (s.n_samples, s.n_features))
    group = np.where(rng.random(s.n_samples) < 0.5, "a", "b")
    x[:, 0] += np.where(group == "b", 0.5, -0.5)  # the group is partly visible in the features
    if s.label_noise:
        flip = rng.random(s.n_samples) < s.label_noise
        y[flip] = rng.integers(0, s.n_classes, flip.sum())
    if s.group_bias:
        biased = (group == "b") & (rng.random(s.n_samples) < s.group_bias)
        y[biased] = 0
    features = [f"f{i}" for i in range(s.n_features)]
    df = pd.DataFrame(x.astype(np.float32), columns=features)
    df[p.label_column] = y
    sensitive = list(p.sensitive_columns) or ["group"]
    df[sensitive[0]] = group
    transfer = None
    if s.n_transfer:
        ty = rng.integers(0, s.n_classes, s.n_transfer)
        tx = centres[ty] + rng.normal(0, 1, (s.n_transfer, s.n_features)) + s.transfer_shift
        transfer = pd.DataFrame(tx.astype(np.float32), columns=features)
    return RawData(df, p.label_column, features, sensitive[:1], transfer=transfer, origin="synthetic")
