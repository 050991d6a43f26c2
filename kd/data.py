"""Deterministic stratified splits, and the prepared data set on disk.

Splits are made chunk by chunk (each chunk stratified by label, seeded by the run's seed and the chunk's
index), so a source of any size splits the same way on every read; a source of one chunk splits exactly
as scikit-learn's `train_test_split(random_state=seed)` does.

`data/prepared/` holds one `.npy` file per array (`x_train.npy`, `y_train.npy`, `g_train__<attr>.npy`,
…, `x_transfer.npy`: plain arrays, no pickle), memory-mapped on load so a stage reads only the rows it
touches; `meta.json` (schema, preprocessing, sizes, the content hash); and `raw/<split>.parquet`, the
splits' raw rows (the complete predictor's input; for the training split a seeded sample).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from kd.config import DataParams
from kd.preprocess import Preprocessor
from kd.sources import DataError, Source

SPLITS = ("train", "val", "test")
RAW_TRAIN_ROWS = 100_000  # training rows kept raw (a seeded sample beyond this)


def chunk_seed(seed: int, index: int) -> int:
    return seed if index == 0 else (seed * 1_000_003 + index) % 2**32


def split_chunk(df: pd.DataFrame, label: str, p: DataParams, seed: int, index: int, fixed_test: bool, fixed_val: bool) -> dict[str, pd.DataFrame]:
    """One chunk's rows per split: stratified by label where every class has two rows, seeded per chunk."""
    df = df.reset_index(drop=True)
    if df.empty:
        return {s: df for s in SPLITS}
    rs = chunk_seed(seed, index)
    codes = np.unique(df[label].astype(str).to_numpy(), return_inverse=True)[1]  # the classes scikit-learn sees
    rest, parts = np.arange(len(df)), {}
    if not fixed_test:
        rest, parts["test"] = _cut(rest, codes, p.test_fraction, rs)
    if not fixed_val:
        frac = p.val_fraction / (1 - (0 if fixed_test else p.test_fraction))
        rest, parts["val"] = _cut(rest, codes, frac, rs)
    parts["train"] = rest
    return {s: df.take(parts[s]).reset_index(drop=True) if s in parts else df.iloc[:0] for s in SPLITS}


