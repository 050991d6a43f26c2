"""The edge bundle: one ONNX file that takes the raw feature columns, applies `kd.data.Preprocessor` inside the
graph, runs the student and returns class names and probabilities; `EdgeModel` runs it with onnxruntime alone.

Graph (ONNX operators: https://onnx.ai/onnx/operators/, ONNX-ML: https://onnx.ai/onnx/operators/index_ml.html):
numeric inputs -> Concat -> Cast(double) -> Sub(mean) -> Div(std) -> Cast(float), the Preprocessor's float64
arithmetic, so float32 inputs give the very features `Preprocessor.features` gives (ai.onnx.ml Scaler would
not: its offset/scale attributes are float32 and it multiplies by 1/std); each categorical input ->
ai.onnx.ml OneHotEncoder(zeros=1, unseen -> all zeros) -> Squeeze -> [N, K]; Concat -> the student graph
(fp32 or int8) -> Softmax -> `probabilities`, ArgMax -> Gather(class names) -> `label`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    import onnx

    from kd.data import Preprocessor

FORMAT = "1"
KEY = "kd.edge."  # metadata_props keys: format, columns, kinds, categories, classes, feature_names, student
OUTPUTS = ("label", "probabilities")
ML_OPSET = 3  # ai.onnx.ml 3 ships with ai.onnx 17 and IR 8 (onnx 1.12); OneHotEncoder is version 1
_P, _S = "edge/", "student/"  # prefixes of the bundle's own tensor names and of the student graph's names


def build_edge_model(pre: Preprocessor, student_onnx: Path, out: Path) -> Path:
    """Write to `out` one ONNX model: raw columns in (numeric float32 [N, 1], categorical string [N, 1], named
    as the columns), `label` (string [N]) and `probabilities` (float32 [N, C]) out; `student_onnx` may be the
    fp32 export (`kd.export.to_onnx`) or its int8 copy (`kd.export.quantize_int8`)."""
    import onnx
    from onnx import compose, helper

    columns = pre.numeric + list(pre.categories)
    if not columns:
        raise ValueError("the preprocessor has no feature columns")
    reserved = sorted(c for c in columns if c in OUTPUTS or c.startswith((_P, _S)))
    if reserved or len(set(columns)) != len(columns):
        raise ValueError(f"feature column names must be unique and not {list(OUTPUTS)} or start with {_P!r}/{_S!r}: {reserved or columns}")
    student = onnx.load(str(student_onnx))
    weights = {t.name for t in student.graph.initializer}
    inputs = [i for i in student.graph.input if i.name not in weights]
    if len(inputs) != 1 or len(student.graph.output) != 1:
        raise ValueError(f"{student_onnx}: expected a student with one input and one output (kd.export.to_onnx)")
    x, logits = inputs[0], student.graph.output[0]
    width = x.type.tensor_type.shape.dim[-1].dim_value if x.type.tensor_type.shape.dim else 0
    if width and width != len(pre.feature_names):
        raise ValueError(f"{student_onnx}: the student takes {width} features, the preprocessor makes {len(pre.feature_names)}")
    opsets = {o.domain or "ai.onnx": o.version for o in student.opset_import}
    if opsets.get("ai.onnx", 0) < 13:
        raise ValueError(f"{student_onnx}: ai.onnx opset {opsets.get('ai.onnx')} < 13 (Squeeze/Softmax semantics used here)")
    opsets.setdefault("ai.onnx.ml", ML_OPSET)
    n_classes = len(pre.classes)
    pre_graph = _preprocess_graph(pre)
    post_graph = _postprocess_graph(pre.classes)
    model = compose.merge_models(_model(pre_graph, student, opsets), student, io_map=[(_P + "features", x.name)], prefix2=_S)
    model = compose.merge_models(model, _model(post_graph, student, opsets), io_map=[(_S + logits.name, _P + "logits")])
    del model.opset_import[:]  # merge_models (onnx 1.23) repeats each domain once per merged model
    model.opset_import.extend(helper.make_opsetid("" if d == "ai.onnx" else d, v) for d, v in opsets.items())
    model.producer_name, model.producer_version, model.graph.name = "kd.edge", FORMAT, "kd_edge"
    model.doc_string = f"kd edge bundle: {len(columns)} raw columns -> preprocessing -> student -> {n_classes} classes"
    helper.set_model_props(model, {
        KEY + "format": FORMAT,
        KEY + "columns": json.dumps(columns),
        KEY + "kinds": json.dumps({c: "numeric" if c in pre.numeric else "categorical" for c in columns}),
        KEY + "categories": json.dumps(pre.categories),
        KEY + "classes": json.dumps(pre.classes),
        KEY + "feature_names": json.dumps(pre.feature_names),
        KEY + "student": Path(student_onnx).name,
    })
    onnx.checker.check_model(model)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out))
    return out


def _preprocess_graph(pre: Preprocessor) -> onnx.GraphProto:
    """Raw columns -> `edge/features` [N, F] in `Preprocessor.features` order: numeric, then one-hot blocks."""
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits, parts, inputs = [], [], [], []
    if pre.numeric:
        inputs += [helper.make_tensor_value_info(c, TensorProto.FLOAT, ["N", 1]) for c in pre.numeric]
        inits += [numpy_helper.from_array(np.asarray(pre.mean, np.float64), _P + "mean"),
                  numpy_helper.from_array(np.asarray(pre.std, np.float64), _P + "std")]
        nodes += [
            helper.make_node("Concat", list(pre.numeric), [_P + "num"], axis=1, name=_P + "concat_numeric"),
            helper.make_node("Cast", [_P + "num"], [_P + "num64"], to=TensorProto.DOUBLE, name=_P + "to_double"),
            helper.make_node("Sub", [_P + "num64", _P + "mean"], [_P + "centred"], name=_P + "centre"),
            helper.make_node("Div", [_P + "centred", _P + "std"], [_P + "scaled64"], name=_P + "scale"),
            helper.make_node("Cast", [_P + "scaled64"], [_P + "scaled"], to=TensorProto.FLOAT, name=_P + "to_float"),
        ]
        parts.append(_P + "scaled")
    if pre.categories:
        inits.append(numpy_helper.from_array(np.array([1], np.int64), _P + "axis1"))
    for i, (c, cats) in enumerate(pre.categories.items()):
        inputs.append(helper.make_tensor_value_info(c, TensorProto.STRING, ["N", 1]))
        nodes += [
            helper.make_node("OneHotEncoder", [c], [f"{_P}onehot{i}_3d"], domain="ai.onnx.ml", cats_strings=list(cats), zeros=1,
                             name=f"{_P}onehot{i}"),
            helper.make_node("Squeeze", [f"{_P}onehot{i}_3d", _P + "axis1"], [f"{_P}onehot{i}"], name=f"{_P}squeeze{i}"),
        ]
        parts.append(f"{_P}onehot{i}")
    nodes.append(helper.make_node("Concat", parts, [_P + "features"], axis=1, name=_P + "concat_features"))
    features = helper.make_tensor_value_info(_P + "features", TensorProto.FLOAT, ["N", len(pre.feature_names)])
    return helper.make_graph(nodes, "kd_edge_preprocess", inputs, [features], inits)


def _postprocess_graph(classes: list[str]) -> onnx.GraphProto:
    """`edge/logits` [N, C] -> `probabilities` = Softmax (float32 [N, C]), `label` = classes[ArgMax] (string [N])."""
    from onnx import TensorProto, helper

    names = helper.make_tensor(_P + "classes", TensorProto.STRING, [len(classes)], [c.encode() for c in classes])
    nodes = [
        helper.make_node("Softmax", [_P + "logits"], ["probabilities"], axis=-1, name=_P + "softmax"),
        helper.make_node("ArgMax", [_P + "logits"], [_P + "index"], axis=1, keepdims=0, name=_P + "argmax"),
        helper.make_node("Gather", [_P + "classes", _P + "index"], ["label"], axis=0, name=_P + "label"),
    ]
    inputs = [helper.make_tensor_value_info(_P + "logits", TensorProto.FLOAT, ["N", len(classes)])]
    outputs = [helper.make_tensor_value_info("label", TensorProto.STRING, ["N"]),
               helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", len(classes)])]
    return helper.make_graph(nodes, "kd_edge_postprocess", inputs, outputs, [names])


def _model(graph: onnx.GraphProto, student: onnx.ModelProto, opsets: dict[str, int]) -> onnx.ModelProto:
    """`graph` as a model with the student's IR version and opsets, as `onnx.compose.merge_models` requires."""
    from onnx import helper

    imports = [helper.make_opsetid("" if d == "ai.onnx" else d, v) for d, v in opsets.items()]
    return helper.make_model(graph, opset_imports=imports, ir_version=student.ir_version)


