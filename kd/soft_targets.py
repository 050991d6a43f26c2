"""The soft-target cache: teacher outputs computed once, written as sharded `.npy` files (no pickle),
memory-mapped on read.

Layout of `cache/soft_targets/`:
- `shard-NNNNN.logp.npy`: (rows, views, C) teacher log-probabilities, or (rows, views, k) with top-k;
- `shard-NNNNN.idx.npy`: (rows, views, k) class indices of the kept entries (top-k only);
- `views.npz`: the augmentation parameters of every view (`kd.augment`), only when `views > 1`;
- `manifest.json`: the cache key, shapes and a sha256 per file — written last, atomically: it is the
  commit point. A cache without a manifest, with a different key, or with a file whose checksum does not
  match is never used; `build` regenerates exactly the shards that are missing or corrupt.
- `manifest.partial.json`: while building, the shards finished so far (key and sha256 each), rewritten
  atomically after every shard, so a killed build resumes where it stopped (DVC keeps the directory:
  the stage's output is `persist: true`); a build in several processes keeps one per rank
  (`manifest.partial-rank<r>.json`) and rank 0 merges them.

The key hashes the teacher weights, the data version and the cache parameters, so a changed teacher or
data set never reuses stale targets. Top-k keeps the k largest probabilities exactly and spreads the
residual mass 1 - sum(top-k) uniformly over the other classes, so a row still sums to one.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from kd import augment
from kd.blocks import BUDGET_BYTES, BlockBuffer
from kd.config import SoftTargetParams
from kd.distributed import Runtime
from kd.failpoints import crash_point

MANIFEST = "manifest.json"
PARTIAL = "manifest.partial.json"
FORMAT_VERSION = 1


class CacheError(RuntimeError):
    """The cache cannot be used as it is; the message says why and how to rebuild it."""


def cache_key(teacher_hash: str, data_hash: str, sp: SoftTargetParams, seed: int) -> str:
    cfg = sp.model_dump(mode="json")
    cfg.pop("batch_size")  # how fast it was computed does not change the targets
    blob = json.dumps({"teacher": teacher_hash, "data": data_hash, "params": cfg, "seed": seed, "v": FORMAT_VERSION}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def sha256_file(path: Path, chunk: int = 1 << 23) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def index_dtype(n_classes: int) -> np.dtype:
    """Top-k class indices take 2 bytes up to 32,767 classes."""
    return np.dtype(np.int16 if n_classes <= np.iinfo(np.int16).max else np.int32)


def _shard_files(i: int, top_k: int) -> list[str]:
    return [f"shard-{i:05d}.logp.npy"] + ([f"shard-{i:05d}.idx.npy"] if top_k else [])


def _bad_files(root: Path, manifest: dict) -> set[str]:
    """Files that are missing or whose checksum differs from the manifest."""
    return {name for name, digest in manifest["files"].items() if not _intact(root, name, digest, manifest["sizes"].get(name))}


def _intact(root: Path, name: str, digest: str, size: int | None) -> bool:
    p = root / name
    return p.exists() and (size is None or p.stat().st_size == size) and sha256_file(p) == digest


def _write_json(path: Path, payload: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    os.replace(tmp, path)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def read_manifest(root: Path) -> dict | None:
    return _read_json(root / MANIFEST)


def build(
    root: Path,
    key: str,
    x_all: np.ndarray,
    teacher_fn: Callable[[np.ndarray], np.ndarray],
    n_classes: int,
    sp: SoftTargetParams,
    seed: int,
    meta: dict | None = None,
    rt: Runtime | None = None,
) -> dict:
    """Make `root` a valid cache for `key`, computing only what is missing, corrupt or stale.

    `teacher_fn` maps a float32 batch (B, F) to log-probabilities (B, C). Returns a summary with the
    shards (re)built, so callers can tell a reuse from a rebuild. Under torch.distributed (`rt`), rank r
    computes every world-th shard still to do, each rank records its finished shards in its own partial
    manifest, and rank 0 commits the manifest once every rank is done: the same layout, in 1/world the time.
    """
    rt = rt or Runtime()
    n, k = len(x_all), sp.top_k
    if k >= n_classes:
        raise CacheError(f"soft_targets.top_k={k} must be below the number of classes ({n_classes}); use 0 for all")
    n_shards = max(1, math.ceil(n / sp.shard_size))
    old = read_manifest(root)
    if old is not None and old.get("key") == key and not _bad_files(root, old):
        return {"key": key, "rebuilt_shards": [], "reused": True, "n": n}
    _barrier(rt)  # every rank has decided before rank 0 changes anything
    if rt.main:
        _prepare(root, key, old, n, sp, seed)
    _barrier(rt)
    done = _read_json(root / PARTIAL)["files"]
    views = augment.view_params(n, sp.views, sp.augment, seed) if sp.views > 1 else None  # deterministic: views.npz holds the same
    dtype = np.dtype(sp.dtype)
    todo = [s for s in range(n_shards) if not all(f in done for f in _shard_files(s, k))]
    mine = todo[rt.rank :: rt.world]
    progress = root / (PARTIAL if rt.world == 1 else f"manifest.partial-rank{rt.rank}.json")
    t0 = time.perf_counter()
    for s in mine:
        lo, hi = s * sp.shard_size, min(n, (s + 1) * sp.shard_size)
        out = np.empty((hi - lo, sp.views, k or n_classes), dtype)
        idx_out = np.empty((hi - lo, sp.views, k), index_dtype(n_classes)) if k else None
        for b in range(lo, hi, sp.batch_size):
            rows = np.arange(b, min(hi, b + sp.batch_size))
            for v in range(sp.views):
                xb = x_all[rows] if views is None else augment.apply(x_all, rows, np.full(len(rows), v), views, sp.augment.noise_std)
                logp = np.asarray(teacher_fn(xb), dtype=np.float32)
                if k:
                    top = np.argpartition(-logp, k - 1, axis=1)[:, :k]
                    idx_out[rows - lo, v] = top
                    out[rows - lo, v] = np.take_along_axis(logp, top, 1)
                else:
                    out[rows - lo, v] = logp
        names = _shard_files(s, k)
        _save_npy(root / names[0], out)
        if k:
            _save_npy(root / names[1], idx_out)
        done |= {f: sha256_file(root / f) for f in names}
        _write_json(progress, {"key": key, "files": done})  # this shard is safe from a kill now
        crash_point(f"soft_targets:shard-{s}")
    _barrier(rt)  # every rank's shards are on disk
    if not rt.main:
        return {"key": key, "rebuilt_shards": mine, "reused": False, "n": n}
    files = [f for s in range(n_shards) for f in _shard_files(s, k)] + (["views.npz"] if sp.views > 1 else [])
    manifest = {
        "format": FORMAT_VERSION, "key": key, "n": n, "n_classes": n_classes, "views": sp.views, "top_k": k,
        "dtype": sp.dtype, "shard_size": sp.shard_size, "n_shards": n_shards,
        "augment": sp.augment.model_dump(), "seed": seed,
        "files": {f: sha256_file(root / f) for f in files},
        "sizes": {f: (root / f).stat().st_size for f in files},
        "meta": meta or {},
    }
    _write_json(root / MANIFEST, manifest)  # the commit point
    for partial in root.glob("manifest.partial*.json"):
        partial.unlink()
    return {"key": key, "rebuilt_shards": todo, "reused": False, "n": n, "processes": rt.world, "seconds": time.perf_counter() - t0}


def _prepare(root: Path, key: str, old: dict | None, n: int, sp: SoftTargetParams, seed: int) -> None:
    """Rank 0, before any shard is computed: keep what is intact for this key (from the manifest, or from
    the partial manifests of a killed build), drop everything else, uncommit, write the views."""
    root.mkdir(parents=True, exist_ok=True)
    partials = [m for f in sorted(root.glob("manifest.partial*.json")) if (m := _read_json(f)) is not None and m.get("key") == key]
    if old is not None and old.get("key") == key:  # committed, but some files are missing or corrupt
        done = {f: d for f, d in old["files"].items() if _intact(root, f, d, old["sizes"].get(f))}
    elif partials:  # a killed build of this very cache (one partial manifest per rank): resume it
        done = {f: d for m in partials for f, d in m["files"].items() if _intact(root, f, d, None)}
    else:  # another key (or nothing): start afresh
        done = {}
        for p in root.glob("shard-*.npy"):
            p.unlink()
    (root / MANIFEST).unlink(missing_ok=True)  # from here on the cache is uncommitted
    for partial in root.glob("manifest.partial-rank*.json"):
        partial.unlink()
    _write_json(root / PARTIAL, {"key": key, "files": done})
    if sp.views > 1:
        view_params(root, n, sp, seed)


def _barrier(rt: Runtime) -> None:
    if rt.world > 1:
        import torch.distributed as dist

        dist.barrier()


def view_params(root: Path, n: int, sp: SoftTargetParams, seed: int) -> dict[str, np.ndarray]:
    views = augment.view_params(n, sp.views, sp.augment, seed)
    tmp = root / "views.tmp.npz"
    np.savez(tmp, **views)
    os.replace(tmp, root / "views.npz")
    return views


def _save_npy(path: Path, arr: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.save(f, arr)
    os.replace(tmp, path)


class SoftTargets:
    """Read-only, memory-mapped view of a committed cache.

    `logp(idx, view)` returns full (B, C) float32 log-probabilities; top-k rows are rebuilt with the
    residual mass spread over the classes that were dropped.
    """

    def __init__(self, root: Path, expected_key: str | None = None, verify: bool = True):
        self.root = Path(root)
        m = read_manifest(self.root)
        if m is None:
            raise CacheError(f"{self.root}/{MANIFEST} is missing: the cache was never committed; run 'dvc repro soft_targets'")
        if expected_key is not None and m["key"] != expected_key:
            raise CacheError(
                f"{self.root}/{MANIFEST} was built for key {m['key']}, expected {expected_key} "
                f"(teacher, data or soft_targets params changed); run 'dvc repro soft_targets'"
            )
        if verify:
            bad = _bad_files(self.root, m)
            if bad:
                raise CacheError(f"{self.root}: file(s) {sorted(bad)[:5]} missing or corrupt (checksum mismatch); run 'dvc repro soft_targets'")
        self.manifest = m
        self.n, self.n_classes, self.views, self.k = m["n"], m["n_classes"], m["views"], m["top_k"]
        self.shard_size = m["shard_size"]
        # plain ndarray views of the memory maps (np.memmap's own indexing adds microseconds per call)
        self._logp = [np.asarray(np.load(self.root / _shard_files(s, self.k)[0], mmap_mode="r")) for s in range(m["n_shards"])]
        self._idx = [np.asarray(np.load(self.root / _shard_files(s, self.k)[1], mmap_mode="r")) for s in range(m["n_shards"])] if self.k else []
        self.view_params: dict[str, np.ndarray] = {}
        if self.views > 1:  # with one view every input is the clean sample: nothing is stored
            with np.load(self.root / "views.npz") as z:
                self.view_params = {name: z[name] for name in z.files}

    def raw(self, idx: np.ndarray, view: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Stored values (and top-k indices) for rows `idx` at views `view`, as float32/int64."""
        idx, view = np.asarray(idx), np.asarray(view)
        if len(self._logp) == 1:  # the common case: one shard, one fancy-indexed read
            return np.asarray(self._logp[0][idx, view], np.float32), (np.asarray(self._idx[0][idx, view], np.int64) if self.k else None)
        vals = np.empty((len(idx), self.k or self.n_classes), np.float32)
        inds = np.empty((len(idx), self.k), np.int64) if self.k else None
        order = np.argsort(idx, kind="stable")  # sorted rows read each memory map sequentially
        sidx = idx[order]
        edges = np.searchsorted(sidx, np.arange(1, len(self._logp)) * self.shard_size)
        for s, seg in enumerate(np.split(np.arange(len(idx)), edges)):
            if len(seg):
                dest, rows = order[seg], sidx[seg] - s * self.shard_size
                vals[dest] = self._logp[s][rows, view[dest]]
                if self.k:
                    inds[dest] = self._idx[s][rows, view[dest]]
        return vals, inds

    def rows(self, lo: int, hi: int) -> np.ndarray:
        """Rows lo..hi at every view as full float32 log-probabilities, (hi - lo, views, C), read as contiguous
        slices of the shards (sequential I/O); top-k rows expanded as `logp` does."""
        s0, s1 = lo // self.shard_size, (hi - 1) // self.shard_size
        cut = [(s, max(lo - s * self.shard_size, 0), min(hi - s * self.shard_size, self.shard_size)) for s in range(s0, s1 + 1)]
        vals = self._logp[s0][cut[0][1] : cut[0][2]] if len(cut) == 1 else np.concatenate([self._logp[s][a:b] for s, a, b in cut])
        vals = vals.astype(np.float32)  # a copy: the read happens here, in order
        if not self.k:
            return vals
        inds = np.concatenate([self._idx[s][a:b] for s, a, b in cut])
        return expand_top_k(vals.reshape(-1, self.k), inds.reshape(-1, self.k), self.n_classes).reshape(hi - lo, self.views, self.n_classes)

    def reader(self, budget: int = BUDGET_BYTES) -> TargetReader:
        """The training-time reader: whole blocks of rows, expanded once (`kd.blocks`)."""
        return TargetReader(self, budget)

    def logp(self, idx: np.ndarray, view: np.ndarray | int = 0) -> np.ndarray:
        view = np.broadcast_to(np.asarray(view), np.shape(idx))
        vals, inds = self.raw(idx, view)
        if not self.k:
            return vals
        return expand_top_k(vals, inds, self.n_classes)


