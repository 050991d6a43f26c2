"""Text distillation on the fine-food reviews (examples/food): a pretrained MiniLM teacher, three students and
the classic small model a practitioner would pick instead (TF-IDF 1-2-grams + logistic regression).

    python benchmarks/text.py                 # ~30 min on a busy 2-core machine, one thread
    python benchmarks/text.py --tune-top 6 --teacher-epochs 3 --teacher-lr 5e-5 --layers-seeds 3   # teacher fine-tuned end to end
    python benchmarks/text.py --quick         # smoke test on 300 rows, 16 tokens

One split (seed 0: 65/15/20, the pipeline's own), the same for every model. To fit a shared 2-core budget
the teacher is all-MiniLM-L6-v2 with its encoder *frozen* (`tune_layers: 0`): its hidden states are computed
once for every row (the cached teacher outputs), and only the linear head on their token mean is trained
(AdamW, full batch, the step count picked on the validation split). The students learn from those cached
outputs:
- `embbag` (token-embedding bag + 1 ReLU layer) and `textcnn` (Kim 2014: filters of widths 3, 4, 5, max over
  time), both kd.transformer: KD (Hinton, T=2, alpha=0.5) from the cached log-probabilities, against the same
  network on hard labels (scratch), over `--seeds` seeds;
- `minilm_layers`: layers 0, 2, 4 of the teacher plus its embeddings and head (DistilBERT's
  initialisation), trained with KD + DistilBERT's hidden-state cosine loss against the cached last hidden
  states, `--layers-epochs` epochs, over `--layers-seeds` seeds, against the same architecture from the
  pretrained layers 0, 2, 4 on hard labels (scratch, the pipeline's baseline).
The teacher can also be fine-tuned: `--tune-top k` trains its top k layers (6: all, the embeddings frozen)
on the cached states of the layers below.
Latency: p50 of batch-1 forward passes on one thread, model only (token ids in; TF-IDF: the vectorised row
in) and end to end (raw text in: tokenizer + model; TF-IDF: vectoriser + model); throughput at batch 256
(the teacher at 64). Sizes: torch state_dict bytes, ONNX file bytes; TF-IDF: vocabulary strings + idf +
coefficients as float64.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import bench_args, md_table, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "food" / "data.csv"


def add_args(ap) -> None:
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--bag-epochs", type=int, default=30)
    ap.add_argument("--layers-epochs", type=int, default=1)
    ap.add_argument("--runs", type=int, default=200, help="batch-1 timed runs per model (the teacher: a quarter)")
    ap.add_argument("--tune-top", type=int, default=0, help="teacher: also fine-tune its top k encoder layers (on cached states of the layers below)")
    ap.add_argument("--teacher-epochs", type=int, default=2, help="epochs of the top-layer fine-tuning (with --tune-top)")
    ap.add_argument("--teacher-lr", type=float, default=1e-4, help="AdamW learning rate of the top-layer fine-tuning (with --tune-top)")
    ap.add_argument("--layers-seeds", type=int, default=1, help="seeds of minilm_layers, each also trained on hard labels (scratch)")


def spread(acc: dict[str, list[float]]) -> dict:
    """Per-seed test accuracies of the distilled student and its scratch baseline, with their mean and std."""
    return {f"{k}_test_accuracy": acc[k] for k in ("student", "scratch")} | {
        f"{k}_{stat}": float(fn(acc[k])) for k in ("student", "scratch") for stat, fn in (("mean", np.mean), ("std", np.std))}


def p50(fn, rows: list, runs: int) -> float:
    for r in rows[:5]:
        fn(r)
    times = []
    for i in range(runs):
        t0 = time.perf_counter()
        fn(rows[i % len(rows)])
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))


def throughput(fn, batch, n_rows: int, min_s: float = 1.0) -> float:
    fn(batch)
    reps, t0 = 0, time.perf_counter()
    while reps < 3 or time.perf_counter() - t0 < min_s:
        fn(batch)
        reps += 1
    return reps * n_rows / (time.perf_counter() - t0)


def main() -> None:
    args = bench_args(__doc__, add_args)
    import torch
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    from kd import models
    from kd.config import DistillParams, ModelSpec, TrainParams, parse_params
    from kd.data import prepare, split
    from kd.export import OnnxModel, quantize_int8, to_onnx
    from kd.hooks import FeatureTap
    from kd.losses import build as build_loss
    from kd.sources import load_source
    from kd.text import encode
    from kd.training import accuracy, cross_entropy_loss, fit, hard_label_batches
    from kd.transformer import _masked_mean

    t_start = time.time()
    L = 16 if args.quick else args.max_length
    data = DATA
    if args.quick:
        data = Path(tempfile.gettempdir()) / "kd-text-quick.csv"
        pd.read_csv(DATA).head(300).to_csv(data, index=False)
    p = parse_params({"data": {"source": f"text:{data}", "max_length": L},
                      "teacher": {"model": {"arch": "minilm", "tune_layers": 0}}, "student": {"model": {"arch": "embbag"}}})
    frames = split(load_source(p.data), p.data, p.seed)
    prep = prepare(frames, p.data)
    x, y = prep.x, prep.y
    n_classes = prep.n_classes
    print(f"rows: train {len(y['train'])}, val {len(y['val'])}, test {len(y['test'])}; max_length {L}; classes {prep.classes}", flush=True)
    out: dict = {"command": "python " + " ".join(["benchmarks/text.py", *sys.argv[1:]]), "max_length": L,
                 "rows": {s: int(len(y[s])) for s in y}, "classes": prep.classes, "threads": args.threads, "loadavg_start": os.getloadavg()}

    # ---------------------------------------------------------------- teacher: frozen encoder, cached outputs
    t0 = time.time()
    teacher = models.build(ModelSpec(arch="minilm", tune_layers=args.tune_top), (L,), n_classes).eval()
    enc = teacher.features
    n_low = len(enc.layers) - args.tune_top
    top = enc.layers[n_low:]

    def bias_of(ids):
        return ((ids == 0).to(torch.float32) * -1e4)[:, None, None, :]

    def run_top(h, ids):
        for layer in top:
            h = layer(h, bias_of(ids))
        return h

    hidden, pooled, mid = {}, {}, {}
    with torch.no_grad():
        for s in ("train", "val", "test"):
            hs, ps, ms = [], [], []
            for i in range(0, len(x[s]), 64):
                ids = torch.from_numpy(x[s][i : i + 64])
                h = enc.embeddings(ids)
                for layer in enc.layers[:n_low]:
                    h = layer(h, bias_of(ids))
                ms.append(h.half())
                h = run_top(h, ids)
                ps.append(_masked_mean(h, ids))
                if s == "train":
                    hs.append(h.half())
            pooled[s] = torch.cat(ps)
            mid[s] = torch.cat(ms)
            if hs:
                hidden[s] = torch.cat(hs)
    encode_s = time.time() - t0
    torch.manual_seed(0)
    head = torch.nn.Linear(pooled["train"].shape[1], n_classes)
    opt = torch.optim.AdamW(head.parameters(), lr=1e-2, weight_decay=1e-2)
    best = (-1.0, 0, None)
    yt = torch.from_numpy(np.asarray(y["train"]))
    for step in range(1, 1001):
        loss = torch.nn.functional.cross_entropy(head(pooled["train"]), yt)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 25 == 0:
            with torch.no_grad():
                acc = float((head(pooled["val"]).argmax(1).numpy() == y["val"]).mean())
            if acc > best[0]:
                best = (acc, step, {k: v.clone() for k, v in head.state_dict().items()})
    teacher.head.load_state_dict(best[2])
    tune_log = []
    if args.tune_top:  # fine-tune the top layers + head on the cached states of the frozen layers below
        t1 = time.time()
        ids_all = {s_: torch.from_numpy(np.asarray(x[s_])) for s_ in ("train", "val", "test")}

        def pooled_of(s_):
            with torch.no_grad():
                out_ = [_masked_mean(run_top(mid[s_][i : i + 64].float(), ids_all[s_][i : i + 64]), ids_all[s_][i : i + 64])
                        for i in range(0, len(mid[s_]), 64)]
            return torch.cat(out_)

        params = list(top.parameters()) + list(teacher.head.parameters())
        opt = torch.optim.AdamW(params, lr=args.teacher_lr if not args.quick else 1e-3, weight_decay=1e-2)
        best_t = (best[0], 0, {k: v.clone() for k, v in teacher.state_dict().items()})
        gen = torch.Generator().manual_seed(0)
        for epoch in range(1, args.teacher_epochs + 1):
            top.train()
            for b in torch.randperm(len(mid["train"]), generator=gen).split(32):
                h = run_top(mid["train"][b].float(), ids_all["train"][b])
                loss = torch.nn.functional.cross_entropy(teacher.head(_masked_mean(h, ids_all["train"][b])), yt[b])
                opt.zero_grad()
                loss.backward()
                opt.step()
            top.eval()
            acc = float((teacher.head(pooled_of("val")).argmax(1).numpy() == y["val"]).mean())
            tune_log.append({"epoch": epoch, "val_accuracy": acc, "seconds": round(time.time() - t1, 1)})
            print(f"teacher top-{args.tune_top} epoch {epoch}: val {acc:.4f} ({time.time() - t1:.0f} s)", flush=True)
            if acc > best_t[0]:
                best_t = (acc, epoch, {k: v.clone() for k, v in teacher.state_dict().items()})
        teacher.load_state_dict(best_t[2])
        teacher.eval()
        best = (best_t[0], best[1], None)
        for s_ in ("train", "val", "test"):
            pooled[s_] = pooled_of(s_)
        with torch.no_grad():
            hidden["train"] = torch.cat([run_top(mid["train"][i : i + 64].float(), ids_all["train"][i : i + 64]).half()
                                         for i in range(0, len(mid["train"]), 64)])
    mid.clear()  # the frozen layers' states are no longer needed
    with torch.no_grad():
        t_logits = {s: teacher.head(pooled[s]) for s in pooled}
    t_logp = t_logits["train"].log_softmax(1)
    teacher_acc = float((t_logits["test"].argmax(1).numpy() == y["test"]).mean())
    state = ("all-MiniLM-L6-v2 encoder frozen (tune_layers 0); linear head on the token mean, AdamW full batch" if not args.tune_top else
             f"all-MiniLM-L6-v2, bottom {n_low} layers (and the embeddings) frozen, top {args.tune_top} + head fine-tuned {args.teacher_epochs} "
             f"epochs (AdamW {args.teacher_lr:g}, batch 32) on the cached states of the frozen layers, after the head alone")
    out["teacher"] = {"state": state, "tune_top": args.tune_top, "tune_log": tune_log,
                      "head_steps": best[1], "val_accuracy": best[0], "test_accuracy": teacher_acc,
                      "encode_seconds": round(encode_s, 1), "params": models.param_count(teacher), "size_bytes": models.serialized_bytes(teacher)}
    print(f"teacher: test {teacher_acc:.4f} (head {best[1]} steps, encoding {encode_s:.0f} s)", flush=True)

    # ---------------------------------------------------------------- TF-IDF + logistic regression
    raw = {s: getattr(frames, s)["text"].astype(str).tolist() for s in ("train", "val", "test")}
    best_lr = None
    for c in (1.0, 3.0, 10.0, 30.0):
        vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
        xt = vec.fit_transform(raw["train"])
        lr = LogisticRegression(C=c, max_iter=2000).fit(xt, y["train"])
        acc = float((lr.predict(vec.transform(raw["val"])) == y["val"]).mean())
        if best_lr is None or acc > best_lr[0]:
            best_lr = (acc, c, vec, lr)
    _, c_best, vec, lr = best_lr
    tfidf_acc = float((lr.predict(vec.transform(raw["test"])) == y["test"]).mean())
    vocab_bytes = sum(len(k.encode()) for k in vec.vocabulary_) + 8 * len(vec.vocabulary_) + lr.coef_.size * 8 + lr.intercept_.size * 8
    out["tfidf_lr"] = {"C": c_best, "val_accuracy": best_lr[0], "test_accuracy": tfidf_acc, "features": len(vec.vocabulary_),
                       "params": int(lr.coef_.size + lr.intercept_.size), "size_bytes": int(vocab_bytes),
                       "note": "deterministic given the split (lbfgs): one figure, the same for every seed"}
    print(f"tfidf+lr: test {tfidf_acc:.4f} (C={c_best}, {len(vec.vocabulary_)} n-grams)", flush=True)

    # ---------------------------------------------------------------- tiny students (embbag, textcnn), KD vs scratch
    tiny_specs = {"embbag": ModelSpec(arch="embbag", width=64, depth=1, dropout=0.2), "textcnn": ModelSpec(arch="textcnn", width=64, dropout=0.2)}
    tp = TrainParams(epochs=3 if args.quick else args.bag_epochs, batch_size=64, lr=3e-3, weight_decay=1e-4)
    kd_loss = build_loss(DistillParams(losses={"kd": 1.0}, temperature=2.0, alpha=0.5))
    t_logp_np = t_logp.numpy().astype(np.float32)

    def kd_batches(idx, _epoch):
        return {"x": torch.from_numpy(x["train"][idx]), "y": torch.from_numpy(y["train"][idx]), "t": torch.from_numpy(t_logp_np[idx])}

    def kd_fn(model, b):
        return kd_loss({"student_logits": model(b["x"]), "teacher_logp": b["t"], "y": b["y"]})

    tiny: dict = {}
    tiny_models = {}
    for arch, spec in tiny_specs.items():
        acc = {"student": [], "scratch": []}
        t0 = time.time()
        for seed in range(args.seeds):
            for kind in ("student", "scratch"):
                torch.manual_seed(seed)
                m = models.build(spec, (L,), n_classes)
                batches, loss = (kd_batches, kd_fn) if kind == "student" else (hard_label_batches(x["train"], y["train"]), cross_entropy_loss)
                fit(m, len(y["train"]), batches, loss, (x["val"], y["val"]), tp, seed)
                acc[kind].append(accuracy(m, x["test"], y["test"]))
                if kind == "student" and arch not in tiny_models:
                    tiny_models[arch] = m.eval()
            print(f"{arch} seed {seed}: student {acc['student'][-1]:.4f} scratch {acc['scratch'][-1]:.4f} ({time.time() - t0:.0f} s)", flush=True)
        tiny[arch] = spread(acc) | {"spec": spec.model_dump(), "train": tp.model_dump(), "kd": {"temperature": 2.0, "alpha": 0.5},
                                    "seconds": round(time.time() - t0, 1)}

    # ---------------------------------------------------------------- minilm_layers: DistilBERT init, kd + cos, vs scratch
    # The student starts from the trained teacher's embeddings, layers 0, 2, 4 and head (init_from_teacher);
    # scratch is the pipeline's baseline: the same architecture from the pretrained layers, on hard labels.
    t0 = time.time()
    loss_kc = build_loss(DistillParams(losses={"kd": 1.0, "cos": 1.0}, temperature=2.0, alpha=0.5), ((L, 384), (L, 384)))
    tp_small = TrainParams(epochs=1 if args.quick else args.layers_epochs, batch_size=32, lr=1e-4, weight_decay=1e-2)
    layers = {"student": [], "scratch": []}

    def kc_batches(idx, _epoch):
        return {"x": torch.from_numpy(x["train"][idx]), "y": torch.from_numpy(y["train"][idx]), "t": torch.from_numpy(t_logp_np[idx]),
                "h": hidden["train"][torch.from_numpy(idx)].float()}

    small, small_res = None, None
    for seed in range(args.layers_seeds):
        for kind in ("student", "scratch"):
            torch.manual_seed(seed)
            m = models.build(ModelSpec(arch="minilm_layers"), (L,), n_classes)
            if kind == "student":
                m.init_from_teacher(teacher)
                tap = FeatureTap(m, ["features"])

                def kc_fn(model, b, tap=tap):
                    ctx = {"student_logits": model(b["x"]), "teacher_logp": b["t"], "y": b["y"]}
                    return loss_kc(ctx | {"student_feat": tap.features["features"], "teacher_feat": b["h"], "mask": b["x"] != 0})

                res = fit(m, len(y["train"]), kc_batches, kc_fn, (x["val"], y["val"]), tp_small, seed)
                tap.remove()
            else:
                res = fit(m, len(y["train"]), hard_label_batches(x["train"], y["train"]), cross_entropy_loss, (x["val"], y["val"]), tp_small, seed)
            m.eval()
            layers[kind].append(accuracy(m, x["test"], y["test"], batch=64))
            if small is None:
                small, small_res = m, res
        print(f"minilm_layers seed {seed}: student {layers['student'][-1]:.4f} scratch {layers['scratch'][-1]:.4f} ({time.time() - t0:.0f} s)", flush=True)
    small_acc = layers["student"][0]
    out["minilm_layers"] = {"epochs": tp_small.epochs, "val_accuracy": small_res.best_val_accuracy, "test_accuracy": small_acc,
                            **spread(layers), "losses": {"kd": 1.0, "cos": 1.0}, "history": small_res.history, "seconds": round(time.time() - t0, 1),
                            "params": models.param_count(small), "size_bytes": models.serialized_bytes(small)}

    # ---------------------------------------------------------------- ONNX int8 and latency, side by side
    tmp = Path(tempfile.gettempdir()) / "kd-text-bench"
    tmp.mkdir(parents=True, exist_ok=True)
    onnx = {}
    for name, m in (*tiny_models.items(), ("minilm_layers", small)):
        f = to_onnx(m, L, tmp / f"{name}.onnx")
        q = quantize_int8(f, tmp / f"{name}_int8.onnx")
        sess = OnnxModel(q, threads=args.threads)
        logits = np.concatenate([sess(x["test"][i : i + 256]) for i in range(0, len(x["test"]), 256)])
        onnx[name] = (sess, q.stat().st_size, float((logits.argmax(1) == y["test"]).mean()))

    texts = raw["test"]
    ids_rows = [x["test"][i : i + 1] for i in range(min(len(x["test"]), 200))]
    text_rows = [[t] for t in texts[:200]]
    big = np.resize(x["test"], (256, L))

    def torch_fn(m):
        def fn(ids):
            with torch.inference_mode():
                return m(torch.from_numpy(ids))
        return fn

    rows = {}

    def record(name, acc, params, size, model_fn, e2e_fn, tput_batch, n):
        runs = args.runs // 4 if name == "teacher" else args.runs
        rows[name] = {"test_accuracy": acc, "params": params, "size_bytes": size,
                      "p50_ms_model": p50(model_fn, ids_rows if name != "tfidf_lr" else [vec.transform(r) for r in text_rows], runs),
                      "p50_ms_end_to_end": p50(e2e_fn, text_rows, runs),
                      "throughput_per_s": throughput(model_fn, tput_batch, n)}
        print(name, {k: round(v, 4) if isinstance(v, float) else v for k, v in rows[name].items()}, flush=True)

    def e2e(fn):
        return lambda r: fn(encode(r, L))

    record("teacher", teacher_acc, out["teacher"]["params"], out["teacher"]["size_bytes"], torch_fn(teacher), e2e(torch_fn(teacher)), big[:64], 64)
    record("minilm_layers", small_acc, out["minilm_layers"]["params"], out["minilm_layers"]["size_bytes"], torch_fn(small), e2e(torch_fn(small)), big, 256)
    record("minilm_layers_onnx_int8", onnx["minilm_layers"][2], out["minilm_layers"]["params"], onnx["minilm_layers"][1], onnx["minilm_layers"][0],
           e2e(onnx["minilm_layers"][0]), big, 256)
    for arch, bm in tiny_models.items():
        record(arch, float(tiny[arch]["student_test_accuracy"][0]), models.param_count(bm), models.serialized_bytes(bm), torch_fn(bm),
               e2e(torch_fn(bm)), big, 256)
        record(f"{arch}_onnx_int8", onnx[arch][2], models.param_count(bm), onnx[arch][1], onnx[arch][0], e2e(onnx[arch][0]), big, 256)
    big_text = vec.transform((texts * 2)[:256])
    record("tfidf_lr", tfidf_acc, out["tfidf_lr"]["params"], out["tfidf_lr"]["size_bytes"], lr.predict_proba,
           lambda r: lr.predict_proba(vec.transform(r)), big_text, 256)

    t = rows["teacher"]
    for r in rows.values():
        r["share_of_teacher_accuracy"] = r["test_accuracy"] / teacher_acc
        r["latency_ratio_vs_teacher_model"] = t["p50_ms_model"] / r["p50_ms_model"]
        r["latency_ratio_vs_teacher_end_to_end"] = t["p50_ms_end_to_end"] / r["p50_ms_end_to_end"]
    out |= tiny
    out["latency"] = rows
    out["loadavg_end"] = os.getloadavg()
    out["seconds"] = round(time.time() - t_start, 1)
    print(md_table(["model", "test acc", "share of teacher", "params", "bytes", "p50 ms (model)", "p50 ms (raw text)", "rows/s", "× faster (model)"],
                   [[k, f"{r['test_accuracy']:.4f}", f"{r['share_of_teacher_accuracy']:.3f}", f"{r['params']:,}", f"{r['size_bytes']:,}",
                     f"{r['p50_ms_model']:.3f}", f"{r['p50_ms_end_to_end']:.3f}", f"{r['throughput_per_s']:,.0f}",
                     f"{r['latency_ratio_vs_teacher_model']:.1f}"] for k, r in rows.items()]))
    for arch in tiny:
        print(f"{arch} over {args.seeds} seeds: student {tiny[arch]['student_mean']:.4f} ± {tiny[arch]['student_std']:.4f}, "
              f"scratch {tiny[arch]['scratch_mean']:.4f} ± {tiny[arch]['scratch_std']:.4f}")
    print(f"minilm_layers over {args.layers_seeds} seeds: student {out['minilm_layers']['student_mean']:.4f} ± {out['minilm_layers']['student_std']:.4f}, "
          f"scratch {out['minilm_layers']['scratch_mean']:.4f} ± {out['minilm_layers']['scratch_std']:.4f}")
    print(write_json("text" if not args.tune_top else f"text_tune{args.tune_top}", out, args.quick))


if __name__ == "__main__":
    main()