def _cut(rows: np.ndarray, codes: np.ndarray, frac: float, rs: int) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's train_test_split of row numbers, stratified when every class has two rows (the same
    split as of the rows themselves)."""
    from sklearn.model_selection import train_test_split

    if len(rows) < 2:  # a one-row chunk stays in the larger part
        return rows, rows[:0]
    y = codes[rows]
    counts = np.bincount(y)
    strat = y if counts[counts > 0].min() >= 2 else None
    try:
        return train_test_split(rows, test_size=frac, random_state=rs, stratify=strat)
    except ValueError:  # a class too small for the requested split sizes in this chunk
        return train_test_split(rows, test_size=frac, random_state=rs)


@dataclass
class Frames:
    """Raw (untransformed) labelled frames per split, plus the unlabeled transfer frame (in memory)."""

    train: pd.DataFrame
    val: pd.DataFrame
    test: pd.DataFrame
    transfer: pd.DataFrame | None
    raw: Source


def split(source: Source, p: DataParams, seed: int) -> Frames:
    """All splits in memory (small sources, tests): `split_chunk` over every chunk, plus fixed splits."""
    parts: dict[str, list[pd.DataFrame]] = {s: [] for s in SPLITS}
    for i, chunk in enumerate(source.chunks()):
        for s, f in split_chunk(chunk, source.label, p, seed, i, source.fixed_test is not None, source.fixed_val is not None).items():
            parts[s].append(f)
    for s, fixed in (("test", source.fixed_test), ("val", source.fixed_val)):
        if fixed is not None:
            parts[s] = list(fixed())
    frames = {s: pd.concat(v, ignore_index=True) if v else pd.DataFrame() for s, v in parts.items()}
    return Frames(frames["train"], frames["val"], frames["test"], source.transfer_frame(), source)


class Rows:
    """Several arrays as one, indexed like one (the training split then the transfer set), without copying."""

    def __init__(self, parts: list[np.ndarray]):
        self.parts = [p for p in parts if p is not None]
        self.edges = np.cumsum([0] + [len(p) for p in self.parts])
        self.shape = (int(self.edges[-1]), *self.parts[0].shape[1:])
        self.dtype = self.parts[0].dtype

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, idx) -> np.ndarray:
        if isinstance(idx, slice):
            idx = np.arange(*idx.indices(len(self)))
        idx = np.asarray(idx)
        if len(self.parts) == 1:
            return np.asarray(self.parts[0][idx])
        out = np.empty((len(idx), *self.shape[1:]), self.dtype)
        which = np.searchsorted(self.edges, idx, side="right") - 1
        for k, part in enumerate(self.parts):
            sel = np.flatnonzero(which == k)
            if len(sel):
                out[sel] = part[idx[sel] - self.edges[k]]
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

    def distill_inputs(self) -> Rows:
        """Inputs the student distils on: the training split, then the unlabeled transfer set."""
        return Rows([self.x["train"], self.x_transfer])

    def distill_labels(self) -> np.ndarray:
        """Hard labels aligned with `distill_inputs`; -1 marks unlabeled transfer rows."""
        n_t = 0 if self.x_transfer is None else len(self.x_transfer)
        return np.concatenate([self.y["train"], np.full(n_t, -1, np.int64)])


def prepare(frames: Frames, p: DataParams) -> Prepared:
    """In memory (small sources, tests): the same preprocessing the pipeline's ingest writes to disk."""
    src = frames.raw
    pre = Preprocessor.fit(frames.train, src.features, src.label, p)
    x, y, groups = {}, {}, {}
    for name in SPLITS:
        df = getattr(frames, name)
        where = f"{src.origin} ({name} split)"
        x[name] = pre.features(df, where)
        y[name] = pre.labels(df, src.label, where)
        groups[name] = {c: df[c].astype(str).to_numpy() for c in src.sensitive if c in df.columns}
    xt = pre.features(frames.transfer, f"{src.origin} (transfer set)") if frames.transfer is not None else None
    return Prepared(x, y, groups, xt, pre.feature_names, pre.classes, input_shape(src, pre),
                    pre, meta={"label_column": src.label, "sensitive_columns": list(src.sensitive)})


def input_shape(src: Source, pre: Preprocessor) -> tuple[int, ...]:
    return tuple(src.input_shape) if src.input_shape and not pre.categories else (len(pre.feature_names),)


def raw_columns(src: Source) -> list[str]:
    return list(dict.fromkeys(src.features + [src.label] + list(src.sensitive)))


def save(prep: Prepared, out: Path, raw: dict[str, pd.DataFrame] | None = None) -> str:
    """Write an in-memory prepared set in the on-disk layout (raw: the splits' raw rows); return its hash."""
    out.mkdir(parents=True, exist_ok=True)
    for name, arr in arrays_of(prep).items():
        np.save(out / f"{name}.npy", arr, allow_pickle=False)
    if raw:
        (out / "raw").mkdir(exist_ok=True)
        for name, frame in raw.items():
            parquet_safe(frame).to_parquet(out / "raw" / f"{name}.parquet", index=False)
        np.save(out / "raw" / "train_index.npy", np.arange(len(raw["train"]), dtype=np.int64))
    digest = hash_dir(out, prep.preprocessor)
    sizes = {s: len(prep.y[s]) for s in SPLITS} | {"transfer": 0 if prep.x_transfer is None else len(prep.x_transfer)}
    write_meta(out, prep.preprocessor, prep.input_shape, sizes, sorted({a for s in SPLITS for a in prep.groups[s]}), digest, prep.meta)
    return digest


def arrays_of(prep: Prepared) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    for s in SPLITS:
        arrays[f"x_{s}"], arrays[f"y_{s}"] = prep.x[s], prep.y[s]
        for attr, g in prep.groups[s].items():
            arrays[f"g_{s}__{attr}"] = np.asarray(g).astype(str)
    if prep.x_transfer is not None:
        arrays["x_transfer"] = prep.x_transfer
    return arrays


