"""A battery of malformed requests against a real `kd serve`: each gets a 4xx whose message names the problem,
none a 5xx, and the service still answers afterwards."""

import httpx
import pytest

pytestmark = pytest.mark.serve

OK = {"x": 0.5, "colour": "red"}
BIG = 1_048_576  # serve.max_body_bytes default

PREDICT = [
    ("invalid-json", b'{"rows": [', 400, "invalid JSON"),
    ("nan-literal", b'{"rows": [{"x": NaN, "colour": "red"}]}', 400, "NaN is not a JSON number"),
    ("infinity-literal", b'{"rows": [{"x": Infinity, "colour": "red"}]}', 400, "Infinity is not a JSON number"),
    ("minus-infinity-literal", b'{"rows": [{"x": -Infinity, "colour": "red"}]}', 400, "-Infinity is not a JSON number"),
    ("overflowing-number", b'{"rows": [{"x": 1e999, "colour": "red"}]}', 400, "number is infinity"),
    ("huge-integer", b'{"rows": [{"x": 1' + b"0" * 5000 + b', "colour": "red"}]}', 400, "number is infinity"),
    ("unpaired-surrogate", b'{"rows": [{"x": 1, "colour": "\\ud800"}]}', 400, "surrogate"),
    ("empty-body", b"", 400, "empty body"),
    ("not-utf8", b'{"rows": [{"x": 1, "colour": "\xff\xfe"}]}', 400, "not valid UTF-8"),
    ("deeply-nested", b"[" * 100_000 + b"]" * 100_000, 400, "nested too deeply"),
    ("body-is-a-list", b'[{"x": 1, "colour": "red"}]', 422, "expected a JSON object"),
    ("no-rows-field", b'{"instances": []}', 422, 'missing field "rows"'),
    ("rows-not-a-list", b'{"rows": {"x": 1}}', 422, '"rows" must be a list'),
    ("empty-rows", b'{"rows": []}', 422, '"rows" is empty'),
    ("row-not-an-object", b'{"rows": [{"x": 1, "colour": "red"}, 5]}', 422, "rows[1] must be an object"),
    ("string-for-number", b'{"rows": [{"x": "abc", "colour": "red"}]}', 422, "column 'x' must be a number, got 'abc'"),
    ("boolean-for-number", b'{"rows": [{"x": true, "colour": "red"}]}', 422, "column 'x' must be a number, got True"),
    ("list-for-number", b'{"rows": [{"x": [1, 2], "colour": "red"}]}', 422, "column 'x' must be a number"),
    ("object-for-number", b'{"rows": [{"x": {"v": 1}, "colour": "red"}]}', 422, "column 'x' must be a number"),
    ("missing-column", b'{"rows": [{"colour": "red"}]}', 422, "missing column(s) ['x']"),
    ("missing-value", b'{"rows": [{"x": 1, "colour": "red"}, {"colour": "red"}]}', 422, "row 1: column 'x' is missing a value"),
    ("null-value", b'{"rows": [{"x": null, "colour": "red"}]}', 422, "row 0: column 'x' is missing a value"),
    ("unknown-category", b'{"rows": [{"x": 1, "colour": "green"}]}', 422, "column 'colour' has unknown category 'green'"),
    ("number-for-category", b'{"rows": [{"x": 1, "colour": 3}]}', 422, "unknown category '3'"),
    ("object-in-sensitive", b'{"rows": [{"x": 1, "colour": "red", "group": {"a": 1}}]}', 422, "column 'group' must be a single value"),
    ("infinite-sensitive", b'{"rows": [{"x": 1, "colour": "red", "group": 1e999}]}', 400, "number is infinity"),
    ("list-in-sensitive", b'{"rows": [{"x": 1, "colour": "red", "group": [1]}]}', 422, "column 'group' must be a single value"),
]


def _post(url: str, path: str, body: bytes, **kw) -> httpx.Response:
    return httpx.post(url + path, content=body, headers={"content-type": "application/json"}, timeout=30, **kw)


@pytest.mark.parametrize("body,status,message", [c[1:] for c in PREDICT], ids=[c[0] for c in PREDICT])
def test_malformed_predict_gets_a_4xx_naming_the_problem(shared, body, status, message):
    r = _post(shared[1].url, "/predict", body)
    assert r.status_code == status, r.text
    assert message in r.json()["error"]


def test_oversized_requests_are_refused_before_any_work(shared):
    url = shared[1].url
    many = httpx.post(f"{url}/predict", json={"rows": [OK] * 1001}, timeout=30)
    assert many.status_code == 413 and "1001 rows in one request; at most 1000" in many.json()["error"]
    padded = b'{"rows": [{"x": 1, "colour": "red"}], "pad": "' + b"a" * BIG + b'"}'
    big = _post(url, "/predict", padded)
    assert big.status_code == 413 and "exceeds the limit of 1048576 bytes" in big.json()["error"]

    def chunks():  # no Content-Length: the limit holds while the body streams in
        yield b'{"rows": [], "pad": "'
        for _ in range(40):
            yield b"a" * 65536
        yield b'"}'
    streamed = httpx.post(f"{url}/predict", content=chunks(), headers={"content-type": "application/json"}, timeout=30)
    assert streamed.status_code == 413 and "exceeds the limit" in streamed.json()["error"]


