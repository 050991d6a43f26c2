"""int8 students: post-training quantization vs quantization-aware distillation, on the embedded default.

For each seed (the default's `params.yaml`, seeds as `benchmarks/default_wins.py` sets them): train the
teacher, build the soft-target cache, distil the student (`distill.distill_one`), then fine-tune it with fake
int8 quantization under the same loss and cache (`distill.distill_qat`, `student.qat` defaults unless given).
Measured on the test split, all through onnxruntime except the fp32 torch student:

- fp32: the distilled student (torch; its fp32 ONNX is reported for size and latency);
- fp32 fine-tuned: the same extra epochs and learning rate without fake quantization (a control: is a QAT
  gain quantization-awareness or just more training?);
- PTQ dynamic: `kd.export.quantize_int8` (onnxruntime quantize_dynamic, int8 weights, activations quantized
  per batch at run time) — what kd ships without QAT;
- PTQ static: onnxruntime quantize_static, QDQ, the QAT scheme (uint8 activations, int8 per-channel weights),
  calibrated on 512 training rows — the like-for-like post-training baseline;
- QAT-KD: `kd.qat.to_onnx` (QDQ with the learned scales, int8 weights).

Deltas are paired per seed (int8 minus the seed's fp32 student), then mean ± std over seeds. The aim (the
issue): QAT-KD int8 within 0.2 points of the fp32 student. A second student (`--students`) shows whether int8
effects appear when the student is narrower.

Run: python benchmarks/qat.py [--seeds 0 1 2 3 4] [--students mlp:32:1 mlp:8:1] [--quick]
"""

from __future__ import annotations

import copy
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import bench_args, md_table, write_json

from kd import data, models, qat, sources
from kd.config import EvaluateParams, ModelSpec, QatParams, load_params
from kd.distill import distill_batches, distill_one, distill_qat
from kd.evaluate import batched, speed, torch_predict
from kd.export import OnnxModel, quantize_int8, to_onnx
from kd.soft_targets import SoftTargets, build, cache_key
from kd.teacher import load_teacher, predict_logp, train_teacher
from kd.training import fit

ROOT = Path(__file__).resolve().parent.parent
KINDS = ("fp32", "fp32 fine-tuned", "PTQ dynamic", "PTQ static", "QAT-KD")


def for_seed(params_path: Path, seed: int, quick: bool, qat_epochs: int | None):
    p = load_params(params_path)
    p.seed = seed
    for i, m in enumerate(p.teacher.members):
        m.seed = 10 * seed + i
    q = p.student.qat.model_dump() | {"enabled": True}
    if qat_epochs:
        q |= {"epochs": qat_epochs, "freeze_observers_after": min(q["freeze_observers_after"], qat_epochs)}
    if quick:
        p.teacher.train.epochs, p.student.train.epochs = 2, 2
        q |= {"epochs": 2, "freeze_observers_after": 1}
    p.student.qat = QatParams(**q)
    return p


def static_int8(src: Path, dst: Path, calibration: np.ndarray) -> Path:
    """onnxruntime post-training static quantization in the QAT's scheme (QDQ, uint8 activations, int8 per-channel weights)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Rows(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"x": calibration[i : i + 64]} for i in range(0, len(calibration), 64)])

        def get_next(self):
            return next(self.it, None)

    quantize_static(str(src), str(dst), Rows(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return dst


def fp32_finetune(prep, student, teacher, targets, p, seed):
    """The control: the QAT phase's epochs, lr and batches on the float student, no fake quantization."""
    from kd import losses

    model = copy.deepcopy(student)
    loss = losses.build(p.distill, None, n_rows=len(prep.distill_inputs()))

    def loss_fn(m, b):
        return loss({"student_logits": m(b["x"]), "teacher_logp": b["t"], "y": b["y"], "idx": b["idx"]})

    fit(model, len(prep.distill_inputs()), distill_batches(prep, teacher, targets, p, seed), loss_fn, (prep.x["val"], prep.y["val"]),
        qat.train_params(p.student.train, p.student.qat), seed, desc="fp32-finetune")
    return model


