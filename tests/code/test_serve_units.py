"""Units of kd serve and kd replay: the fast input path against the real preprocessing, protocol parsing,
micro-batching, request parsing, and replay's sampling and drift."""

import asyncio
import time
import types
import uuid

import numpy as np
import pandas as pd
import pytest

from kd.config import DataParams
from kd.data import Preprocessor
from kd.replay import ReplayError, parse_drift, records, sample
from kd.serve import oip
from kd.serve.batcher import Batcher
from kd.serve.inputs import Inputs
from kd.serve.schemas import RequestError, feedback_items, parse_json, request_ids, rows_batch


def _frame(n=300, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"age": rng.normal(40, 12, n), "hours": rng.integers(1, 80, n), "gain": rng.exponential(1000, n),
                         "job": rng.choice(["a", "b", "c"], n), "city": rng.choice(["n", "s", "e", "w"], n), "y": rng.choice(["0", "1"], n)})


def _inputs(frame):
    pre = Preprocessor.fit(frame, ["age", "hours", "gain", "job", "city"], "y", DataParams(categorical_columns=["job", "city"]))
    return Inputs(types.SimpleNamespace(pre=pre, backend="onnx_int8", columns=["age", "hours", "gain", "job", "city"])), pre


def test_fast_path_builds_exactly_the_preprocessors_features():
    frame = _frame()
    inputs, pre = _inputs(frame)
    test = _frame(50, seed=1)
    cols = {c: [v.item() if hasattr(v, "item") else v for v in test[c].tolist()] for c in test.columns}
    assert np.array_equal(inputs.matrix(cols, 50), pre.features(test, "test"))


@pytest.mark.parametrize("column,value", [("age", True), ("age", "41"), ("age", None), ("age", float("inf")), ("age", 10 ** 400),
                                          ("job", "z"), ("job", 1), ("job", None), ("job", ["a"])])
def test_fast_path_declines_anything_not_plain(column, value):
    inputs, _ = _inputs(_frame())
    cols = {"age": [30.0, 31.0], "hours": [40, 41], "gain": [0.0, 1.0], "job": ["a", "b"], "city": ["n", "s"]}
    cols[column] = [cols[column][0], value]
    assert inputs.matrix(cols, 2) is None, "the predictor's check decides these"


def test_protocol_request_nested_data_outputs_and_response():
    kinds = {"x": "number", "colour": "category", "group": "any"}
    doc = {"id": "a", "inputs": [{"name": "x", "shape": [3, 1], "datatype": "FP32", "data": [[1.0], [2.0], [3.0]]},
                                 {"name": "colour", "shape": [3], "datatype": "BYTES", "data": ["red", "blue", "red"]}],
           "outputs": [{"name": "probabilities"}]}
    batch, rid, wanted = oip.request_batch(doc, kinds, 10)
    assert batch.columns["x"] == [1.0, 2.0, 3.0] and batch.columns["group"] == [None] * 3 and batch.present == {"x", "colour"}
    assert rid == "a" and wanted == ["probabilities"]
    out = oip.response("m", "3", "a", ["no"] * 3, np.full((3, 2), 0.5), ["i1", "i2", "i3"], ["no", "yes"], wanted)
    assert out["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [3, 2], "data": [0.5] * 6,
                               "parameters": {"classes": ["no", "yes"]}}]
    with pytest.raises(RequestError, match="at most 2"):
        oip.request_batch(doc, kinds, 2)


def test_micro_batching_shares_one_model_call_and_keeps_errors_apart():
    class Model:
        def __init__(self, fail=False):
            self.calls, self.fail = [], fail

        def proba(self, x):
            self.calls.append(len(x))
            if self.fail:
                raise RuntimeError("broken")
            return np.hstack([x, -x])

    good, bad = Model(), Model(fail=True)

    async def main():
        b = Batcher(wait_ms=20, max_rows=64)
        jobs = [b.proba(good, np.full((k, 1), float(k))) for k in (1, 2, 3)] + [b.proba(bad, np.ones((1, 1)))]
        return b, await asyncio.gather(*jobs, return_exceptions=True)

    b, results = asyncio.run(main())
    assert good.calls == [6] and bad.calls == [1], "one call per model for everything within the wait"
    assert [r.tolist() for r in results[:3]] == [[[1.0, -1.0]], [[2.0, -2.0]] * 2, [[3.0, -3.0]] * 3]
    assert isinstance(results[3], RuntimeError) and b.calls == 1 and b.rows == 6
    off = Batcher(wait_ms=0, max_rows=64)
    assert asyncio.run(off.proba(good, np.ones((2, 1)))).shape == (2, 2) and good.calls[-1] == 2


def test_request_parsing():
    with pytest.raises(RequestError, match="number is infinity"):
        parse_json(b'{"x": 1' + b"0" * 400 + b"}")
    with pytest.raises(RequestError, match="NaN is not a JSON number"):
        parse_json(b'{"x": NaN}')
    with pytest.raises(RequestError, match="nested too deeply"):
        parse_json(b"[" * 5000 + b"]" * 5000)
    assert parse_json(b'{"x": 1e300}') == {"x": 1e300}
    ids = request_ids(3)
    assert len(set(ids)) == 3 and all(uuid.UUID(i).version == 7 for i in ids)
    time.sleep(0.002)
    assert request_ids(1)[0] > max(ids), "UUIDv7 sort by time"
    batch = rows_batch({"rows": [{"x": 1, "colour": "red"}, {"x": 2}]}, ["x", "colour", "group"], 10)
    assert batch.columns == {"x": [1, 2], "colour": ["red", None], "group": [None, None]} and batch.present == {"x", "colour"}
    rid = "9b2d37e0-0000-4000-8000-000000000000"
    assert [f.label for f in feedback_items({"feedback": [{"request_id": rid, "label": "no"}]}, ["no", "yes"], 10)] == ["no"]
    assert feedback_items({"request_id": rid.upper(), "label": "yes"}, ["no", "yes"], 10)[0].request_id == rid


def test_replay_sampling_and_drift():
    frame = pd.DataFrame({"x": np.arange(100.0), "g": ["a"] * 80 + ["b"] * 20, "c": ["k"] * 100})
    drift = parse_drift(["x=+10"], ["x=2"], ["g=b:0.75"])
    out = sample(frame, 40, drift, seed=1)
    assert len(out) == 40 and (out.g == "b").sum() == 30
    assert set(out.x) <= {2 * v + 10 for v in frame.x}
    assert sample(frame, 40, drift, seed=1).equals(out), "seeded"
    assert len(sample(frame, 250, parse_drift(None, None, None), seed=0)) == 250, "more rows than the source: with replacement"
    assert records(pd.DataFrame({"x": [1.5, np.nan], "c": ["a", None]})) == [{"x": 1.5, "c": "a"}, {"x": None, "c": None}]
    for args, message in [((["x"], None, None), "expected COLUMN=NUMBER"), ((["x=abc"], None, None), "not a number"),
                          ((None, None, ["g=b"]), "COLUMN=VALUE:SHARE"), ((None, None, ["g=b:2"]), "a share in")]:
        with pytest.raises(ReplayError, match=message):
            parse_drift(*args)
    with pytest.raises(ReplayError, match="'c' is not numeric"):
        sample(frame, 5, parse_drift(["c=1"], None, None), 0)
    with pytest.raises(ReplayError, match="group the source does not have"):
        sample(frame, 5, parse_drift(None, None, ["g=z:0.5"]), 0)