def _tensor(name, shape, datatype, data):
    return {"name": name, "shape": shape, "datatype": datatype, "data": data}


X, COLOUR = _tensor("x", [1], "FP64", [1.0]), _tensor("colour", [1], "BYTES", ["red"])
INFER = [
    ("no-inputs", {"inputs": []}, 400, '"inputs" must be a non-empty list'),
    ("tensor-lacks-fields", {"inputs": [{"name": "x", "data": [1]}]}, 400, "lacks ['shape', 'datatype']"),
    ("shape-data-mismatch", {"inputs": [_tensor("x", [2], "FP64", [1.0]), COLOUR]}, 400, "shape [2] holds 2 values, data has 1"),
    ("matrix-shape", {"inputs": [_tensor("x", [1, 2], "FP64", [1.0, 2.0]), COLOUR]}, 400, "a column is [N] or [N, 1]"),
    ("unknown-datatype", {"inputs": [_tensor("x", [1], "FLOAT", [1.0]), COLOUR]}, 400, "unknown datatype 'FLOAT'"),
    ("bytes-for-number", {"inputs": [_tensor("x", [1], "BYTES", ["1"]), COLOUR]}, 400, "input 'x' is a number column"),
    ("number-for-category", {"inputs": [X, _tensor("colour", [1], "INT32", [1])]}, 400, "input 'colour' is a category column"),
    ("strings-in-fp64", {"inputs": [_tensor("x", [1], "FP64", ["a"]), COLOUR]}, 400, "FP64 data must be numbers"),
    ("rows-disagree", {"inputs": [_tensor("x", [2], "FP64", [1.0, 2.0]), COLOUR]}, 400, "every input needs the same N"),
    ("missing-input", {"inputs": [COLOUR]}, 400, "missing column(s) ['x']"),
    ("unknown-category", {"inputs": [X, _tensor("colour", [1], "BYTES", ["green"])]}, 400, "unknown category 'green'"),
    ("unknown-output", {"inputs": [X, COLOUR], "outputs": [{"name": "logits"}]}, 400, "unknown output(s) ['logits']"),
    ("zero-rows", {"inputs": [_tensor("x", [0], "FP64", []), _tensor("colour", [0], "BYTES", [])]}, 400, "N = 0"),
]


@pytest.mark.parametrize("doc,status,message", [c[1:] for c in INFER], ids=[c[0] for c in INFER])
def test_malformed_inference_request_gets_a_4xx_naming_the_problem(shared, doc, status, message):
    r = httpx.post(f"{shared[1].url}/v2/models/kd-student/infer", json=doc, timeout=30)
    assert r.status_code == status, r.text
    assert message in r.json()["error"]


def test_protocol_and_routing_errors(shared):
    url = shared[1].url
    nan = _post(url, "/v2/models/kd-student/infer", b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP64", "data": [NaN]}]}')
    assert nan.status_code == 400 and "NaN" in nan.json()["error"]
    other = httpx.post(f"{url}/v2/models/other/infer", json={"inputs": [X, COLOUR]})
    assert other.status_code == 404 and "unknown model 'other'" in other.json()["error"]
    old = httpx.post(f"{url}/v2/models/kd-student/versions/9/infer", json={"inputs": [X, COLOUR]})
    assert old.status_code == 404 and "version 9" in old.json()["error"]
    assert httpx.get(f"{url}/predict").status_code == 405
    assert httpx.get(f"{url}/nowhere").status_code == 404 and "error" in httpx.get(f"{url}/nowhere").json()


@pytest.mark.parametrize("doc,message", [
    ({"request_id": "00000000-0000-4000-8000-000000000000", "label": "maybe"}, "unknown label 'maybe'"),
    ({"request_id": "not-a-uuid", "label": "yes"}, "is not a request id"),
    ({"label": "yes"}, 'expected {"request_id"'),
    ([], "no feedback"),
], ids=["unknown-label", "bad-request-id", "no-request-id", "empty-list"])
def test_malformed_feedback_gets_a_4xx(shared, doc, message):
    r = httpx.post(f"{shared[1].url}/feedback", json=doc)
    assert r.status_code == 422 and message in r.json()["error"], r.text


def test_after_the_battery_no_5xx_and_still_serving(shared):
    server = shared[1]
    text = httpx.get(f"{server.url}/metrics").text
    fives = [line for line in text.splitlines() if line.startswith("kd_serve_requests_total") and 'status="5' in line]
    assert fives == [], fives
    r = httpx.post(f"{server.url}/predict", json={"rows": [OK]})
    assert r.status_code == 200 and r.json()["model_version"] == "1"
    assert "Traceback" not in server.stderr()