def write_meta(out: Path, pre: Preprocessor, shape: tuple, sizes: dict, sensitive: list[str], digest: str, extra: dict) -> None:
    meta = dict(extra) | {
        "format": 2, "data_hash": digest, "feature_names": pre.feature_names, "classes": pre.classes, "input_shape": list(shape),
        "sensitive": sensitive, "preprocessor": pre.__dict__, "sizes": sizes,
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2))


def hash_dir(out: Path, pre: Preprocessor, block_rows: int = 65536) -> str:
    """Content hash of the arrays (name, dtype, shape, bytes, read block by block: bounded memory) and of the
    fitted preprocessing: a shift that standardisation hides from the arrays still changes the deployed model."""
    h = hashlib.sha256(json.dumps(pre.__dict__, sort_keys=True).encode())
    for f in sorted(out.glob("*.npy")):
        a = np.load(f, mmap_mode="r", allow_pickle=False)
        h.update(f.stem.encode() + str(a.dtype).encode() + str(a.shape).encode())
        for i in range(0, max(len(a), 1), block_rows):
            h.update(np.ascontiguousarray(a[i : i + block_rows]).tobytes())
    return h.hexdigest()[:16]


def parquet_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """Object columns holding mixed types (numbers and strings) as strings, so Arrow can store them."""
    fixed = {c: frame[c].map(lambda v: v if v is None or isinstance(v, str) or v != v else str(v))  # noqa: PLR0124 - NaN test
             for c in frame.columns if frame[c].dtype == object}
    return frame.assign(**fixed) if fixed else frame


def load(path: Path) -> Prepared:
    """The prepared set with every array memory-mapped (read-only): a stage reads only what it touches."""
    path = Path(path)
    if not (path / "meta.json").exists():
        raise DataError(f"{path}: no prepared data set here (meta.json missing); run 'kd stage validate' first")
    meta = json.loads((path / "meta.json").read_text())
    if meta.get("format") != 2:
        raise DataError(f"{path}: prepared by an older kd (format {meta.get('format')}); run 'kd stage validate' again")
    # copy-on-write maps: slices are writable views for torch, and no write ever reaches the files
    arrays = {f.stem: np.load(f, mmap_mode="c", allow_pickle=False) for f in path.glob("*.npy")}
    groups: dict[str, dict[str, np.ndarray]] = {s: {} for s in SPLITS}
    for k, v in arrays.items():
        if k.startswith("g_"):
            s, attr = k[2:].split("__", 1)
            groups[s][attr] = v
    return Prepared(
        x={s: arrays[f"x_{s}"] for s in SPLITS}, y={s: arrays[f"y_{s}"] for s in SPLITS}, groups=groups,
        x_transfer=arrays.get("x_transfer"), feature_names=meta["feature_names"], classes=meta["classes"],
        input_shape=tuple(meta["input_shape"]), preprocessor=Preprocessor(**meta["preprocessor"]), meta=meta,
    )


def raw_batches(path: Path, split: str, rows: int = 100_000):
    """The raw rows of one split, a batch of at most `rows` at a time (a 2M-row test split never sits in memory
    whole: at most one parquet row group, the rows of one source chunk, is read at once)."""
    import pyarrow.parquet as pq

    file = Path(path) / "raw" / f"{split}.parquet"
    if not file.exists():
        raise DataError(f"{file}: missing; run 'kd stage validate' first")
    # a row group at a time (ingest writes one per source chunk), cut into batches: pyarrow's iter_batches kept
    # ~850 bytes per row of a 2M-row split resident here (1.7 GB), reading row groups stays at one group's size
    f = pq.ParquetFile(file)
    for g in range(f.num_row_groups):
        group = f.read_row_group(g)
        for i in range(0, group.num_rows, rows):
            yield group.slice(i, rows).to_pandas()
        del group


def load_raw(path: Path, split: str) -> pd.DataFrame:
    """The raw rows of one split as the source gave them (the complete predictor's input)."""
    file = Path(path) / "raw" / f"{split}.parquet"
    if not file.exists():
        raise DataError(f"{file}: missing; run 'kd stage validate' first")
    return pd.read_parquet(file)


