"""`kd serve` as a real process on a real registry: what it answers, that it answers like the bundle itself,
what it logs, and the Open Inference Protocol endpoints."""

import uuid

import httpx
import numpy as np
import pytest
from harness import predict, wait_for

from kd.predictor import Predictor
from kd.serve.log import read_window

pytestmark = pytest.mark.serve


def _log(root):
    return f"sqlite:///{root / 'inference.db'}"


def _logged(root, ids):
    def check():
        frame = read_window(_log(root))
        got = frame[frame.request_id.isin(ids)]
        return got if len(got) == len(ids) else None
    return wait_for(check, 30, what=f"{len(ids)} rows in the prediction log")


def test_predict_answers_like_the_bundle_and_logs_every_row(shared, bundles):
    root, server = shared
    bundle, frame = bundles[0]
    rows = frame[["x", "colour", "group"]].head(20).to_dict("records")
    r = predict(server.url, rows)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_name"] == "kd-student" and body["model_version"] == "1"
    labels, probs = Predictor(bundle).predict(frame[["x", "colour"]].head(20))
    got = body["predictions"]
    assert [p["label"] for p in got] == labels
    assert np.allclose([[p["probabilities"]["no"], p["probabilities"]["yes"]] for p in got], probs, atol=1e-6)
    ids = [p["request_id"] for p in got]
    assert len(set(ids)) == 20 and all(uuid.UUID(i) for i in ids)

    logged = _logged(root, ids).set_index("request_id").loc[ids]
    assert (logged.model_version == "1").all() and (logged.endpoint == "predict").all() and (logged.model_name == "kd-student").all()
    assert np.allclose(logged.x.astype(float), frame.x.head(20)) and list(logged.colour) == list(frame.colour.head(20))
    assert list(logged.group) == list(frame.group.head(20)), "sensitive columns are logged with the rows"
    assert list(logged.label) == labels
    assert np.allclose([[p["no"], p["yes"]] for p in logged.probabilities], probs, atol=1e-9)


def test_open_inference_protocol_answers_like_predict(shared, bundles):
    root, server = shared
    _, frame = bundles[0]
    head = frame.head(7)
    req = {"id": "req-42", "inputs": [
        {"name": "x", "shape": [7], "datatype": "FP64", "data": head.x.tolist()},
        {"name": "colour", "shape": [7, 1], "datatype": "BYTES", "data": [[c] for c in head.colour]},
        {"name": "group", "shape": [7], "datatype": "BYTES", "data": head.group.tolist()}]}
    r = httpx.post(f"{server.url}/v2/models/kd-student/infer", json=req, timeout=30)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["model_name"] == "kd-student" and out["model_version"] == "1" and out["id"] == "req-42"
    tensors = {t["name"]: t for t in out["outputs"]}
    assert tensors["label"]["datatype"] == "BYTES" and tensors["label"]["shape"] == [7]
    assert tensors["probabilities"]["datatype"] == "FP32" and tensors["probabilities"]["shape"] == [7, 2]
    assert tensors["probabilities"]["parameters"]["classes"] == ["no", "yes"]
    same = predict(server.url, head[["x", "colour"]].to_dict("records")).json()["predictions"]
    assert tensors["label"]["data"] == [p["label"] for p in same]
    assert np.allclose(np.reshape(tensors["probabilities"]["data"], (7, 2)), [[p["probabilities"]["no"], p["probabilities"]["yes"]] for p in same],
                       atol=1e-6)
    ids = tensors["request_id"]["data"]
    logged = _logged(root, ids)
    assert (logged.endpoint == "infer").all() and sorted(logged.group) == sorted(head.group)
    only = httpx.post(f"{server.url}/v2/models/kd-student/versions/1/infer", json=req | {"outputs": [{"name": "label"}]}, timeout=30).json()
    assert [t["name"] for t in only["outputs"]] == ["label"]


