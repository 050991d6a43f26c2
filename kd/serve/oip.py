"""The Open Inference Protocol (KServe V2) REST payloads for a kd predictor.

Source: the Open Inference Protocol specification, HTTP/REST (github.com/kserve/open-inference-protocol,
specification/protocol/inference_rest.md). A kd model's inputs are its raw columns, one tensor each: shape [N]
or [N, 1], datatype BYTES for categories and a numeric datatype (FP32, FP64, INT*, UINT*) for numbers; the
sensitive columns may be sent the same way (they are logged, not predicted on). Outputs: `label` BYTES [N],
`probabilities` FP32 [N, C] (class order in the output's parameters and in the model metadata) and
`request_id` BYTES [N] (the ids /feedback takes). Errors are `{"error": message}` with a 4xx status.
"""

from __future__ import annotations

import math

import numpy as np

from kd.serve.schemas import Batch, RequestError

NUMERIC = {"BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64"}
OUTPUTS = ("label", "probabilities", "request_id")


def _flatten(data, where: str) -> list:
    if not isinstance(data, list):
        raise RequestError(422, f"{where}: data must be a list (row-major, flat or nested), got {type(data).__name__}")
    if not any(isinstance(v, list) for v in data):
        return data
    out: list = []
    stack = [iter(data)]
    while stack:
        for v in stack[-1]:
            if isinstance(v, list):
                stack.append(iter(v))
                break
            out.append(v)
        else:
            stack.pop()
    return out


def request_batch(doc, kinds: dict[str, str], max_rows: int) -> tuple[Batch, str | None, list[str]]:
    """An inference request → (columns, the request's id or None, the outputs asked for).
    `kinds`: each column the model accepts (features and sensitive) → "number" | "category" | "any"."""
    if not isinstance(doc, dict):
        raise RequestError(400, 'expected a JSON object {"inputs": [{"name", "shape", "datatype", "data"}, ...]}')
    rid = doc.get("id")
    if rid is not None and not isinstance(rid, str):
        raise RequestError(400, '"id" must be a string')
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise RequestError(400, '"inputs" must be a non-empty list of tensors {"name", "shape", "datatype", "data"}')
    columns: dict[str, list] = {}
    n = None
    for k, t in enumerate(inputs):
        if not isinstance(t, dict):
            raise RequestError(400, f"inputs[{k}] must be an object with name, shape, datatype, data")
        name, shape, datatype = t.get("name"), t.get("shape"), t.get("datatype")
        missing = [f for f in ("name", "shape", "datatype", "data") if f not in t]
        if missing:
            raise RequestError(400, f"inputs[{k}] lacks {missing}")
        where = f"input {name!r}"
        if not isinstance(name, str):
            raise RequestError(400, f"inputs[{k}].name must be a string")
        if name in columns:
            raise RequestError(400, f"{where} is given twice")
        if not isinstance(shape, list) or not shape or not all(type(d) is int and d >= 0 for d in shape):
            raise RequestError(400, f"{where}: shape must be a list of non-negative integers, got {shape!r}")
        if len(shape) > 2 or (len(shape) == 2 and shape[1] != 1):
            raise RequestError(400, f"{where}: shape {shape} — a column is [N] or [N, 1]")
        if datatype != "BYTES" and datatype not in NUMERIC:
            raise RequestError(400, f"{where}: unknown datatype {datatype!r}; expected BYTES or one of {sorted(NUMERIC)}")
        data = _flatten(t["data"], where)
        if len(data) != math.prod(shape):
            raise RequestError(400, f"{where}: shape {shape} holds {math.prod(shape)} values, data has {len(data)}")
        if n is None:
            n = shape[0]
        elif shape[0] != n:
            raise RequestError(400, f"{where}: {shape[0]} rows, but the first input has {n}: every input needs the same N")
        kind = kinds.get(name)
        if kind == "number" and datatype == "BYTES":
            raise RequestError(400, f"{where} is a number column: send a numeric datatype (e.g. FP64), not BYTES")
        if kind == "category" and datatype != "BYTES":
            raise RequestError(400, f"{where} is a category column: send datatype BYTES (strings)")
        if datatype == "BYTES":
            if not all(isinstance(v, str) for v in data):
                raise RequestError(400, f"{where}: BYTES data must be strings")
        elif datatype == "BOOL":
            if not all(type(v) is bool for v in data):
                raise RequestError(400, f"{where}: BOOL data must be true/false")
        elif not all(type(v) in (int, float) for v in data):
            raise RequestError(400, f"{where}: {datatype} data must be numbers")
        columns[name] = data
    if not n:
        raise RequestError(400, "the inputs hold no rows (N = 0): send at least one")
    if n > max_rows:
        raise RequestError(413, f"{n} rows in one request; at most {max_rows} (serve.max_rows): split the request")
    outputs = doc.get("outputs")
    wanted = list(OUTPUTS)
    if outputs is not None:
        if not isinstance(outputs, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str) for o in outputs):
            raise RequestError(400, '"outputs" must be a list of {"name": ...}')
        wanted = [o["name"] for o in outputs]
        unknown = [w for w in wanted if w not in OUTPUTS]
        if unknown:
            raise RequestError(400, f"unknown output(s) {unknown}; this model produces {list(OUTPUTS)}")
    present = set(columns)
    full = {c: columns.get(c, [None] * n) for c in kinds}
    return Batch(full, n, present & set(kinds)), rid, wanted


def response(name: str, version: str, rid: str, labels: list[str], probs: np.ndarray, ids: list[str], classes: list[str],
             wanted: list[str]) -> dict:
    n, c = probs.shape
    tensors = {
        "label": {"name": "label", "datatype": "BYTES", "shape": [n], "data": labels},
        "probabilities": {"name": "probabilities", "datatype": "FP32", "shape": [n, c], "data": probs.astype(np.float32).ravel().tolist(),
                          "parameters": {"classes": classes}},
        "request_id": {"name": "request_id", "datatype": "BYTES", "shape": [n], "data": ids},
    }
    return {"model_name": name, "model_version": version, "id": rid, "outputs": [tensors[w] for w in wanted]}


def model_metadata(name: str, version: str, platform: str, features: list, sensitive: list[str], classes: list[str]) -> dict:
    """The model metadata response: one input tensor per column, the three outputs."""
    inputs = [{"name": f.name, "datatype": "FP64" if f.kind == "number" else "BYTES", "shape": [-1],
               **({"parameters": {"categories": f.categories}} if f.kind == "category" else {})} for f in features]
    inputs += [{"name": s, "datatype": "BYTES", "shape": [-1], "parameters": {"optional": True, "sensitive": True}} for s in sensitive]
    outputs = [{"name": "label", "datatype": "BYTES", "shape": [-1]},
               {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(classes)], "parameters": {"classes": classes}},
               {"name": "request_id", "datatype": "BYTES", "shape": [-1]}]
    return {"name": name, "versions": [version], "platform": platform, "inputs": inputs, "outputs": outputs}
