"""Deterministic stratified splits, a preprocessor fitted on the training split only, and the
prepared data set on disk (`data/prepared/`: arrays.npz + meta.json, no pickle)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from kd.config import DataParams
from kd.sources import DataError, RawData

SPLITS = ("train", "val", "test")


@dataclass
class Frames:
    """Raw (untransformed) labelled frames per split, plus the unlabeled transfer frame."""

    train: pd.DataFrame
    val: pd.DataFrame
    test: pd.DataFrame
    transfer: pd.DataFrame | None
    raw: RawData


def split(raw: RawData, p: DataParams, seed: int) -> Frames:
    """Stratified train/val/test split by `seed`; sources with a fixed test (or val) split keep it."""
    df = raw.frame.reset_index(drop=True)
    y = df[raw.label].astype(str)
    stratify = y if y.value_counts().min() >= 2 else None
    if raw.fixed_test is not None:
        rest, test = df, raw.fixed_test.reset_index(drop=True)
    else:
        rest, test = train_test_split(df, test_size=p.test_fraction, random_state=seed, stratify=stratify)
    if raw.fixed_val is not None:
        train, val = rest, raw.fixed_val.reset_index(drop=True)
    else:
        frac = p.val_fraction / (1 - (0 if raw.fixed_test is not None else p.test_fraction))
        ys = rest[raw.label].astype(str)
        strat = ys if ys.value_counts().min() >= 2 else None
        train, val = train_test_split(rest, test_size=frac, random_state=seed, stratify=strat)
    return Frames(train.reset_index(drop=True), val.reset_index(drop=True), test.reset_index(drop=True), raw.transfer, raw)


@dataclass
class Preprocessor:
    """One-hot encoding of categorical columns and standard scaling, fitted on the training split."""

    numeric: list[str]
    categories: dict[str, list[str]]
    mean: list[float]
    std: list[float]
    classes: list[str]

    @property
    def feature_names(self) -> list[str]:
        return self.numeric + [f"{c}={v}" for c, vs in self.categories.items() for v in vs]

    @classmethod
    def fit(cls, train: pd.DataFrame, features: list[str], label: str, p: DataParams) -> Preprocessor:
        numeric = [c for c in features if c not in p.categorical_columns]
        x = _numeric(train, numeric, "training split")
        mean, std = x.mean(0), x.std(0)
        std[std < 1e-8] = 1.0  # constant columns (digits' border pixels) pass through centred
        cats = {c: sorted(train[c].astype(str).unique().tolist()) for c in p.categorical_columns if c in features}
        classes = list(p.classes) or sorted(train[label].astype(str).unique().tolist(), key=_natural)
        return cls(numeric, cats, mean.tolist(), std.tolist(), classes)

    def features(self, df: pd.DataFrame, where: str) -> np.ndarray:
        x = (_numeric(df, self.numeric, where) - np.asarray(self.mean)) / np.asarray(self.std)
        parts = [x.astype(np.float32)]
        for c, vs in self.categories.items():
            col = df[c].astype(str).to_numpy()
            parts.append((col[:, None] == np.asarray(vs)[None, :]).astype(np.float32))
        return np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]

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


def _natural(s: str) -> tuple:
    return (0, float(s), s) if _is_number(s) else (1, 0.0, s)


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def _numeric(df: pd.DataFrame, cols: list[str], where: str) -> np.ndarray:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise DataError(f"{where}: missing feature column(s) {missing[:5]}")
    out = np.empty((len(df), len(cols)), np.float64)
    for j, c in enumerate(cols):
        col = df[c]
        values = pd.to_numeric(col, errors="coerce") if not pd.api.types.is_bool_dtype(col) else col.where(False)
        bad = col[values.isna() & col.notna()]
        if len(bad):
            raise DataError(
                f"{where}: column {c!r} must be numeric but holds {bad.iloc[0]!r} "
                "(fix the value or list the column in data.categorical_columns)"
            )
        if values.isna().any():
            raise DataError(f"{where}: column {c!r} has {int(values.isna().sum())} missing value(s) (NaN)")
        out[:, j] = values.to_numpy(np.float64)
    return out


@dataclass
class Prepared:
    """The model-ready data set. `groups[split][attr]` holds sensitive-attribute values as strings."""

    x: dict[str, np.ndarray]
    y: dict[str, np.ndarray]
    groups: dict[str, dict[str, np.ndarray]]
    x_transfer: np.ndarray | None
    feature_names: list[str]
    classes: list[str]
    input_shape: tuple[int, ...]
    preprocessor: Preprocessor
    meta: dict = field(default_factory=dict)

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def distill_inputs(self) -> np.ndarray:
        """Inputs the student distils on: the training split, then the unlabeled transfer set."""
        if self.x_transfer is None:
            return self.x["train"]
        return np.concatenate([self.x["train"], self.x_transfer])

    def distill_labels(self) -> np.ndarray:
        """Hard labels aligned with `distill_inputs`; -1 marks unlabeled transfer rows."""
        n_t = 0 if self.x_transfer is None else len(self.x_transfer)
        return np.concatenate([self.y["train"], np.full(n_t, -1, np.int64)])


def prepare(frames: Frames, p: DataParams) -> Prepared:
    raw = frames.raw
    pre = Preprocessor.fit(frames.train, raw.features, raw.label, p)
    x, y, groups = {}, {}, {}
    for name in SPLITS:
        df = getattr(frames, name)
        where = f"{raw.origin} ({name} split)"
        x[name] = pre.features(df, where)
        y[name] = pre.labels(df, raw.label, where)
        groups[name] = {c: df[c].astype(str).to_numpy() for c in raw.sensitive if c in df.columns}
    xt = pre.features(frames.transfer, f"{raw.origin} (transfer set)") if frames.transfer is not None else None
    shape = raw.input_shape if raw.input_shape and not pre.categories else (x["train"].shape[1],)
    return Prepared(x, y, groups, xt, pre.feature_names, pre.classes, tuple(shape), pre)


def save(prep: Prepared, out: Path) -> str:
    """Write `arrays.npz` and `meta.json` to `out`; return the content hash of the arrays."""
    out.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    for s in SPLITS:
        arrays[f"x_{s}"], arrays[f"y_{s}"] = prep.x[s], prep.y[s]
        for attr, g in prep.groups[s].items():
            arrays[f"g_{s}__{attr}"] = g.astype(str)
    if prep.x_transfer is not None:
        arrays["x_transfer"] = prep.x_transfer
    digest = hash_arrays(arrays)
    np.savez(out / "arrays.npz", **arrays)
    meta = {
        "data_hash": digest,
        "feature_names": prep.feature_names,
        "classes": prep.classes,
        "input_shape": list(prep.input_shape),
        "sensitive": sorted({a for s in SPLITS for a in prep.groups[s]}),
        "preprocessor": prep.preprocessor.__dict__,
        "sizes": {s: len(prep.y[s]) for s in SPLITS} | {"transfer": 0 if prep.x_transfer is None else len(prep.x_transfer)},
    } | prep.meta
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
    return digest


def load(path: Path) -> Prepared:
    path = Path(path)
    if not (path / "meta.json").exists():
        raise DataError(f"{path}: no prepared data set here (meta.json missing); run 'kd stage validate' first")
    meta = json.loads((path / "meta.json").read_text())
    with np.load(path / "arrays.npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    groups: dict[str, dict[str, np.ndarray]] = {s: {} for s in SPLITS}
    for k, v in arrays.items():
        if k.startswith("g_"):
            s, attr = k[2:].split("__", 1)
            groups[s][attr] = v
    return Prepared(
        x={s: arrays[f"x_{s}"] for s in SPLITS},
        y={s: arrays[f"y_{s}"] for s in SPLITS},
        groups=groups,
        x_transfer=arrays.get("x_transfer"),
        feature_names=meta["feature_names"],
        classes=meta["classes"],
        input_shape=tuple(meta["input_shape"]),
        preprocessor=Preprocessor(**meta["preprocessor"]),
        meta=meta,
    )


def hash_arrays(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for k in sorted(arrays):
        a = np.ascontiguousarray(arrays[k])
        h.update(k.encode() + str(a.dtype).encode() + str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]
