"""A text configuration through the whole pipeline (validate → teacher → cache → distill → evaluate → checks →
registry → `kd serve`): a tiny MiniLM teacher (2 of its 6 layers, the top one tuned), an embedding-bag student,
16 tokens; the registered bundle takes raw text, and so does the served champion over HTTP, logging every row."""

import copy
import signal
import socket
import subprocess
import sys
import time

import httpx
import numpy as np
import pandas as pd
import pytest
from kdproject import TINY, make_project

pytestmark = [pytest.mark.flow, pytest.mark.slow]

GOOD = ["great", "tasty", "lovely", "delicious", "perfect", "fresh"]
BAD = ["awful", "stale", "bland", "terrible", "rancid", "soggy"]
FILLER = ["the", "tea", "was", "coffee", "snack", "really", "box", "this"]


def _reviews(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = ["great", "other"][i % 2]
        words = list(rng.choice(FILLER, 4)) + list(rng.choice(GOOD if label == "great" else BAD, 2))
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": label})
    return pd.DataFrame(rows)


def test_text_config_runs_the_pipeline_and_the_bundle_reads_raw_text(tmp_path, prefect_api):
    from flows.retrain import retrain
    from kd.predictor import Predictor

    params = copy.deepcopy(TINY)
    params["data"] = {"source": "text:reviews.csv", "max_length": 16}
    params["teacher"] = {"model": {"arch": "minilm", "layers": 2, "tune_layers": 1}, "train": {"epochs": 2, "batch_size": 32, "lr": 0.001}}
    params["student"] = {"model": {"arch": "embbag", "width": 16, "depth": 1}, "train": {"epochs": 10, "lr": 0.02}}
    params["validate"] = {"min_per_class": 10}
    params["checks"] = {"drift": {"enabled": False}, "calibration": {"max_ece": 1.0}}
    root = make_project(tmp_path / "proj", params)
    _reviews(200, 0).to_csv(root / "reviews.csv", index=False)
    result = retrain(root=str(root), push_remote=False)
    assert all(r["ran"] for r in result["stages"]) and result["version"] == "1"
    bundle = root / "models" / "export"
    assert (bundle / "student_int8.onnx").exists() and not (bundle / "edge.onnx").exists()
    rows = _reviews(40, 9)
    labels, _ = Predictor(bundle, "onnx_int8").predict(rows[["text"]])
    assert np.mean(np.array(labels) == rows["label"].to_numpy()) >= 0.8

    # the champion served over real HTTP answers raw text like the bundle, and logs each row
    from kd.serve.log import read_window

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "kd.cli", "serve", "--root", str(root), "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=open(root / "serve.err", "w"))
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and server.poll() is None:
            try:
                if httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        else:
            pytest.fail(f"kd serve not ready:\n{(root / 'serve.err').read_text()}")
        r = httpx.post(f"{url}/predict", json={"rows": rows[["text"]].to_dict("records")}, timeout=30)
        assert r.status_code == 200, r.text
        assert [p["label"] for p in r.json()["predictions"]] == labels
        bad = httpx.post(f"{url}/predict", json={"rows": [{"review": "great tea"}]}, timeout=30)
        assert bad.status_code == 422 and "missing column(s) ['text']" in bad.text, bad.text
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    logged = read_window(f"sqlite:///{root / 'inference.db'}")
    assert len(logged) == len(rows) and list(logged["label"]) == labels and list(logged["text"]) == list(rows["text"])
