"""Evaluation of teacher, student and the scratch baseline side by side, plus the student's ONNX, int8 and
edge exports: quality (accuracy, macro-F1, NLL, ECE), agreement with the teacher, size and CPU latency.
The stage also assembles the deployable student bundle (`kd.export.write_student_bundle`)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from kd import models
from kd.bundle import write_student_bundle
from kd.calibration import Bins, fit_temperature, reliability_diagram, softmax
from kd.config import PREDICTIONS, EvaluateParams, Params
from kd.data import NpyWriter, Prepared, row_batches, rows_at
from kd.export import OnnxModel
from kd.teacher import load_teacher

Predict = Callable[[np.ndarray], np.ndarray]  # numpy batch -> logits (or log-probabilities)


class Scores:
    """Accuracy, macro-F1, NLL and ECE of one model, added a batch of test rows at a time: a confusion matrix,
    a summed NLL and calibration bins hold everything, so a split of any length costs one batch of memory."""

    def __init__(self, n_classes: int, bins: int):
        self.cm = np.zeros((n_classes, n_classes), np.int64)  # rows: true class, columns: predicted
        self.nll = 0.0
        self.bins = Bins(bins)

    def add(self, logits: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Score one batch; returns its probabilities (float64)."""
        probs = softmax(logits.astype(np.float64))
        c = len(self.cm)
        self.cm += np.bincount(np.asarray(y, np.int64) * c + probs.argmax(1), minlength=c * c).reshape(c, c)
        self.nll -= float(np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, None)).sum())
        self.bins.add(probs, y)
        return probs

    def result(self) -> dict:
        """Accuracy, macro-F1 as scikit-learn's f1_score(average="macro") (the mean over the classes present in
        labels or predictions of 2TP / (2TP + FP + FN)), NLL and ECE (Guo et al. 2017)."""
        n, tp = max(int(self.cm.sum()), 1), np.diag(self.cm).astype(np.float64)
        truth, pred = self.cm.sum(1), self.cm.sum(0)
        present = (truth + pred) > 0
        f1 = 2 * tp[present] / (truth[present] + pred[present])
        return {"accuracy": float(tp.sum() / n), "macro_f1": float(f1.mean()) if present.any() else 0.0,
                "nll": self.nll / n, "ece": self.bins.ece()}


def classification(logits: np.ndarray, y: np.ndarray, bins: int) -> dict:
    """Accuracy, macro-F1 (scikit-learn's definition), NLL and ECE with `bins` bins (Guo et al. 2017)."""
    scores = Scores(logits.shape[1], bins)
    scores.add(logits, y)
    return scores.result()


def speed(fn: Predict, x: np.ndarray, e: EvaluateParams) -> dict:
    """CPU latency p50/p95 at batch 1 (after warm-up) and throughput at batch `throughput_batch`."""
    one = x[:1]
    for _ in range(e.warmup_runs):
        fn(one)
    times = []
    for i in range(e.latency_runs):
        row = x[i % len(x) : i % len(x) + 1]
        t0 = time.perf_counter()
        fn(row)
        times.append((time.perf_counter() - t0) * 1e3)
    big = np.resize(np.asarray(x[: e.throughput_batch]), (e.throughput_batch, x.shape[1])).astype(x.dtype if x.dtype == np.int64 else np.float32)
    fn(big)
    reps, t0 = 0, time.perf_counter()
    while reps < 5 or time.perf_counter() - t0 < 0.3:
        fn(big)
        reps += 1
    return {
        "latency_ms_p50": float(np.percentile(times, 50)),
        "latency_ms_p95": float(np.percentile(times, 95)),
        "throughput_per_s": float(reps * e.throughput_batch / (time.perf_counter() - t0)),
    }


def torch_predict(model: torch.nn.Module) -> Predict:
    model.eval()

    def fn(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(np.ascontiguousarray(x, dtype=x.dtype if x.dtype == np.int64 else np.float32))).numpy()

    return fn


def batched(fn: Predict, x: np.ndarray, size: int = 1024) -> np.ndarray:
    return np.concatenate([fn(x[i : i + size]) for i in range(0, len(x), size)])


def _chunked(fn: Predict, x: np.ndarray, size: int = 1024) -> np.ndarray:
    """`fn` on an in-memory batch, `size` rows per call (the calls' own batch size, as `batched`)."""
    return np.concatenate([fn(x[i : i + size]) for i in range(0, len(x), size)]) if len(x) else fn(x)


REFERENCE_ROWS = 20_000  # training rows kept in the bundle as the monitoring reference


