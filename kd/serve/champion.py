"""The model that answers: a registry version loaded, warmed up and checked, and the watcher that swaps in a
new one when @champion moves.

A swap replaces one reference (`Champion.current`). A request reads it once when it starts and uses that
`Loaded` to the end, so requests in flight finish on the old model, and the next ones get the new one; there
is no moment without a model. The new version is downloaded and loaded in a worker thread, then warmed up
and checked (the fast input path must agree with the predictor on the training reference rows) before it is
swapped in; a version that fails stays out, the old one keeps serving, and the failure is logged and counted.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import gc
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kd.card import bundle_dir
from kd.config import ServeParams
from kd.predictor import Predictor
from kd.registry import Registry, RegistryError
from kd.serve.inputs import Inputs
from kd.serve.schemas import Batch

log = logging.getLogger("kd.serve")
ALIAS = "champion"
RETRY_FAILED_AFTER = 60.0  # seconds before a version that failed to load is tried again


class LoadError(RuntimeError):
    """A version that cannot serve (no champion, not a kd bundle, a failed warm-up); the message says which and why."""


@dataclass(frozen=True)
class Loaded:
    """One registry version ready to answer: its predictor, input path and registry facts."""

    name: str
    version: str
    predictor: Predictor
    inputs: Inputs
    tags: dict
    run_id: str
    loaded_at: str
    path: Path

    @property
    def classes(self) -> list[str]:
        return self.predictor.classes

    def predict(self, batch: Batch) -> tuple[list[str], np.ndarray]:
        probs = self.inputs.proba(batch.columns, batch.n, batch.present)
        classes = self.predictor.classes
        return [classes[i] for i in probs.argmax(1)], probs


def load_version(reg: Registry, version: str, workdir: Path, backend: str, threads: int) -> Loaded:
    """Download `version` of the registry's model, load it with `backend` and warm it up."""
    mv = reg.version(version)
    if mv is None:
        raise LoadError(f"model {reg.name!r} has no version {version!r}")
    dst = Path(workdir) / f"v{version}-{time.time_ns()}"
    model_dir = reg.download_model(f"models:/{reg.name}/{version}", dst)
    try:
        predictor = Predictor(bundle_dir(model_dir), backend=backend, threads=threads)
    except Exception as err:  # not a kd bundle, a graph or weights that do not load with this backend: refuse it
        shutil.rmtree(dst, ignore_errors=True)
        raise LoadError(f"version {version} of {reg.name!r} cannot serve with backend {backend}: {type(err).__name__}: {err}") from None
    loaded = Loaded(reg.name, str(version), predictor, Inputs(predictor), dict(mv.tags or {}), mv.run_id or "",
                    dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), dst)
    warm_up(loaded)
    return loaded


def warm_rows(predictor: Predictor, n: int = 32) -> Batch:
    """Up to n rows of the training reference (or, without one, rows made from the schema) as columns."""
    ref = predictor.reference()
    cols = predictor.columns
    if ref is not None and len(ref) and all(c in ref.columns for c in cols):
        head = ref[cols].head(n)
        columns = {c: [v.item() if isinstance(v, np.generic) else v for v in head[c].tolist()] for c in cols}
        return Batch(columns, len(head), set(cols))
    columns = {f.name: ([0.0] * n if f.kind == "number" else [f.categories[i % len(f.categories)] for i in range(n)])
               for f in predictor.features}
    return Batch(columns, n, set(cols))


def warm_up(loaded: Loaded) -> None:
    """Run the model on reference rows by both input paths; they must agree (else the fast path would skew)."""
    batch = warm_rows(loaded.predictor)
    try:
        checked = loaded.predictor.predict_proba(loaded.inputs.checked_frame(batch.columns, batch.present), checked=True)
        x = loaded.inputs.matrix(batch.columns, batch.n)
        if x is not None and not np.allclose(loaded.predictor.proba(x), checked, atol=1e-6):
            raise LoadError(f"version {loaded.version}: the fast input path disagrees with the predictor on the reference rows")
        for k in (1, min(8, batch.n)):  # the shapes requests will have: first calls allocate
            loaded.predict(Batch({c: v[:k] for c, v in batch.columns.items()}, k, batch.present))
    except LoadError:
        raise
    except Exception as err:  # a broken graph or weights: refuse to serve it
        raise LoadError(f"version {loaded.version}: warm-up failed: {type(err).__name__}: {err}") from err
    if not np.isfinite(checked).all():
        raise LoadError(f"version {loaded.version}: warm-up produced non-finite probabilities")


@dataclass
class Champion:
    """Holds the serving model and follows @champion."""

    reg: Registry
    params: ServeParams
    workdir: Path | None = None
    current: Loaded | None = None
    stats: dict = field(default_factory=lambda: {"swaps": 0, "swap_failures": 0, "registry_errors": 0, "polls": 0})
    _owns_workdir: bool = False
    _failed: dict = field(default_factory=dict)  # version -> when it failed

    def __post_init__(self):
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="kd-serve-"))
            self._owns_workdir = True
        Path(self.workdir).mkdir(parents=True, exist_ok=True)

    def _load(self, version: str) -> Loaded:
        return load_version(self.reg, version, self.workdir, self.params.backend, self.params.threads)

    def start(self) -> Loaded:
        """Load the current @champion (blocking); an error says what is missing."""
        try:
            mv = self.reg.version_by_alias(ALIAS)
        except RegistryError as err:
            raise LoadError(str(err)) from None
        if mv is None:
            raise LoadError(f"model {self.reg.name!r} has no @{ALIAS} in {self.reg.uri}; promote a version first ('kd promote VERSION')")
        self.current = self._load(str(mv.version))
        return self.current

    async def watch(self) -> None:
        """Poll @champion every `poll_seconds`; load, warm up and swap in a new version when it moves."""
        while True:
            await asyncio.sleep(self.params.poll_seconds)
            try:
                await self.poll_once()
            except Exception:  # never let one bad poll end the watching; the old model keeps serving
                self.stats["swap_failures"] += 1
                log.exception("polling @%s failed", ALIAS)

    async def poll_once(self) -> bool:
        self.stats["polls"] += 1
        try:
            mv = await asyncio.to_thread(self.reg.version_by_alias, ALIAS)
        except RegistryError as err:
            self.stats["registry_errors"] += 1
            log.warning("reading @%s failed (still serving version %s): %s", ALIAS, self.current.version, err)
            return False
        if mv is None or str(mv.version) == self.current.version:
            return False
        version = str(mv.version)
        if time.monotonic() - self._failed.get(version, -1e9) < RETRY_FAILED_AFTER:
            return False
        log.info("@%s moved %s -> %s: loading in the background", ALIAS, self.current.version, version)
        try:
            new = await asyncio.to_thread(self._load, version)
        except (LoadError, RegistryError, OSError) as err:
            self._failed[version] = time.monotonic()
            self.stats["swap_failures"] += 1
            log.error("version %s not swapped in (still serving %s): %s", version, self.current.version, err)
            return False
        old, self.current = self.current, new  # the swap: one reference; requests in flight keep `old`
        self.stats["swaps"] += 1
        gc.freeze()  # the new model's objects join the long-lived ones the collector skips (see Service.startup)
        log.info("now serving %s version %s (was %s)", new.name, new.version, old.version)
        shutil.rmtree(old.path, ignore_errors=True)  # the files; the loaded model lives until its last request ends
        return True

    def close(self) -> None:
        if self._owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