def test_metadata_health_and_protocol_metadata(shared):
    _, server = shared
    meta = httpx.get(f"{server.url}/metadata").json()
    assert meta["name"] == "kd-student" and meta["version"] == "1" and meta["backend"] == "onnx_int8"
    assert meta["inputs"] == [{"name": "x", "type": "number"}, {"name": "colour", "type": "category", "categories": ["blue", "red"]}]
    assert meta["sensitive"] == ["group"] and meta["classes"] == ["no", "yes"] and meta["label_column"] == "label"
    assert meta["tags"]["git_commit"] == "commit-0" and meta["tags"]["dvc.data"] == "md5-0", "lineage tags of the registry version"
    health = httpx.get(f"{server.url}/health").json()
    assert health["status"] == "ok" and health["model_version"] == "1" and health["log"]["database_up"] is True
    assert httpx.get(f"{server.url}/v2/health/live").json() == {"live": True}
    assert httpx.get(f"{server.url}/v2/health/ready").json() == {"ready": True}
    assert httpx.get(f"{server.url}/v2").json()["name"] == "kd"
    model = httpx.get(f"{server.url}/v2/models/kd-student").json()
    assert model["versions"] == ["1"] and model["platform"] == "onnxruntime_onnx"
    assert [(t["name"], t["datatype"]) for t in model["inputs"]] == [("x", "FP64"), ("colour", "BYTES"), ("group", "BYTES")]
    assert [t["name"] for t in model["outputs"]] == ["label", "probabilities", "request_id"]
    assert httpx.get(f"{server.url}/v2/models/kd-student/versions/1/ready").json() == {"name": "kd-student", "ready": True}
    assert httpx.get(f"{server.url}/v2/models/kd-student/versions/7").status_code == 404
    assert httpx.get(f"{server.url}/v2/models/other").status_code == 404


def test_feedback_is_joined_to_its_prediction(shared):
    root, server = shared
    ids = [p["request_id"] for p in predict(server.url, [{"x": 0.1, "colour": "red"}, {"x": 2.0, "colour": "blue"}]).json()["predictions"]]
    assert httpx.post(f"{server.url}/feedback", json={"request_id": ids[0], "label": "yes"}).status_code == 202
    r = httpx.post(f"{server.url}/feedback", json=[{"request_id": ids[1], "label": "no"}, {"request_id": ids[1], "label": "yes"}])
    assert r.status_code == 202 and r.json() == {"accepted": 2}

    def joined():
        got = read_window(_log(root)).set_index("request_id")
        return got if set(ids) <= set(got.index) and got.loc[ids, "feedback"].notna().all() else None
    got = wait_for(joined, 30, what="feedback joined in the log")
    assert got.loc[ids[0], "feedback"] == "yes" and got.loc[ids[1], "feedback"] == "yes", "the latest label wins"
    assert got.loc[ids[0], "feedback_time"] >= got.loc[ids[0], "time"]


def test_metrics_count_requests_model_and_log(shared):
    _, server = shared
    before = server.metric("kd_serve_requests_total", 'endpoint="/predict",status="200"')
    predict(server.url, [{"x": 1.0, "colour": "red"}])
    predict(server.url, [{"x": 1.0, "colour": "green"}])
    assert server.metric("kd_serve_requests_total", 'endpoint="/predict",status="200"') == before + 1
    assert server.metric("kd_serve_requests_total", 'endpoint="/predict",status="422"') >= 1
    assert server.metric("kd_serve_model_version") == 1
    assert server.metric("kd_serve_model_info", 'backend="onnx_int8",name="kd-student",version="1"') == 1
    assert server.metric("kd_serve_request_seconds_count", 'endpoint="/predict"') >= before + 2
    wait_for(lambda: server.metric("kd_serve_log_buffered_rows") == 0, 30, what="the log buffer to drain")
    assert server.metric("kd_serve_log_written_rows_total", 'table="predictions"') >= 1
    assert server.metric("kd_serve_log_spilled_rows_total") == 0 and server.metric("kd_serve_swaps_total") == 0