def evaluate(prep: Prepared, raw_train: pd.DataFrame, train_index: np.ndarray, raw_test: Callable[[], Iterator[pd.DataFrame]],
             teacher_dir: Path, models_dir: Path, p: Params, reports: Path, export_dir: Path) -> dict:
    """Write `reports/metrics.json`, the reliability diagram, the confusion matrix and the test predictions
    (`reports/predictions/*.npy`), and the deployable student bundle (`export_dir`: weights, ONNX, int8, edge
    graph, training reference).

    Bounded memory: the validation and test splits are read `kd.data.BATCH_ROWS` rows at a time (file reads,
    not the memory map), the raw test rows in parquet batches; scores accumulate in confusion matrices and
    calibration bins, predictions go to disk batch by batch. What grows with the split is 1 byte per test row
    (the int8 student's class, for the edge graph's agreement); the rest is bounded by the batch, the models
    and the fixed samples (the raw training sample, `REFERENCE_ROWS`, the speed measurements' rows)."""
    e, x, y = p.evaluate, prep.x["test"], prep.y["test"]
    n, c = len(y), prep.n_classes
    teacher, _ = load_teacher(teacher_dir)
    student, _ = models.load(models_dir / "student" / "model.pt")
    scratch, _ = models.load(models_dir / "scratch" / "model.pt")
    out = reports / PREDICTIONS
    out.mkdir(parents=True, exist_ok=True)
    for old in [*out.iterdir(), reports / "predictions.npz"]:  # nothing of an earlier evaluation survives
        old.unlink(missing_ok=True)
    val = NpyWriter(out / "student_val_logits.npy", (len(prep.y["val"]), c), np.float32)
    for _, xb in row_batches(prep.x["val"]):
        val.write(_chunked(torch_predict(student), xb))
    val_logits = np.load(val.close(), mmap_mode="r")
    temperature = fit_temperature(val_logits, prep.y["val"])
    export_dir.mkdir(parents=True, exist_ok=True)
    for old in export_dir.iterdir():  # the bundle is rebuilt whole: no file of an earlier export survives
        old.unlink()
    sample = np.sort(np.random.default_rng(p.seed).permutation(len(raw_train))[:REFERENCE_ROWS])  # rows of the raw sample
    ref_probs = softmax(batched(torch_predict(student), rows_at(prep.x["train"], train_index[sample])).astype(np.float64))
    reference = raw_train.iloc[sample].reset_index(drop=True).assign(
        __prediction=[prep.classes[i] for i in ref_probs.argmax(1)], __confidence=ref_probs.max(1))
    qat_ckpt = models_dir / "student" / "qat.pt"  # written by the distill stage when student.qat is enabled
    qat_ckpt = qat_ckpt if qat_ckpt.exists() else None
    write_student_bundle(export_dir, models_dir / "student" / "model.pt", prep, e.onnx, reference,
                         {"calibration": {"temperature": temperature, "fit_on": "validation split"}}, qat_ckpt)
    candidates: dict[str, tuple[Predict, int, int]] = {
        "teacher": (torch_predict(teacher), models.param_count(teacher), _teacher_bytes(teacher)),
        "student": (torch_predict(student), models.param_count(student), models.serialized_bytes(student)),
        "scratch": (torch_predict(scratch), models.param_count(scratch), models.serialized_bytes(scratch)),
    }
    if e.onnx:
        onnx_files = [("student_onnx", "student.onnx"), ("student_onnx_int8", "student_int8.onnx")]
        if qat_ckpt is not None:  # student_onnx_int8 is the served (quantization-aware) int8; this one the post-training int8
            onnx_files.append(("student_onnx_int8_ptq", "student_int8_ptq.onnx"))
        for name, file in onnx_files:
            m = OnnxModel(export_dir / file, threads=p.threads)
            candidates[name] = (m, models.param_count(student), m.size_bytes)
    # one pass over the test split, a batch at a time: every model's scores, and its predictions to disk
    scores = {name: Scores(c, e.ece_bins) for name in candidates}
    agree = dict.fromkeys(candidates, 0)
    writers = {f"{k}_test": NpyWriter(out / f"{k}_test.npy", (n, c), np.float64) for k in ("teacher", "student", "scratch")}
    writers["student_test_logits"] = NpyWriter(out / "student_test_logits.npy", (n, c), np.float32)
    int8_pred = np.zeros(n, np.min_scalar_type(c)) if e.onnx else None  # the edge graph's agreement (1 byte a row)
    for (i, xb), (_, yb) in zip(row_batches(x), row_batches(y)):
        logits = {name: _chunked(fn, xb) for name, (fn, _, _) in candidates.items()}
        teacher_pred = logits["teacher"].argmax(1)
        for name, z in logits.items():
            probs = scores[name].add(z, yb)
            agree[name] += int((z.argmax(1) == teacher_pred).sum())
            if f"{name}_test" in writers:
                writers[f"{name}_test"].write(probs)
        writers["student_test_logits"].write(logits["student"])
        if int8_pred is not None:
            int8_pred[i : i + len(xb)] = logits["student_onnx_int8"].argmax(1)
    for w in writers.values():
        w.close()
    head = np.array(x[: max(e.throughput_batch, e.latency_runs)])  # the rows the speed measurements use
    metrics: dict[str, dict] = {}
    for name, (fn, n_params, n_bytes) in candidates.items():
        m = scores[name].result()
        m["agreement_with_teacher"] = agree[name] / max(n, 1)
        m |= {"params": n_params, "size_bytes": n_bytes} | speed(fn, head, e)
        metrics[name] = m
    if e.onnx and (export_dir / "edge.onnx").exists():  # no edge graph for text
        metrics["student_edge"] = edge_metrics(export_dir / "edge.onnx", raw_test, y, int8_pred, prep.classes, p)
    if e.onnx:
        metrics["quantization"] = quantization_summary(metrics, qat_ckpt is not None)
    s, t = metrics["student"], metrics["teacher"]
    metrics["summary"] = {
        "retention": s["accuracy"] / max(t["accuracy"], 1e-12),
        "compression": t["size_bytes"] / max(s["size_bytes"], 1),
        "param_ratio": t["params"] / max(s["params"], 1),
        "speedup_p50": t["latency_ms_p50"] / max(s["latency_ms_p50"], 1e-9),
        "student_minus_scratch": s["accuracy"] - metrics["scratch"]["accuracy"],
        "n_test": n,
    }
    (reports / "metrics.json").write_text(json.dumps(metrics, indent=2))
    reliability_diagram({k: scores[k].bins for k in ("teacher", "student", "scratch")}, reports / "reliability.png", e.ece_bins)
    confusion_png(scores["student"].cm, prep.classes, reports / "confusion.png")
    return metrics