def expand_top_k(kept_logp: np.ndarray, kept_idx: np.ndarray, n_classes: int) -> np.ndarray:
    """Full log-probabilities from the top-k entries: kept entries exact, the residual mass shared evenly."""
    k = kept_logp.shape[1]
    kept_mass = np.exp(kept_logp.astype(np.float64)).sum(1)
    residual = np.clip(1.0 - kept_mass, 1e-12, None) / (n_classes - k)
    out = np.repeat(np.log(residual)[:, None], n_classes, 1).astype(np.float32)
    np.put_along_axis(out, kept_idx, kept_logp, 1)
    return out


class TargetReader:
    """`SoftTargets.logp` for training: rows come from whole blocks (`kd.blocks.BlockBuffer`) read as contiguous
    slices and expanded to float32 once, so a step is one fancy index into memory, and an epoch in
    block-shuffled order (`kd.blocks.epoch_order`) reads the shards sequentially. A cache within the budget
    is read once and stays in memory; a batch touching more blocks than the budget holds (random access over
    a large cache) is read row by row, as `logp` does."""

    def __init__(self, targets: SoftTargets, budget: int = BUDGET_BYTES):
        self.targets, self.views = targets, targets.views
        self.buffer = BlockBuffer(targets.n, targets.rows, targets.views * targets.n_classes * 4, budget)

    def logp(self, idx: np.ndarray, view: np.ndarray | None = None) -> np.ndarray:
        """(B, C) float32 log-probabilities of rows `idx` at views `view` (None: view 0)."""
        found = self.buffer.locate(idx)
        if found is None:
            return self.targets.logp(idx, 0 if view is None else view)
        buf, pos = found
        flat = buf.reshape(-1, buf.shape[-1])  # (rows * views, C): a single-axis take is numpy's fast gather
        return np.take(flat, pos if self.views == 1 else pos * self.views + (0 if view is None else view), axis=0)
