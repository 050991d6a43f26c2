"""The deployable bundles (`kd.predictor` layout): the student with its ONNX, int8 and edge graphs and its
training reference, and the teacher directory made a predictor too. Built by the pipeline stages, so DVC
versions them; registered by `kd.publish`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd

from kd.card import describe
from kd.edge import build_edge_model
from kd.export import quantize_int8, to_onnx
from kd.models import load


def write_student_bundle(out: Path, checkpoint: Path, prep, export_onnx: bool, reference: pd.DataFrame, extra: dict,
                         qat_checkpoint: Path | None = None) -> Path:
    """The deployable student (`kd.predictor` layout): predictor.json, model.pt, and with ONNX export the
    fp32 and int8 graphs plus the edge graph (preprocessing inside, from the int8 student; not for text). The
    int8 graph is the post-training quantized fp32 graph, or with a quantization-aware student (`qat_checkpoint`,
    `kd.qat`) that student's QDQ graph; the post-training one is then kept beside it as student_int8_ptq.onnx."""
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(checkpoint, out / "model.pt")
    backend = "torch"
    int8_kind = None
    if export_onnx:
        student, _ = load(checkpoint)
        onnx_path = to_onnx(student, prep.x["test"].shape[1], out / "student.onnx")
        if qat_checkpoint is None:
            int8, int8_kind = quantize_int8(onnx_path, out / "student_int8.onnx"), "ptq"
        else:
            from kd import qat

            quantize_int8(onnx_path, out / "student_int8_ptq.onnx")
            int8, int8_kind = qat.to_onnx(qat.load(qat_checkpoint)[0], out / "student_int8.onnx"), "qat"
        if not prep.preprocessor.text:  # the edge graph preprocesses raw columns in ONNX; a tokenizer is not ONNX
            build_edge_model(prep.preprocessor, int8, out / "edge.onnx")
        backend = "onnx_int8"
    reference.to_parquet(out / "reference.parquet", index=False)
    meta = describe(prep.preprocessor, prep.classes, prep.meta["label_column"], prep.meta["sensitive_columns"], "student",
                    {"backend": backend, "int8": int8_kind} | extra)
    (out / "predictor.json").write_text(json.dumps(meta, indent=2))
    return out