def quantization_summary(metrics: dict, qat: bool) -> dict:
    """fp32, post-training int8 and quantization-aware int8 test accuracy side by side, and their deltas to fp32."""
    fp32 = metrics["student"]["accuracy"]
    ptq = metrics["student_onnx_int8_ptq" if qat else "student_onnx_int8"]["accuracy"]
    out = {"served_int8": "qat" if qat else "ptq", "fp32_accuracy": fp32, "ptq_int8_accuracy": ptq, "ptq_minus_fp32": ptq - fp32}
    if qat:
        q = metrics["student_onnx_int8"]["accuracy"]
        out |= {"qat_int8_accuracy": q, "qat_minus_fp32": q - fp32}
    return out


def _teacher_bytes(teacher) -> int:
    from kd.export import OnnxModule

    return sum(m.size_bytes if isinstance(m, OnnxModule) else models.serialized_bytes(m) for m in teacher.members)


def edge_metrics(path: Path, raw_test: Callable[[], Iterator[pd.DataFrame]], y: np.ndarray, int8_pred: np.ndarray,
                 classes: list[str], p: Params) -> dict:
    """The edge graph on the raw test rows (read batch by batch): quality, agreement with the int8 student
    (its predicted class per test row), size, batch-1 latency (onnxruntime alone, the graph's own cost: a row's
    inputs prepared beforehand)."""
    from kd.edge import EdgeModel

    edge = EdgeModel(path, threads=p.threads)
    index = {c: i for i, c in enumerate(classes)}
    scores, agree, start, first = Scores(len(classes), p.evaluate.ece_bins), 0, 0, None
    for batch in raw_test():
        first = batch.iloc[: p.evaluate.latency_runs] if first is None else first
        lab, pr = edge.predict(batch)
        k = len(batch)
        scores.add(np.log(np.clip(np.asarray(pr, np.float64), 1e-12, None)), np.asarray(y[start : start + k]))
        agree += int(np.sum(np.array([index[c] for c in lab]) == int8_pred[start : start + k]))
        start += k
    m = scores.result() | {"agreement_with_int8_student": agree / max(start, 1)}
    feeds = [edge.feeds(first.iloc[i : i + 1]) for i in range(min(len(first), p.evaluate.latency_runs))]
    for f in feeds[: p.evaluate.warmup_runs]:
        edge.session.run(None, f)
    times = []
    for f in feeds:
        t0 = time.perf_counter()
        edge.session.run(None, f)
        times.append((time.perf_counter() - t0) * 1e3)
    return m | {"params": 0, "size_bytes": path.stat().st_size, "latency_ms_p50": float(np.percentile(times, 50)),
                "latency_ms_p95": float(np.percentile(times, 95))}


def confusion_png(cm: np.ndarray, classes: list[str], path: Path) -> Path:
    """The confusion matrix (counts; rows true class, columns predicted) as scikit-learn draws it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    fig, ax = plt.subplots(figsize=(6, 6))
    ConfusionMatrixDisplay(cm, display_labels=classes).plot(ax=ax, colorbar=False)
    ax.set_title("Student confusion matrix (test split)")
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return path
