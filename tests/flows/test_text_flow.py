"""A text configuration through the whole pipeline (validate → teacher → cache → distill → evaluate → checks →
registry → `kd serve` → `kd monitor`): a tiny MiniLM teacher (2 of its 6 layers, the top one tuned), an
embedding-bag student, 16 tokens; the registered bundle takes raw text, and so does the served champion over
HTTP, logging every row; `kd replay` sends a shouted window with its labels, and `kd monitor` reads the logged
text through its descriptors and sees the drift."""

import copy
import subprocess
import sys

import httpx
import numpy as np
import pytest
from kd_serve import Server, env
from kdproject import TINY, make_project
from toy_text import shout, toy_reviews

pytestmark = [pytest.mark.flow, pytest.mark.slow]

def test_text_config_runs_the_pipeline_and_the_bundle_reads_raw_text(tmp_path, prefect_api):
    from flows.retrain import retrain
    from kd.predictor import Predictor

    params = copy.deepcopy(TINY)
    params["data"] = {"source": "text:reviews.csv", "max_length": 16}
    params["teacher"] = {"model": {"arch": "minilm", "layers": 2, "tune_layers": 1}, "train": {"epochs": 2, "batch_size": 32, "lr": 0.001}}
    params["student"] = {"model": {"arch": "embbag", "width": 16, "depth": 1}, "train": {"epochs": 10, "lr": 0.02}}
    params["validate"] = {"min_per_class": 10}
    params["checks"] = {"calibration": {"max_ece": 1.0}}
    params["monitor"] = {"min_rows": 50, "min_feedback_rows": 30, "window_hours": 1}
    root = make_project(tmp_path / "proj", params)
    toy_reviews(200, 0, filler=4).to_csv(root / "reviews.csv", index=False)
    result = retrain(root=str(root), push_remote=False)
    assert all(r["ran"] for r in result["stages"]) and result["version"] == "1"
    bundle = root / "models" / "export"
    assert (bundle / "student_int8.onnx").exists() and not (bundle / "edge.onnx").exists()
    rows = toy_reviews(40, 9, filler=4)
    labels, _ = Predictor(bundle, "onnx_int8").predict(rows[["text"]])
    assert np.mean(np.array(labels) == rows["label"].to_numpy()) >= 0.8

    # the champion served over real HTTP answers raw text like the bundle, and logs each row
    from kd.serve.log import read_window

    server = Server(root)
    try:
        r = httpx.post(f"{server.url}/predict", json={"rows": rows[["text"]].to_dict("records")}, timeout=30)
        assert r.status_code == 200, r.text
        assert [p["label"] for p in r.json()["predictions"]] == labels
        bad = httpx.post(f"{server.url}/predict", json={"rows": [{"review": "great tea"}]}, timeout=30)
        assert bad.status_code == 422 and "missing column(s) ['text']" in bad.text, bad.text
        # a drifted window through `kd replay` (a real process): the same reviews shouted, with emoji, labels fed back
        toy_reviews(60, 11, filler=4).assign(text=lambda d: shout(d["text"])).to_csv(root / "shouted.csv", index=False)
        out = subprocess.run([sys.executable, "-m", "kd.cli", "replay", str(root / "shouted.csv"), "--root", str(root), "--url", server.url,
                              "--count", "60", "--batch", "10", "--feedback", "1", "--feedback-delay", "0", "--json"],
                             env=env(), capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
    finally:
        server.stop()
    logged = read_window(f"sqlite:///{root / 'inference.db'}")
    assert len(logged) == len(rows) + 60 and list(logged["label"])[: len(rows)] == labels
    assert list(logged["text"])[: len(rows)] == list(rows["text"])

    # monitoring: the logged text against the champion's training reviews, through the text descriptors
    from flows.monitor import monitor

    result = monitor(root=str(root), hours=1, trigger=False)
    drift = result["data_drift"]["columns"]
    assert set(drift) == {f"text.{k}" for k in ("chars", "words", "tokens", "unk_share", "non_letter_share", "upper_share", "digit_share")}
    assert drift["text.upper_share"]["drifted"] and drift["text.unk_share"]["drifted"]
    assert "data_drift" in result["decision"]["breached"] and not result["decision"]["triggered"]
    # the fed-back labels reach the accuracy signal: the uncased tokenizer reads shouting as the same words
    assert result["feedback"]["rows"] == 60 and result["feedback"]["accuracy"] >= 0.8