BATCH_ROWS = 65536  # rows a streaming pass holds at once (e.g. 16 MiB of a 64-feature float32 split)


def row_batches(arr: np.ndarray, rows: int | None = None):
    """(start, rows start..start+len) of an array, `rows` at a time, as fresh in-memory copies. A memory-mapped
    `.npy` (what `load` gives) is read with plain file reads, not through the map: the pages go to the OS page
    cache, not to this process's resident set, so a pass over a split of any length holds one batch."""
    n, rows = len(arr), rows or BATCH_ROWS
    name = getattr(arr, "filename", None) if isinstance(arr, np.memmap) else None
    if not name or n == 0 or _npy_header(name) != (arr.shape, arr.dtype, arr.offset) or not arr.flags.c_contiguous:  # a slice: through the map
        for i in range(0, n, rows):
            yield i, np.array(arr[i : i + rows])
        return
    row_bytes = arr.dtype.itemsize * int(np.prod(arr.shape[1:], dtype=np.int64))
    with open(name, "rb") as f:
        for i in range(0, n, rows):
            k = min(rows, n - i)
            f.seek(arr.offset + i * row_bytes)
            yield i, np.fromfile(f, dtype=arr.dtype, count=k * row_bytes // arr.dtype.itemsize).reshape((k, *arr.shape[1:]))


def rows_at(arr: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """arr[idx] for sorted row indices; from a memory-mapped `.npy`, read row by row with file reads. Through
    the map, the kernel's fault-around would map the cached pages around every row touched: 20k rows spread
    over a 1.7 GB split put nearly all of it in the process's resident set."""
    idx = np.asarray(idx, np.int64)
    name = getattr(arr, "filename", None) if isinstance(arr, np.memmap) else None
    if not name or _npy_header(name) != (arr.shape, arr.dtype, arr.offset) or not arr.flags.c_contiguous:
        return np.asarray(arr[idx])
    row_bytes = arr.dtype.itemsize * int(np.prod(arr.shape[1:], dtype=np.int64))
    out = np.empty((len(idx), *arr.shape[1:]), arr.dtype)
    view = out.reshape(len(idx), -1).view(np.uint8)
    fd = os.open(name, os.O_RDONLY)
    try:
        for k, i in enumerate(idx):
            view[k] = np.frombuffer(os.pread(fd, row_bytes, arr.offset + int(i) * row_bytes), np.uint8)
    finally:
        os.close(fd)
    return out


def _npy_header(file: str) -> tuple:
    """(shape, dtype, data offset) of a C-order `.npy` file."""
    with open(file, "rb") as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(f)
        return (shape if not fortran else None), dtype, f.tell()


class NpyWriter:
    """A `.npy` file of known shape written a batch of rows at a time (never whole in memory); readable with
    `np.load(mmap_mode=...)`. Written to a temporary name and renamed on `close`: nothing half-written."""

    def __init__(self, path: Path, shape: tuple[int, ...], dtype):
        self.path, self.shape, self.dtype, self.rows = Path(path), tuple(shape), np.dtype(dtype), 0
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        self.f = open(self.tmp, "wb")  # noqa: SIM115 - closed in close()
        np.lib.format.write_array_header_2_0(self.f, {"descr": np.lib.format.dtype_to_descr(self.dtype),
                                                      "fortran_order": False, "shape": self.shape})

    def write(self, batch: np.ndarray) -> None:
        batch = np.ascontiguousarray(batch, dtype=self.dtype)
        if batch.shape[1:] != self.shape[1:]:
            raise ValueError(f"{self.path.name}: a batch of shape {batch.shape} for an array of {self.shape}")
        self.f.write(batch.tobytes())
        self.rows += len(batch)

    def close(self) -> Path:
        self.f.close()
        if self.rows != self.shape[0]:
            self.tmp.unlink()
            raise ValueError(f"{self.path.name}: {self.rows} rows written of {self.shape[0]}")
        self.tmp.replace(self.path)
        return self.path
