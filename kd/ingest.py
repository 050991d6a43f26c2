"""The validate stage's core: two passes over the source, each holding one chunk at a time.

Pass 1 splits every chunk (`kd.data.split_chunk`), accumulates the exact statistics validation checks
(`kd.profile`) and the training split's preprocessing statistics (`kd.preprocess.FitStats`); then the
suites run (`kd.validate`) and a failure stops here, before anything is written. Pass 2 splits the same
chunks the same way, preprocesses them and writes each row into memory-mapped `.npy` arrays at its
offset, and the raw rows of val/test (and a seeded sample of train) into Parquet. Peak memory: one chunk,
the leakage hashes (8 bytes a row) and the raw training sample — not the data set.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from kd.config import Params
from kd.data import RAW_TRAIN_ROWS, SPLITS, hash_dir, input_shape, parquet_safe, raw_columns, split_chunk, write_meta
from kd.preprocess import FitStats, Preprocessor
from kd.profile import Profile
from kd.sources import DataError, Source
from kd.validate import ValidationFailed, validate_profile


def _split_chunks(src: Source, p: Params) -> Iterator[tuple[str, pd.DataFrame]]:
    """(split, rows) in a fixed order: the labelled chunks split, the fixed splits, the transfer set."""
    fixed_t, fixed_v = src.fixed_test is not None, src.fixed_val is not None
    for i, chunk in enumerate(src.chunks()):
        if chunk.columns.duplicated().any() or not all(isinstance(c, str) for c in chunk.columns):
            raise DataError(f"{src.origin}: column names must be unique strings; found {list(chunk.columns)[:10]}")
        for split, rows in split_chunk(chunk, src.label, p.data, p.seed, i, fixed_t, fixed_v).items():
            if len(rows):
                yield split, rows
    for split, fixed in (("test", src.fixed_test), ("val", src.fixed_val)):
        for chunk in fixed() if fixed is not None else ():
            yield split, chunk
    for chunk in src.transfer() if src.transfer is not None else ():
        yield "transfer", chunk


class _Sample:
    """A seeded uniform sample of at most `k` training rows (the smallest random keys), with their row numbers."""

    def __init__(self, k: int, seed: int):
        self.k, self.rng, self.kept = k, np.random.default_rng([seed, 7]), None

    def offer(self, rows: pd.DataFrame, first: int) -> None:
        cand = rows.reset_index(drop=True).assign(__key=self.rng.random(len(rows)), __row=np.arange(first, first + len(rows)))
        pool = cand if self.kept is None else pd.concat([self.kept, cand], ignore_index=True)
        self.kept = pool.nsmallest(self.k, "__key") if len(pool) > self.k else pool

    def frame(self) -> tuple[pd.DataFrame, np.ndarray]:
        kept = self.kept.sort_values("__row")
        return kept.drop(columns=["__key", "__row"]).reset_index(drop=True), kept["__row"].to_numpy(np.int64)


def ingest(src: Source, p: Params, out: Path, validation: Path) -> dict:
    """Validate the source exactly (pass 1) and write the prepared set to `out` (pass 2)."""
    t0 = time.perf_counter()
    numeric = [] if p.data.is_text else [c for c in src.features if c not in p.data.categorical_columns]
    prof = Profile(src.features, numeric, src.label, list(src.sensitive), src.input_shape)
    stats = FitStats(numeric, [] if p.data.is_text else [c for c in p.data.categorical_columns if c in src.features], src.label)
    unusable: DataError | None = None
    for split, rows in _split_chunks(src, p):
        prof.update(split, rows)
        if split == "train" and unusable is None and not prof.splits["train"].missing:
            try:
                stats.update(rows, f"{src.origin} (train split)")
            except DataError as err:  # validation names it; keep the first for what it cannot name
                unusable = err
    report = validate_profile(prof, p, validation, src.origin)
    if not report["success"]:
        raise ValidationFailed(report["failures"])
    if unusable is not None:
        raise unusable
    seconds_validate = time.perf_counter() - t0

    pre = Preprocessor.from_stats(stats, p.data)
    out.mkdir(parents=True, exist_ok=True)
    for old in list(out.glob("*.npy")) + list(out.glob("raw/*")):
        old.unlink()
    (out / "raw").mkdir(exist_ok=True)
    sizes = {s: st.rows for s, st in prof.splits.items()}
    width = len(pre.feature_names)
    arrays = {f"x_{s}": _open(out, f"x_{s}", (sizes.get(s, 0), width), pre.dtype) for s in SPLITS}
    arrays |= {f"y_{s}": _open(out, f"y_{s}", (sizes.get(s, 0),), np.int64) for s in SPLITS}
    for s in SPLITS:
        for attr, counts in prof.splits[s].groups.items() if s in prof.splits else []:
            arrays[f"g_{s}__{attr}"] = _open(out, f"g_{s}__{attr}", (sizes[s],), f"<U{max([len(g) for g in counts] + [1])}")
    if sizes.get("transfer"):
        arrays["x_transfer"] = _open(out, "x_transfer", (sizes["transfer"], width), pre.dtype)
    offset = dict.fromkeys(sizes, 0)
    writers: dict[str, object] = {}
    sample = _Sample(RAW_TRAIN_ROWS, p.seed)
    columns = raw_columns(src)
    for split, rows in _split_chunks(src, p):
        lo, hi = offset[split], offset[split] + len(rows)
        where = f"{src.origin} ({split} split)"
        if split == "transfer":
            arrays["x_transfer"][lo:hi] = pre.features(rows, where)
        else:
            arrays[f"x_{split}"][lo:hi] = pre.features(rows, where)
            arrays[f"y_{split}"][lo:hi] = pre.labels(rows, src.label, where)
            for attr in prof.splits[split].groups:
                arrays[f"g_{split}__{attr}"][lo:hi] = rows[attr].astype(str).to_numpy()
            raw = parquet_safe(rows[[c for c in columns if c in rows.columns]])
            if split == "train":
                sample.offer(raw, lo)
            else:
                _append(writers, out / "raw" / f"{split}.parquet", raw)
        offset[split] = hi
    for w in writers.values():
        w.close()
    for a in arrays.values():
        a.flush()
    raw_train, rows_kept = sample.frame()
    raw_train.to_parquet(out / "raw" / "train.parquet", index=False)
    np.save(out / "raw" / "train_index.npy", rows_kept)
    digest = hash_dir(out, pre)
    sensitive = sorted({a for s in SPLITS if s in prof.splits for a in prof.splits[s].groups})
    write_meta(out, pre, input_shape(src, pre), {s: sizes.get(s, 0) for s in (*SPLITS, "transfer")}, sensitive, digest,
               {"label_column": src.label, "sensitive_columns": list(src.sensitive),
                "raw_train": {"rows": len(raw_train), "of": sizes["train"], "sample_seed": p.seed}})
    return {"data_hash": digest, "sizes": sizes, "n_expectations": report["n_expectations"],
            "seconds": {"validate": round(seconds_validate, 2), "write": round(time.perf_counter() - t0 - seconds_validate, 2)}}


class _Npy:
    """A `.npy` file written front to back: the header for the final shape, then rows appended in order.
    Plain writes, not a memory map, so the written pages are page cache, not this process's memory."""

    def __init__(self, path: Path, shape: tuple, dtype):
        self.dtype, self.f, self.rows, self.shape = np.dtype(dtype), open(path, "wb"), 0, shape
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": tuple(shape)}
        np.lib.format.write_array_header_1_0(self.f, header)

    def __setitem__(self, rows: slice, values: np.ndarray) -> None:
        if rows.start != self.rows:
            raise ValueError(f"rows must arrive in order: at {self.rows}, got {rows.start}")
        values = np.ascontiguousarray(values, dtype=self.dtype)
        self.f.write(values.tobytes())
        self.rows += len(values)

    def flush(self) -> None:
        if self.rows != self.shape[0]:
            raise ValueError(f"{self.f.name}: {self.rows} rows written, the header says {self.shape[0]}")
        self.f.close()


def _open(out: Path, name: str, shape: tuple, dtype) -> _Npy:
    return _Npy(out / f"{name}.npy", shape, dtype)


def _append(writers: dict, path: Path, frame: pd.DataFrame) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame, preserve_index=False)
    if path not in writers:
        writers[path] = pq.ParquetWriter(str(path), table.schema)
    writers[path].write_table(table.cast(writers[path].schema))
