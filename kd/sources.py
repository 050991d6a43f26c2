"""Data source adapters behind one interface: `load_source(params) -> Source`.

A source is read in chunks (`Source.chunks()`, a fresh iterator of pandas frames each call), so no stage
holds more than a chunk of it: CSV through pandas' chunked reader, Parquet (a file or a directory of
files) through pyarrow's batched reader, the synthetic generator chunk by chunk with a seeded generator
per chunk. Each chunk holds raw, untransformed rows (features, label, sensitive columns); splitting and
preprocessing happen in `kd.data` so every source gets the same deterministic treatment.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from kd.config import DataParams

CHUNK_ROWS = 200_000  # rows per chunk: a few hundred MB of pandas at 64 columns, at most


class DataError(ValueError):
    """Input data that cannot be used; the message names the file, the column and what was expected."""


Chunks = Callable[[], Iterator[pd.DataFrame]]


@dataclass
class Source:
    chunks: Chunks  # labelled rows: features, the label column, sensitive columns
    label: str
    features: list[str]
    sensitive: list[str]
    input_shape: tuple[int, ...] | None = None  # image-shaped sources (digits, npz images)
    fixed_test: Chunks | None = None  # sources that ship their own test split (npz)
    fixed_val: Chunks | None = None
    transfer: Chunks | None = None  # unlabeled features (Hinton's transfer set)
    origin: str = ""

    @property
    def frame(self) -> pd.DataFrame:
        """All labelled rows in memory (small sources, tests)."""
        return pd.concat(list(self.chunks()), ignore_index=True)

    def transfer_frame(self) -> pd.DataFrame | None:
        return None if self.transfer is None else pd.concat(list(self.transfer()), ignore_index=True)


def _frames(df: pd.DataFrame | None) -> Chunks | None:
    """An in-memory frame as a chunk source."""
    if df is None:
        return None
    return lambda: (df.iloc[i : i + CHUNK_ROWS] for i in range(0, max(len(df), 1), CHUNK_ROWS))


def load_source(p: DataParams, base: Path | None = None) -> Source:
    """Open `p.source` (paths relative to `base`) and the optional transfer set; reads only a header."""
    kind, _, rest = p.source.partition(":")
    base = base or Path.cwd()
    if p.source == "sklearn:digits":
        src = _digits(p)
    elif p.source == "synthetic":
        src = synthetic(p)
    elif kind in ("csv", "parquet"):
        src = _tabular(base / rest, kind, p, origin=rest)
    elif kind == "npz":
        src = _npz(base / rest, p)
    elif kind == "text":
        src = _text(base / rest, p, origin=rest)
    else:  # config validation already rejects this; kept for library callers
        raise DataError(f"unknown data source {p.source!r}")
    if p.transfer:
        tkind, _, tpath = p.transfer.partition(":")
        if tkind not in ("csv", "parquet"):
            raise DataError(f"data.transfer {p.transfer!r}: expected csv:PATH or parquet:PATH")
        if tkind == "parquet" and (base / tpath).is_dir() and not any((base / tpath).rglob("*.parquet")):
            return src  # a production transfer directory nothing was exported to yet: no transfer rows
        columns = _columns(base / tpath, tkind)
        missing = [c for c in src.features if c not in columns]
        if missing:
            raise DataError(f"{tpath}: transfer set lacks feature column(s) {missing[:5]}")
        src.transfer = _reader(base / tpath, tkind, src.features)
    return src


# ---------------------------------------------------------------------------- files
def _check_file(path: Path, kind: str) -> None:
    if not path.exists():
        raise DataError(f"{path}: file not found")
    suffix = path.suffix.lower()
    expected = {"csv": (".csv", ".gz", ".txt"), "parquet": (".parquet", ".pq", "")}[kind]
    if suffix not in expected or (kind == "parquet" and suffix == "" and not path.is_dir()):
        raise DataError(f"{path}: unknown file type {suffix!r} for a {kind} source; expected {', '.join(e for e in expected if e) or 'a directory'}")


def _columns(path: Path, kind: str) -> list[str]:
    """The header (reads a few rows only), with the errors a person can act on."""
    _check_file(path, kind)
    try:
        if kind == "csv":
            head = pd.read_csv(path, nrows=5)
        else:
            import pyarrow.dataset as ds

            head = ds.dataset(str(path), format="parquet").head(5).to_pandas()
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty") from None
    except Exception as err:  # noqa: BLE001 - parser errors come in many types
        raise DataError(f"{path}: cannot be read as {kind}: {' '.join(str(err).split())[:300]}") from None
    if head.empty:
        raise DataError(f"{path}: the file has a header but no rows")
    if kind == "csv" and len(head.columns) == 1:
        sep = next((c for c in (";", "\t", "|") if c in str(head.columns[0])), None)
        if sep is not None:
            raise DataError(f"{path}: one column {str(head.columns[0])[:60]!r}: the file looks {sep!r}-separated; "
                            "kd reads comma-separated CSV (convert it, or use parquet)")
    return [str(c) for c in head.columns]


def _reader(path: Path, kind: str, columns: list[str] | None = None) -> Chunks:
    """A re-iterable chunked reader of a CSV file or a Parquet file/directory."""

    def csv() -> Iterator[pd.DataFrame]:
        try:
            for chunk in pd.read_csv(path, usecols=columns, chunksize=CHUNK_ROWS):
                yield chunk
        except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as err:
            raise DataError(f"{path}: cannot be read as csv: {' '.join(str(err).split())[:300]}") from None

    def parquet() -> Iterator[pd.DataFrame]:
        import pyarrow.dataset as ds

        try:
            for batch in ds.dataset(str(path), format="parquet").to_batches(columns=columns, batch_size=CHUNK_ROWS):
                if batch.num_rows:
                    yield batch.to_pandas()
        except Exception as err:  # noqa: BLE001
            raise DataError(f"{path}: cannot be read as parquet: {' '.join(str(err).split())[:300]}") from None

    return csv if kind == "csv" else parquet


def _tabular(path: Path, kind: str, p: DataParams, origin: str) -> Source:
    columns = _columns(path, kind)
    if p.label_column not in columns:
        raise DataError(f"{origin}: missing label column {p.label_column!r}; columns are {columns[:10]} (set data.label_column)")
    missing = [c for c in p.feature_columns + p.sensitive_columns + p.categorical_columns if c not in columns]
    if missing:
        raise DataError(f"{origin}: missing column(s) {missing} that the config names; the file has {columns[:12]}")
    excluded = {p.label_column} | (set() if p.sensitive_as_features else set(p.sensitive_columns))
    features = list(p.feature_columns) or [c for c in columns if c not in excluded]
    if not features:
        raise DataError(f"{origin}: no feature columns left besides the label and sensitive columns")
    keep = list(dict.fromkeys(features + [p.label_column] + list(p.sensitive_columns)))
    return Source(_reader(path, kind, keep), p.label_column, features, list(p.sensitive_columns), origin=origin)


def _text(path: Path, p: DataParams, origin: str) -> Source:
    """A CSV or Parquet file with a text column and a label column: the text is the one feature (tokenized by
    `kd.preprocess`), sensitive columns are kept for the checks."""
    kind = "parquet" if path.suffix.lower() in (".parquet", ".pq") else "csv"
    columns = _columns(path, kind)
    if p.text_column not in columns:
        raise DataError(f"{origin}: missing text column {p.text_column!r}; columns are {columns[:10]} (set data.text_column)")
    if p.label_column not in columns:
        raise DataError(f"{origin}: missing label column {p.label_column!r}; columns are {columns[:10]} (set data.label_column)")
    missing = [c for c in p.sensitive_columns if c not in columns]
    if missing:
        raise DataError(f"{origin}: missing column(s) {missing} that the config names; the file has {columns[:12]}")
    keep = list(dict.fromkeys([p.text_column, p.label_column, *p.sensitive_columns]))
    return Source(_reader(path, kind, keep), p.label_column, [p.text_column], list(p.sensitive_columns), origin=origin)


def _digits(p: DataParams) -> Source:
    from sklearn.datasets import load_digits

    d = load_digits()
    features = [f"px{i}" for i in range(d.data.shape[1])]
    df = pd.DataFrame(d.data.astype(np.float32), columns=features)
    df[p.label_column] = d.target.astype(np.int64)
    return Source(_frames(df), p.label_column, features, [], input_shape=(1, 8, 8), origin="sklearn:digits")


def _npz(path: Path, p: DataParams) -> Source:
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.suffix.lower() != ".npz":
        raise DataError(f"{path}: unknown file type {path.suffix!r} for an npz source; expected .npz")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except ValueError as err:
        raise DataError(f"{path}: cannot be read as npz without pickle: {err}") from None
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

    has_val = "x_val" in arrays and "y_val" in arrays
    return Source(
        _frames(frame("x_train", "y_train")), p.label_column, features, [],
        input_shape=shape if len(shape) > 1 else None,
        fixed_test=_frames(frame("x_test", "y_test")),
        fixed_val=_frames(frame("x_val", "y_val")) if has_val else None,
        transfer=_frames(frame("x_transfer", None)) if "x_transfer" in arrays else None,
        origin=str(path),
    )


def synthetic(p: DataParams, seed: int = 0) -> Source:
    """Gaussian class blobs with controllable overlap, label noise, group bias and covariate shift.

    Up to one chunk, labelled rows and transfer rows come from one generator (the data every earlier
    figure was measured on); beyond that, chunk by chunk, each from its own seeded generator, so any
    size streams."""
    s = p.synthetic
    rng0 = np.random.default_rng(seed)
    centres = rng0.normal(0, 1, (s.n_classes, s.n_features))
    centres *= s.class_sep / np.maximum(np.linalg.norm(centres, axis=1, keepdims=True), 1e-9) * np.sqrt(2)
    features = [f"f{i}" for i in range(s.n_features)]
    sensitive = list(p.sensitive_columns) or ["group"]

    def labelled(rng: np.random.Generator, n: int) -> pd.DataFrame:
        y = rng.integers(0, s.n_classes, n)
        x = centres[y] + rng.normal(0, 1, (n, s.n_features))
        group = np.where(rng.random(n) < 0.5, "a", "b")
        x[:, 0] += np.where(group == "b", 0.5, -0.5)  # the group is partly visible in the features
        if s.label_noise:
            flip = rng.random(n) < s.label_noise
            y[flip] = rng.integers(0, s.n_classes, flip.sum())
        if s.group_bias:
            y[(group == "b") & (rng.random(n) < s.group_bias)] = 0
        df = pd.DataFrame(x.astype(np.float32), columns=features)
        df[p.label_column] = y
        df[sensitive[0]] = group
        return df

    def unlabelled(rng: np.random.Generator, n: int) -> pd.DataFrame:
        ty = rng.integers(0, s.n_classes, n)
        tx = centres[ty] + rng.normal(0, 1, (n, s.n_features)) + s.transfer_shift
        return pd.DataFrame(tx.astype(np.float32), columns=features)

    if s.n_samples <= CHUNK_ROWS and s.n_transfer <= CHUNK_ROWS:  # one generator, as it always was
        rng = np.random.default_rng(seed)
        rng.normal(0, 1, (s.n_classes, s.n_features))  # the centres' draws
        df = labelled(rng, s.n_samples)
        transfer = unlabelled(rng, s.n_transfer) if s.n_transfer else None
        return Source(_frames(df), p.label_column, features, sensitive[:1], transfer=_frames(transfer), origin="synthetic")

    def stream(make, total: int, stream_id: int) -> Chunks:
        return lambda: (make(np.random.default_rng([seed, stream_id, i]), min(CHUNK_ROWS, total - lo))
                        for i, lo in enumerate(range(0, total, CHUNK_ROWS)))

    return Source(stream(labelled, s.n_samples, 1), p.label_column, features, sensitive[:1],
                  transfer=stream(unlabelled, s.n_transfer, 2) if s.n_transfer else None, origin="synthetic")
