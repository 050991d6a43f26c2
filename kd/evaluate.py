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
from sklearn.metrics import f1_score

from kd import models
from kd.bundle import write_student_bundle
from kd.calibration import ece, fit_temperature, reliability_diagram, softmax
from kd.config import EvaluateParams, Params
from kd.data import Prepared
from kd.export import OnnxModel
from kd.teacher import load_teacher

Predict = Callable[[np.ndarray], np.ndarray]  # numpy batch -> logits (or log-probabilities)


def classification(logits: np.ndarray, y: np.ndarray, bins: int) -> dict:
    """Accuracy, macro-F1 (scikit-learn), NLL and ECE with `bins` bins (Guo et al. 2017)."""
    probs = softmax(logits.astype(np.float64))
    pred = probs.argmax(1)
    return {
        "accuracy": float((pred == y).mean()),
        "macro_f1": float(f1_score(y, pred, average="macro")),
        "nll": float(-np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, None)).mean()),
        "ece": ece(probs, y, bins),
    }


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
    big = np.resize(x, (e.throughput_batch, x.shape[1])).astype(x.dtype if x.dtype == np.int64 else np.float32)
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


REFERENCE_ROWS = 20_000  # training rows kept in the bundle as the monitoring reference


def evaluate(prep: Prepared, raw_train: pd.DataFrame, train_index: np.ndarray, raw_test: Callable[[], Iterator[pd.DataFrame]],
             teacher_dir: Path, models_dir: Path, p: Params, reports: Path, export_dir: Path) -> dict:
    """Write `reports/metrics.json`, the reliability diagram, the confusion matrix and test predictions, and
    the deployable student bundle (`export_dir`: weights, ONNX, int8, edge graph, training reference)."""
    e, x, y = p.evaluate, prep.x["test"], prep.y["test"]
    teacher, _ = load_teacher(teacher_dir)
    student, _ = models.load(models_dir / "student" / "model.pt")
    scratch, _ = models.load(models_dir / "scratch" / "model.pt")
    val_logits = batched(torch_predict(student), prep.x["val"])
    temperature = fit_temperature(val_logits, prep.y["val"])
    export_dir.mkdir(parents=True, exist_ok=True)
    for old in export_dir.iterdir():  # the bundle is rebuilt whole: no file of an earlier export survives
        old.unlink()
    sample = np.sort(np.random.default_rng(p.seed).permutation(len(raw_train))[:REFERENCE_ROWS])  # rows of the raw sample
    ref_probs = softmax(batched(torch_predict(student), prep.x["train"][train_index[sample]]).astype(np.float64))
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
    logits = {name: batched(fn, x) for name, (fn, _, _) in candidates.items()}
    teacher_pred = logits["teacher"].argmax(1)
    metrics: dict[str, dict] = {}
    for name, (fn, n_params, n_bytes) in candidates.items():
        m = classification(logits[name], y, e.ece_bins)
        m["agreement_with_teacher"] = float((logits[name].argmax(1) == teacher_pred).mean())
        m |= {"params": n_params, "size_bytes": n_bytes} | speed(fn, x, e)
        metrics[name] = m
    if e.onnx and (export_dir / "edge.onnx").exists():  # no edge graph for text
        metrics["student_edge"] = edge_metrics(export_dir / "edge.onnx", raw_test, y, logits["student_onnx_int8"], prep.classes, p)
    if e.onnx:
        metrics["quantization"] = quantization_summary(metrics, qat_ckpt is not None)
    s, t = metrics["student"], metrics["teacher"]
    metrics["summary"] = {
        "retention": s["accuracy"] / max(t["accuracy"], 1e-12),
        "compression": t["size_bytes"] / max(s["size_bytes"], 1),
        "param_ratio": t["params"] / max(s["params"], 1),
        "speedup_p50": t["latency_ms_p50"] / max(s["latency_ms_p50"], 1e-9),
        "student_minus_scratch": s["accuracy"] - metrics["scratch"]["accuracy"],
        "n_test": len(y),
    }
    reports.mkdir(parents=True, exist_ok=True)
    (reports / "metrics.json").write_text(json.dumps(metrics, indent=2))
    reliability_diagram(
        {n: (softmax(logits[n].astype(np.float64)), y) for n in ("teacher", "student", "scratch")},
        reports / "reliability.png", e.ece_bins,
    )
    confusion_png(logits["student"].argmax(1), y, prep.classes, reports / "confusion.png")
    np.savez(
        reports / "predictions.npz",
        teacher_test=softmax(logits["teacher"].astype(np.float64)), student_test=softmax(logits["student"].astype(np.float64)),
        scratch_test=softmax(logits["scratch"].astype(np.float64)),
        student_test_logits=logits["student"], student_val_logits=val_logits,
    )
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


def edge_metrics(path: Path, raw_test: Callable[[], Iterator[pd.DataFrame]], y: np.ndarray, int8_logits: np.ndarray,
                 classes: list[str], p: Params) -> dict:
    """The edge graph on the raw test rows (read batch by batch): quality, agreement with the int8 student,
    size, batch-1 latency (onnxruntime alone, the graph's own cost: a row's inputs prepared beforehand)."""
    from kd.edge import EdgeModel

    edge = EdgeModel(path, threads=p.threads)
    labels, probs, first = [], [], None
    for batch in raw_test():
        first = batch if first is None else first
        lab, pr = edge.predict(batch)
        labels.append(lab)
        probs.append(pr)
    labels, probs = np.concatenate(labels), np.concatenate(probs)
    m = classification(np.log(np.clip(probs.astype(np.float64), 1e-12, None)), y, p.evaluate.ece_bins)
    index = {c: i for i, c in enumerate(classes)}
    m["agreement_with_int8_student"] = float(np.mean(np.array([index[c] for c in labels]) == int8_logits.argmax(1)))
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


def confusion_png(pred: np.ndarray, y: np.ndarray, classes: list[str], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    fig, ax = plt.subplots(figsize=(6, 6))
    ConfusionMatrixDisplay.from_predictions(y, pred, labels=list(range(len(classes))), display_labels=classes, ax=ax, colorbar=False)
    ax.set_title("Student confusion matrix (test split)")
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return path
