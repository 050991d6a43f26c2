"""The complete predictor: raw rows in (the source's own columns, categories as strings, text as text — the
bundle's tokenizer turns it into token ids), class names and
probabilities out. Preprocessing, class names and the model travel together in a *bundle* directory:

    predictor.json      kind (student | teacher), classes, label column, input schema (each feature with
                        its kind and allowed categories), sensitive columns, the fitted preprocessing
    model.pt            student weights (kd.models checkpoint, loaded with weights_only=True), or
    member-<i>.pt/.onnx teacher members (kd.teacher layout)
    student.onnx, student_int8.onnx, edge.onnx   the student's ONNX graphs (edge: preprocessing inside; int8: the
                        quantization-aware graph with student.qat, then student_int8_ptq.onnx beside it)
    reference.parquet   the training reference for monitoring: raw rows, true labels, student predictions

A bundle is what the registry stores (an MLflow pyfunc model whose loader is this module: no pickle, so
loading it runs no stored code), what `kd serve` serves and what the monitor re-scores with.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from kd.card import FORMAT, Feature

BACKENDS = ("onnx_int8", "onnx", "torch", "edge")


class InputError(ValueError):
    """Rows that cannot be predicted; the message names the row, the column and what was expected."""


class Predictor:
    """A bundle loaded for prediction with one backend (student: onnx_int8 | onnx | torch | edge; teacher: torch)."""

    def __init__(self, path: Path, backend: str = "onnx_int8", threads: int = 1):
        from kd.data import Preprocessor

        self.path = Path(path)
        meta_file = self.path / "predictor.json"
        if not meta_file.exists():
            raise FileNotFoundError(f"{self.path}: not a kd predictor bundle (predictor.json missing)")
        self.meta = json.loads(meta_file.read_text())
        if self.meta.get("format") != FORMAT:
            raise ValueError(f"{self.path}: bundle format {self.meta.get('format')} is not {FORMAT}; re-register it with this kd")
        self.kind = self.meta["kind"]
        self.classes: list[str] = self.meta["classes"]
        self.features = [Feature(**f) for f in self.meta["features"]]
        self.sensitive: list[str] = self.meta["sensitive"]
        self.pre = Preprocessor(**self.meta["preprocessor"])
        self.backend = "torch" if self.kind == "teacher" else backend
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
        self._model = self._load(threads)

    def _load(self, threads: int):
        if self.backend == "edge":
            from kd.edge import EdgeModel

            return EdgeModel(self.path / "edge.onnx", threads=threads)
        if self.backend in ("onnx", "onnx_int8"):
            from kd.export import OnnxModel

            return OnnxModel(self.path / ("student_int8.onnx" if self.backend == "onnx_int8" else "student.onnx"), threads)
        import torch

        torch.set_num_threads(threads)
        if self.kind == "teacher":
            from kd.teacher import load_teacher

            return load_teacher(self.path)[0]
        from kd import models

        return models.load(self.path / "model.pt")[0]

    @property
    def columns(self) -> list[str]:
        return [f.name for f in self.features]

    def check(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The rows as the model reads them, or InputError naming the first problem (row, column, expected)."""
        missing = [c for c in self.columns if c not in frame.columns]
        if missing:
            raise InputError(f"missing column(s) {missing[:5]}; the model reads {self.columns[:20]}")
        out = {}
        for f in self.features:
            col = frame[f.name]
            nulls = col.isna().to_numpy()
            if nulls.any():
                raise InputError(f"row {int(np.argmax(nulls))}: column {f.name!r} is missing a value")
            if f.kind == "text":
                out[f.name] = col.astype(str).to_numpy()
            elif f.kind == "number":
                values = pd.to_numeric(col, errors="coerce")
                bad = values.isna().to_numpy() | col.map(lambda v: isinstance(v, (bool, np.bool_))).to_numpy()
                if bad.any():
                    i = int(np.argmax(bad))
                    raise InputError(f"row {i}: column {f.name!r} must be a number, got {col.iloc[i]!r}")
                arr = values.to_numpy(np.float64)
                if not np.isfinite(arr).all():
                    i = int(np.argmax(~np.isfinite(arr)))
                    raise InputError(f"row {i}: column {f.name!r} must be a finite number, got {float(arr[i])!r}")
                out[f.name] = arr
            else:
                strs = col.astype(str)
                unknown = ~strs.isin(f.categories).to_numpy()
                if unknown.any():
                    i = int(np.argmax(unknown))
                    raise InputError(f"row {i}: column {f.name!r} has unknown category {strs.iloc[i]!r}; "
                                     f"allowed: {f.categories[:20]}")
                out[f.name] = strs.to_numpy()
        return pd.DataFrame(out, index=frame.index)

    def predict_proba(self, frame: pd.DataFrame, checked: bool = False) -> np.ndarray:
        """Class probabilities (N, C), columns in `classes` order."""
        rows = frame if checked else self.check(frame)
        if self.backend == "edge":
            return self._model.predict(rows)[1].astype(np.float64)
        return self.proba(self.pre.features(rows, "request"))

    def proba(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities (N, C) of preprocessed features (`pre.features` of checked rows). Not for the edge
        backend, whose graph preprocesses the raw columns itself."""
        if self.backend == "edge":
            raise ValueError("the edge backend reads raw columns: call predict_proba")
        if self.backend == "torch":
            import torch

            with torch.inference_mode():
                out = self._model(torch.from_numpy(x)).numpy()
        else:
            out = self._model(x)
        z = out.astype(np.float64)
        z -= z.max(1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(1, keepdims=True)

    def predict(self, frame: pd.DataFrame, checked: bool = False) -> tuple[list[str], np.ndarray]:
        probs = self.predict_proba(frame, checked)
        return [self.classes[i] for i in probs.argmax(1)], probs

    def reference(self) -> pd.DataFrame | None:
        path = self.path / "reference.parquet"
        return pd.read_parquet(path) if path.exists() else None


class PyfuncModel:
    """What `mlflow.pyfunc.load_model` returns for a kd bundle: raw rows in, a frame of `label` and
    `probabilities` (a list per row, in the order of `classes`) out."""

    def __init__(self, predictor: Predictor):
        self.predictor = predictor

    def predict(self, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        if not isinstance(model_input, pd.DataFrame):
            model_input = pd.DataFrame(model_input)
        labels, probs = self.predictor.predict(model_input)
        return pd.DataFrame({"label": labels, "probabilities": [list(map(float, p)) for p in probs]}, index=model_input.index)


def _load_pyfunc(data_path: str) -> PyfuncModel:
    """MLflow pyfunc loader (`loader_module="kd.predictor"`): the logged data directory is the bundle."""
    path = Path(data_path)
    meta = json.loads((path / "predictor.json").read_text())
    return PyfuncModel(Predictor(path, meta.get("backend", "onnx_int8")))


def sample_rows(frame: pd.DataFrame, max_rows: int, seed: int) -> pd.DataFrame:
    """A seeded sample of at most `max_rows` rows, in their original order."""
    if len(frame) <= max_rows:
        return frame.reset_index(drop=True)
    idx = np.sort(np.random.default_rng(seed).choice(len(frame), max_rows, replace=False))
    return frame.iloc[idx].reset_index(drop=True)