class EdgeModel:
    """Runs an edge bundle with onnxruntime on the CPU; the schema and the classes come from the file's metadata."""

    def __init__(self, path: Path, threads: int = 0):
        from kd.export import cpu_session

        self.path = Path(path)
        self.session = cpu_session(path, threads)
        meta = self.session.get_modelmeta().custom_metadata_map
        if meta.get(KEY + "format") != FORMAT:
            raise ValueError(f"{path}: not a kd edge bundle of format {FORMAT} (metadata {KEY}format = {meta.get(KEY + 'format')!r})")
        self.columns: list[str] = json.loads(meta[KEY + "columns"])
        self.kinds: dict[str, str] = json.loads(meta[KEY + "kinds"])
        self.categories: dict[str, list[str]] = json.loads(meta[KEY + "categories"])
        self.classes: list[str] = json.loads(meta[KEY + "classes"])
        types = {i.name: i.type for i in self.session.get_inputs()}
        expected = {c: "tensor(float)" if self.kinds[c] == "numeric" else "tensor(string)" for c in self.columns}
        if types != expected:
            raise ValueError(f"{path}: the graph's inputs {types} disagree with its metadata {expected}")

    def predict(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Class names (str [N]) and probabilities (float32 [N, C]) for the rows of `frame`; other columns are ignored."""
        missing = [c for c in self.columns if c not in frame.columns]
        if missing:
            raise ValueError(f"missing feature column(s) {missing}")
        if len(frame) == 0:
            return np.empty(0, str), np.empty((0, len(self.classes)), np.float32)
        label, probs = self.session.run(list(OUTPUTS), self.feeds(frame))
        return np.asarray(label).astype(str), probs

    def feeds(self, frame: pd.DataFrame) -> dict[str, np.ndarray]:
        """The graph's inputs for the rows of `frame` (one array per column)."""
        return {c: _numeric(frame[c], c) if self.kinds[c] == "numeric" else _strings(frame[c]) for c in self.columns}


def _numeric(col: pd.Series, name: str) -> np.ndarray:
    """A numeric column as float32 [N, 1]; text, booleans and missing values are refused, as in `kd.data`."""
    if pd.api.types.is_bool_dtype(col):
        raise ValueError(f"column {name!r} must be numeric but holds booleans")
    values = pd.to_numeric(col, errors="coerce")
    bad = col[values.isna() & col.notna()]
    if len(bad):
        raise ValueError(f"column {name!r} must be numeric but holds {bad.iloc[0]!r}")
    if values.isna().any():
        raise ValueError(f"column {name!r} has {int(values.isna().sum())} missing value(s) (NaN)")
    return values.to_numpy(np.float32).reshape(-1, 1)


def _strings(col: pd.Series) -> np.ndarray:
    """A categorical column as strings [N, 1], compared as `Preprocessor.features` compares them (`astype(str)`)."""
    return col.astype(str).to_numpy(dtype=object).reshape(-1, 1)
