"""Evaluate and checks read the test split a batch at a time: scores streamed over batches equal the
all-at-once computation, the stage never asks for more than a batch of the split, and the fairness
triples give the per-row answer."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import yaml
from scipy.optimize import minimize_scalar
from sklearn.metrics import f1_score

from kd import data, stages
from kd.calibration import Bins, fit_temperature, softmax
from kd.checks import sample_guarantee
from kd.config import PREDICTIONS, load_params
from kd.data import NpyWriter, row_batches, rows_at
from kd.evaluate import Scores
from kd.fairness import group_report, triples


def test_scores_over_batches_equal_hand_computed_values():
    # 4 rows, 3 classes; predictions 0, 1, 1, 2 for labels 0, 1, 2, 2: accuracy 3/4 (hand count)
    logits = np.log(np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.4, 0.3], [0.1, 0.1, 0.8]]))
    y = np.array([0, 1, 2, 2])
    s = Scores(3, bins=2)
    for i in (0, 1, 3):  # batches of 1, 2 and 1 rows
        s.add(logits[i : i + (2 if i == 1 else 1)], y[i : i + (2 if i == 1 else 1)])
    r = s.result()
    assert r["accuracy"] == pytest.approx(0.75)
    assert r["macro_f1"] == pytest.approx(f1_score(y, [0, 1, 1, 2], average="macro"))  # scikit-learn as the reference
    assert r["nll"] == pytest.approx(-(math.log(0.7) + math.log(0.8) + math.log(0.3) + math.log(0.8)) / 4)
    # 2 bins: confidences 0.7, 0.8, 0.4, 0.8 -> bin [0, .5]: {0.4, wrong}; bin (.5, 1]: {0.7, 0.8, 0.8, all right}
    assert r["ece"] == pytest.approx(0.25 * 0.4 + 0.75 * abs(1 - (0.7 + 0.8 + 0.8) / 3))


def test_macro_f1_counts_only_classes_present_like_scikit_learn():
    y, pred = np.array([0, 0, 1, 1, 3]), np.array([0, 1, 1, 1, 0])  # class 2 never appears, class 3 never predicted
    s = Scores(4, bins=5)
    s.add(np.eye(4)[pred] * 5.0, y)
    assert s.result()["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))


def test_row_batches_read_a_mapped_file_and_a_slice_of_it(tmp_path):
    a = np.arange(50 * 3, dtype=np.float32).reshape(50, 3)
    np.save(tmp_path / "a.npy", a)
    m = np.load(tmp_path / "a.npy", mmap_mode="c")
    whole = list(row_batches(m, 7))
    assert [i for i, _ in whole] == list(range(0, 50, 7)) and np.array_equal(np.concatenate([b for _, b in whole]), a)
    assert not isinstance(whole[0][1], np.memmap)  # copies, not views of the map
    assert np.array_equal(np.concatenate([b for _, b in row_batches(m[5:], 7)]), a[5:])  # a slice keeps the file's offset
    idx = np.array([0, 3, 4, 17, 49])
    assert np.array_equal(rows_at(m, idx), a[idx]) and np.array_equal(rows_at(m[5:], idx[:-1]), a[5:][idx[:-1]])


def test_raw_batches_read_one_row_group_at_a_time(tmp_path):
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "raw").mkdir()
    frames = [pd.DataFrame({"a": np.arange(k * 10, k * 10 + 10), "b": [str(i) for i in range(10)]}) for k in range(3)]
    with pq.ParquetWriter(str(tmp_path / "raw" / "test.parquet"), pa.Table.from_pandas(frames[0]).schema) as w:
        for f in frames:  # three row groups of 10 rows, as ingest writes one per source chunk
            w.write_table(pa.Table.from_pandas(f))
    batches = list(data.raw_batches(tmp_path, "test", rows=4))
    assert [len(b) for b in batches] == [4, 4, 2] * 3  # never more than `rows`, never across a row group
    pd.testing.assert_frame_equal(pd.concat(batches, ignore_index=True), pd.concat(frames, ignore_index=True))


def test_npy_writer_writes_batches_and_refuses_a_short_array(tmp_path):
    w = NpyWriter(tmp_path / "p.npy", (5, 2), np.float64)
    w.write(np.ones((3, 2)))
    w.write(np.zeros((2, 2)))
    assert np.array_equal(np.load(w.close(), mmap_mode="r"), np.r_[np.ones((3, 2)), np.zeros((2, 2))])
    short = NpyWriter(tmp_path / "q.npy", (5, 2), np.float64)
    short.write(np.ones((3, 2)))
    with pytest.raises(ValueError, match="3 rows written of 5"):
        short.close()
    assert not list(tmp_path.glob("q.npy*"))  # nothing half-written


def test_streamed_temperature_minimises_the_validation_nll():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(4000, 4)) * 2
    y = np.array([rng.choice(4, p=r) for r in softmax(z)])
    logits = z * 3.0  # labels drawn from softmax(z): the best temperature for 3z is close to 3

    def nll(t):
        return -np.log(softmax(logits, t)[np.arange(len(y)), y]).mean()

    best = minimize_scalar(nll, bounds=(0.01, 100), method="bounded", options={"xatol": 1e-8}).x  # SciPy, dense
    t = fit_temperature(logits, y, rows=333)
    assert t == pytest.approx(best, rel=1e-4) and 2.5 < t < 3.5


def test_bins_over_batches_equal_one_pass():
    rng = np.random.default_rng(1)
    probs, y = softmax(rng.normal(size=(1000, 5)) * 3), rng.integers(0, 5, 1000)
    b = Bins(10)
    for i in range(0, 1000, 64):
        b.add(probs[i : i + 64], y[i : i + 64])
    conf, right = probs.max(1), probs.argmax(1) == y
    k = np.clip(np.ceil(conf * 10).astype(int) - 1, 0, 9)  # equal-width bins (lo, hi], by hand
    by_hand = sum((k == j).mean() * abs(right[k == j].mean() - conf[k == j].mean()) for j in range(10) if (k == j).any())
    assert b.ece() == pytest.approx(by_hand)


def test_fairness_triples_give_the_per_row_report():
    rng = np.random.default_rng(2)
    y, pred = rng.integers(0, 3, 600), rng.integers(0, 3, 600)
    g = rng.choice(["a", "b", "c"], 600)
    t, p, gg, w = triples(y, np.eye(3)[pred], g)  # probabilities in, as the checks stage gives them
    assert len(w) <= 27 and w.sum() == 600
    rows, weighted = group_report(y, pred, g, ["x", "y", "z"]), group_report(t, p, gg, ["x", "y", "z"], w)
    for grp in ("a", "b", "c"):
        assert weighted["by_group"][grp] == pytest.approx(rows["by_group"][grp])
        for c in ("x", "y", "z"):
            assert weighted["per_class"][c]["by_group"][grp] == pytest.approx(rows["per_class"][c]["by_group"][grp])
    for k in ("demographic_parity_difference", "equalized_odds_difference", "accuracy_difference"):
        assert weighted[k] == pytest.approx(rows[k])


class Guarded(np.ndarray):
    """A split that refuses to be read more than `limit` rows at a time (the stage must stream it)."""

    limit = 0

    def __getitem__(self, idx):
        if isinstance(idx, slice):
            lo, hi, _ = idx.indices(len(self))
            assert hi - lo <= self.limit, f"read {hi - lo} rows at once (batch limit {self.limit})"
        elif not isinstance(idx, (int, np.integer, tuple)):
            raise AssertionError("fancy-indexed the whole split")
        return np.asarray(super().__getitem__(idx))

    def __array__(self, dtype=None, copy=None):
        raise AssertionError("the whole split turned into one array")


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("bounded")
    (root / "params.yaml").write_text(yaml.safe_dump({
        "data": {"source": "synthetic", "sensitive_columns": ["group"],
                 "synthetic": {"n_samples": 600, "n_features": 6, "n_classes": 3, "class_sep": 2.5, "n_transfer": 100}},
        "validate": {"min_group_size": 20},
        "teacher": {"model": {"arch": "mlp", "width": 16, "depth": 1}, "train": {"epochs": 2}},
        "student": {"model": {"arch": "mlp", "width": 8, "depth": 1}, "train": {"epochs": 2}},
        "evaluate": {"latency_runs": 5, "warmup_runs": 1, "throughput_batch": 8},
    }))
    p = load_params(root / "params.yaml")
    for name in ("validate", "train_teacher", "soft_targets", "distill"):
        stages.run(name, root, p)
    return root, p


def _outputs(root, p) -> tuple[dict, dict]:
    m = json.loads((root / p.paths.reports / "metrics.json").read_text())
    quality = {k: {q: v[q] for q in ("accuracy", "macro_f1", "nll", "ece", "agreement_with_teacher") if q in v}
               for k, v in m.items() if k != "summary"}
    preds = {f.stem: np.load(f) for f in (root / p.paths.reports / PREDICTIONS).glob("*.npy")}
    return quality, preds


def test_evaluate_streams_the_split_and_matches_one_batch(project, monkeypatch):
    root, p = project
    stages.run("evaluate", root, p)  # the tiny split in one batch: the all-at-once computation
    whole, whole_preds = _outputs(root, p)
    load = data.load

    def guarded(path):
        prep = load(path)
        for s in ("val", "test"):
            prep.x[s] = np.asarray(prep.x[s]).view(Guarded)
        return prep

    Guarded.limit = 8  # the batch, and the speed measurements' throughput batch
    monkeypatch.setattr(data, "BATCH_ROWS", 8)
    monkeypatch.setattr(data, "load", guarded)
    assert len(data.load(root / p.paths.prepared).x["test"]) > 8
    stages.run("evaluate", root, p)  # fails in Guarded if any step read more than 8 rows of a split at once
    streamed, streamed_preds = _outputs(root, p)
    assert streamed.keys() == whole.keys() and "student_edge" in streamed
    for k in whole:  # int8: onnxruntime's dynamic quantization scales activations per call, so batch-dependent
        int8 = k in ("student_onnx_int8", "student_edge")
        # float32 kernels may block 8 rows differently from the whole split: logits agree to float32 rounding
        # (checked below), so the metrics computed from them do, and the answers are identical
        tol = {"rel": 0.05, "abs": 0.02} if int8 else {"rel": 1e-6, "abs": 1e-9}
        assert streamed[k] == pytest.approx(whole[k], **tol), k
        assert int8 or not isinstance(whole[k], dict) or streamed[k].get("accuracy") == whole[k].get("accuracy"), k
    assert sorted(whole_preds) == ["scratch_test", "student_test", "student_test_logits", "student_val_logits", "teacher_test"]
    for k in whole_preds:
        np.testing.assert_allclose(streamed_preds[k], whole_preds[k], rtol=1e-5, atol=1e-6)  # float32 rounding; a wrong row is O(1)
    y = data.load(root / p.paths.prepared).y["test"]
    assert streamed["student"]["accuracy"] == pytest.approx((whole_preds["student_test"].argmax(1) == y).mean())
    result = stages.run("checks", root, p)  # reads the predictions from their memory-mapped files
    names = {g[0] for g in result["gates"]}
    assert {"calibration_ece", "fairness_group"} <= names
    coverage = json.loads((root / p.paths.checks / "checks.json").read_text())["coverage"]
    assert coverage["fairness"]["rows"] == coverage["calibration"]["rows"] == len(y) and coverage["fairness"]["exact"]
    assert coverage["drift_data_gap"]["exact"] and coverage["drift_data_gap"]["cdf_within"] == 0  # a small split: all rows


def test_the_drift_sample_states_its_guarantee():
    g = sample_guarantee(5000, 2_000_000, "training split", seeds=(0, 1))
    assert g["rows"] == 5000 and not g["exact"]
    assert g["cdf_within"] == pytest.approx(math.sqrt(math.log(40) / 10_000), abs=1e-4)  # DKW at 95%: 0.0192