def run_seed(params_path: Path, seed: int, students: list[ModelSpec], quick: bool, qat_epochs: int | None) -> dict:
    p = for_seed(params_path, seed, quick, qat_epochs)
    prep = data.prepare(data.split(sources.load_source(p.data, base=params_path.parent), p.data, seed), p.data)
    x, y = prep.x["test"], prep.y["test"]
    timing = EvaluateParams(latency_runs=300, warmup_runs=30)
    calib = prep.x["train"][np.random.default_rng(seed).permutation(len(prep.x["train"]))[:512]]
    out: dict = {"seed": seed, "n_test": len(y), "students": {}, "seconds": {}}
    with tempfile.TemporaryDirectory(prefix="kd-bench-qat-") as d:
        tmp = Path(d)
        prep.meta["data_hash"] = data.save(prep, tmp / "prepared")
        t0 = time.perf_counter()
        train_teacher(prep, p, tmp / "teacher")
        teacher, tsum = load_teacher(tmp / "teacher")
        key = cache_key(tsum["teacher_hash"], prep.meta["data_hash"], p.soft_targets, seed)
        build(tmp / "cache", key, prep.distill_inputs(), lambda xb: predict_logp(teacher, xb), prep.n_classes, p.soft_targets, seed)
        targets = SoftTargets(tmp / "cache", expected_key=key)
        out["seconds"]["teacher+cache"] = time.perf_counter() - t0
        for spec in students:
            name = f"{spec.arch} {spec.width}x{spec.depth}"
            ps = p.model_copy(deep=True)
            ps.student.model = spec
            t0 = time.perf_counter()
            student, _ = distill_one(prep, spec, teacher, targets, ps, seed, None)
            t1 = time.perf_counter()
            qmodel, qinfo = distill_qat(prep, student, teacher, targets, ps, seed, None)
            t2 = time.perf_counter()
            tuned = fp32_finetune(prep, student, teacher, targets, ps, seed)
            out["seconds"][f"{name} distill"], out["seconds"][f"{name} qat"] = t1 - t0, t2 - t1
            files = {"fp32": to_onnx(student, x.shape[1], tmp / "fp32.onnx")}
            files["PTQ dynamic"] = quantize_int8(files["fp32"], tmp / "ptq_dynamic.onnx")
            files["PTQ static"] = static_int8(files["fp32"], tmp / "ptq_static.onnx", calib)
            files["QAT-KD"] = qat.to_onnx(qmodel, tmp / "qat.onnx")
            res = {"params": models.param_count(student), "qat_val_accuracy": qinfo["val_accuracy"], "qat_best_epoch": qinfo["best_epoch"]}
            acc = {"fp32": float((batched(torch_predict(student), x).argmax(1) == y).mean()),
                   "fp32 fine-tuned": float((batched(torch_predict(tuned), x).argmax(1) == y).mean())}
            for kind, f in files.items():
                m = OnnxModel(f, threads=1)
                if kind != "fp32":
                    acc[kind] = float((batched(m, x).argmax(1) == y).mean())
                res.setdefault("bytes", {})[kind] = os.path.getsize(f)
                res.setdefault("latency_ms_p50", {})[kind] = speed(m, x, timing)["latency_ms_p50"]
            fq = batched(torch_predict(qmodel), x)
            res["qat_fake_quant_accuracy"] = float((fq.argmax(1) == y).mean())  # torch fake-quant vs onnxruntime int8
            res["qat_onnx_agrees_with_fake_quant"] = float((batched(OnnxModel(files["QAT-KD"]), x).argmax(1) == fq.argmax(1)).mean())
            res["accuracy"] = acc
            out["students"][name] = res
            print(f"seed {seed} {name}: " + ", ".join(f"{k} {v:.4f}" for k, v in acc.items()), file=sys.stderr, flush=True)
    return out


