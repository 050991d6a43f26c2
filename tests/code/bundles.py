"""A tiny, real predictor bundle (kd.predictor layout) for registry and serving tests: a fitted
preprocessor over one numeric and one categorical column, an mlp student, its ONNX graphs."""

import json

import numpy as np
import pandas as pd


def make_bundle(path, seed: int = 0, onnx: bool = True):
    import torch

    from kd import models
    from kd.card import describe
    from kd.config import DataParams, ModelSpec
    from kd.data import Preprocessor

    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"x": rng.normal(size=200), "colour": rng.choice(["red", "blue"], 200), "label": rng.choice(["no", "yes"], 200)})
    pre = Preprocessor.fit(frame, ["x", "colour"], "label", DataParams(categorical_columns=["colour"]))
    torch.manual_seed(seed)
    spec = ModelSpec(arch="mlp", width=4, depth=1)
    model = models.build(spec, (3,), 2)
    path.mkdir(parents=True, exist_ok=True)
    models.save(model, spec, (3,), pre.classes, path / "model.pt")
    backend = "torch"
    if onnx:
        from kd.edge import build_edge_model
        from kd.export import quantize_int8, to_onnx

        to_onnx(model, 3, path / "student.onnx")
        quantize_int8(path / "student.onnx", path / "student_int8.onnx")
        build_edge_model(pre, path / "student_int8.onnx", path / "edge.onnx")
        backend = "onnx_int8"
    frame.assign(__prediction="no", __confidence=0.5).to_parquet(path / "reference.parquet", index=False)
    (path / "predictor.json").write_text(json.dumps(describe(pre, pre.classes, "label", [], "student", {"backend": backend})))
    return path, frame