def summarise(runs: list[dict]) -> dict:
    summary = {}
    for name in runs[0]["students"]:
        acc = {k: np.array([r["students"][name]["accuracy"][k] for r in runs]) for k in KINDS}
        s = {"params": runs[0]["students"][name]["params"], "accuracy": {}, "minus_fp32_pp": {}}
        for k in KINDS:
            s["accuracy"][k] = {"mean": float(acc[k].mean()), "std": float(acc[k].std(ddof=1)) if len(runs) > 1 else 0.0,
                                "per_seed": acc[k].tolist()}
            diff = (acc[k] - acc["fp32"]) * 100
            s["minus_fp32_pp"][k] = {"mean": float(diff.mean()), "std": float(diff.std(ddof=1)) if len(runs) > 1 else 0.0,
                                     "per_seed": diff.tolist()}
        for field in ("bytes", "latency_ms_p50"):
            s[field] = {k: float(np.median([r["students"][name][field][k] for r in runs])) for k in runs[0]["students"][name][field]}
        gap = s["minus_fp32_pp"]["QAT-KD"]  # within 0.2 points: at most 0.2 below fp32 (above it is within too)
        s["aim_qat_within_0.2pp_of_fp32"] = {"mean": bool(gap["mean"] >= -0.2 - 1e-9),
                                            "every_seed": bool(all(v >= -0.2 - 1e-9 for v in gap["per_seed"]))}
        summary[name] = s
    return summary


def _spec(text: str) -> ModelSpec:
    arch, width, depth = text.split(":")
    return ModelSpec(arch=arch, width=int(width), depth=int(depth))


def main() -> None:
    def add(ap):
        ap.add_argument("--params", type=Path, default=ROOT / "params.yaml")
        ap.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2, 3, 4])
        ap.add_argument("--students", nargs="*", default=["mlp:32:1", "mlp:8:1"], help="arch:width:depth, the first is the default's")
        ap.add_argument("--qat-epochs", type=int, default=None, help="student.qat.epochs (default: kd's default)")

    args = bench_args(__doc__, add)
    seeds = args.seeds[:1] if args.quick else args.seeds
    students = [_spec(s) for s in args.students]
    load = {"before": os.getloadavg()}
    start = time.perf_counter()
    runs = [run_seed(args.params, s, students, args.quick, args.qat_epochs) for s in seeds]
    load["after"] = os.getloadavg()
    summary = summarise(runs)
    qp = for_seed(args.params, seeds[0], args.quick, args.qat_epochs).student.qat
    print(f"## {args.params.name}: seeds {seeds}, {runs[0]['n_test']} test rows; student.qat {qp.model_dump()}\n")
    for name, s in summary.items():
        rows = [[k, f"{s['accuracy'][k]['mean']:.4f} ± {s['accuracy'][k]['std']:.4f}",
                 "" if k == "fp32" else f"{s['minus_fp32_pp'][k]['mean']:+.2f} ± {s['minus_fp32_pp'][k]['std']:.2f}",
                 " ".join(f"{v:.4f}" for v in s["accuracy"][k]["per_seed"]),
                 f"{s['bytes'].get(k, float('nan')):,.0f}" if k in s["bytes"] else "",
                 f"{s['latency_ms_p50'][k] * 1000:.1f}" if k in s["latency_ms_p50"] else ""] for k in KINDS]
        print(f"### {name} ({s['params']:,} params)\n")
        print(md_table(["model", "test accuracy", "minus fp32 (pp)", "per seed", "ONNX bytes", "p50 µs (batch 1)"], rows) + "\n")
        print(f"aim (QAT-KD int8 within 0.2 pp of fp32): {s['aim_qat_within_0.2pp_of_fp32']}\n")
    command = "python benchmarks/qat.py " + " ".join(sys.argv[1:])
    path = write_json("qat", {"command": command.strip(), "params_file": "params.yaml" if args.params == ROOT / "params.yaml" else args.params.name,
                              "qat": qp.model_dump(), "seeds": seeds, "runs": runs, "summary": summary, "loadavg": load,
                              "threads": args.threads, "total_seconds": time.perf_counter() - start}, args.quick)
    print(f"total {(time.perf_counter() - start) / 60:.1f} min; wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
