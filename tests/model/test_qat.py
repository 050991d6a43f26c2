"""Quantization-aware distillation (kd.qat): the int8 ONNX graph computes what the fake-quantized student
computes, its weights are int8 values on the grid the student trained on, fake quantization changes the
training while the loss stays the distillation loss, and a kill during the fine-tune resumes."""

import copy
import json
from collections import Counter
from unittest import mock

import numpy as np
import onnx
import pandas as pd
import pytest
import torch
from onnx import numpy_helper
from tiny_teacher import cache, trained_teacher

import kd.training
from kd import losses, qat
from kd.bundle import write_student_bundle
from kd.distill import distill, distill_batches, distill_one, distill_qat
from kd.export import OnnxModel, cpu_session
from kd.predictor import Predictor
from kd.training import StopTraining, fit

BASE = {
    "checkpoint_every": 0,  # a checkpoint every epoch: the resume test kills after a chosen epoch
    "data": {"source": "synthetic", "synthetic": {"n_samples": 600, "n_features": 8, "n_classes": 4, "class_sep": 1.2, "n_transfer": 0}},
    "teacher": {"model": {"arch": "mlp", "width": 32, "depth": 1}, "train": {"epochs": 6}},
    "student": {"model": {"arch": "mlp", "width": 8, "depth": 1}, "train": {"epochs": 4},
                "qat": {"enabled": True, "epochs": 3, "lr": 1e-3, "freeze_observers_after": 2}},
    "soft_targets": {"dtype": "float32"},
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("qat")
    p, prep = trained_teacher(root, BASE)
    model, targets = cache(root, p, prep)
    student, _ = distill_one(prep, p.student.model, model, targets, p, seed=0, ckpt=None)
    qmodel, _ = distill_qat(prep, student, model, targets, p, seed=0, ckpt=None)
    qmodel.eval()
    path = qat.to_onnx(qmodel, root / "qat.onnx")
    return root, p, prep, model, targets, student, qmodel, path


def _fq(module):
    """A fake-quantize module's scale and zero point as numpy."""
    return module.scale.detach().numpy().astype(np.float64), module.zero_point.detach().numpy()


def _weights(qmodel):
    """Each Linear of the fake-quantized mlp (depth 1: features.0, head) with its weight as fake quantization makes it."""
    net = qmodel.net
    layers = [net.get_submodule("features.0"), net.head]
    return [(lin, lin.weight_fake_quant(lin.weight).detach()) for lin in layers]


def test_int8_onnx_computes_the_fake_quantized_student_within_a_step_bound(setup):
    """Quantized values can land one step apart (a rounding tie computed as x * (1/s) in torch and x / s in
    onnxruntime; float vs integer accumulation). Propagated through the mlp, one step at the input (s_in), at
    the hidden activation (s_h) and at the logits (s_out) bounds the logits' difference by
    s_out + |W2|_inf * (s_h + |W1|_inf * s_in), |W|_inf the largest row sum of |weights| (dequantized)."""
    _, _, prep, _, _, _, qmodel, path = setup
    x = prep.x["test"]
    with torch.no_grad():
        fake = qmodel(torch.from_numpy(x)).numpy()
    int8 = OnnxModel(path)(x)
    s_in = _fq(qmodel.net.activation_post_process_0)[0].item()
    s_h = _fq(qmodel.net.activation_post_process_1)[0].item()
    s_out = _fq(qmodel.net.activation_post_process_2)[0].item()
    (_, w1), (_, w2) = _weights(qmodel)
    row_sum = lambda w: float(w.abs().sum(1).max())  # noqa: E731
    bound = s_out + row_sum(w2) * (s_h + row_sum(w1) * s_in)
    print(f"max |onnx - fake quant| = {np.abs(int8 - fake).max():.4g}, bound {bound:.4g}, output step {s_out:.4g}")
    assert np.abs(int8 - fake).max() <= bound + 1e-5
    # and the logits sit on the output grid: s_out * (q - zp) with integer q
    q = int8 / s_out + _fq(qmodel.net.activation_post_process_2)[1].item()
    np.testing.assert_allclose(q, np.rint(q), atol=1e-3)


def test_qdq_graph_has_int8_weights_on_the_training_grid(setup):
    """Each weight is stored as int8 q with DequantizeLinear(q) = scale * (q - zp) equal, bit for bit, to the
    weight the fake-quantized student computed with; activations are quantized at the input, the hidden
    layer and the logits (3 QuantizeLinear), weights dequantized per output channel (2 more DequantizeLinear)."""
    _, _, _, _, _, _, qmodel, path = setup
    g = onnx.load(str(path)).graph
    ops = Counter(n.op_type for n in g.node)
    assert ops["QuantizeLinear"] == 3 and ops["DequantizeLinear"] == 5
    inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    assert not [n for n, a in inits.items() if a.dtype == np.float32 and a.ndim == 2], "a float weight matrix is left in the file"
    acts = [qmodel.net.activation_post_process_0, qmodel.net.activation_post_process_1, qmodel.net.activation_post_process_2]
    for node, fq in zip([n for n in g.node if n.op_type == "QuantizeLinear"], acts, strict=True):  # input, hidden, logits in order
        scale, zp = _fq(fq)
        np.testing.assert_array_equal(inits[node.input[1]], scale.astype(np.float32))
        assert inits[node.input[2]].dtype == np.uint8 and (inits[node.input[2]].astype(np.int32) == zp).all()
    by_input = {n.input[0]: n for n in g.node if n.op_type == "DequantizeLinear"}
    for name, (lin, w_fq) in zip(("features.0", "head"), _weights(qmodel), strict=True):
        dq = by_input[f"net.{name}.weight.int8"]
        q, scale, zp = (inits[i] for i in dq.input)
        assert q.dtype == np.int8 and q.shape == tuple(lin.weight.shape) and (zp == 0).all()
        s_t, zp_t = _fq(lin.weight_fake_quant)
        np.testing.assert_array_equal(scale, s_t.astype(np.float32))
        np.testing.assert_array_equal(zp, zp_t)
        dequantized = scale.reshape(-1, 1) * (q.astype(np.float32) - zp.reshape(-1, 1).astype(np.float32))
        np.testing.assert_array_equal(dequantized, w_fq.numpy())


def test_onnxruntime_runs_the_qdq_graph_with_integer_kernels(setup, tmp_path):
    """onnxruntime fuses DequantizeLinear -> Gemm -> QuantizeLinear into its integer GEMM."""
    import onnxruntime as ort

    *_, path = setup
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    opts.log_severity_level = 3
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    ops = Counter(n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node)
    assert ops["QGemm"] == 2 and ops["Gemm"] == 0


def _control(prep, student, teacher_model, targets, p, seed=0):
    """A plain fine-tune of a float copy: the QAT phase's settings, the distillation loss and batches."""
    model = copy.deepcopy(student)
    loss = losses.build(p.distill, None, n_rows=len(prep.distill_inputs()))

    def loss_fn(m, b):
        return loss({"student_logits": m(b["x"]), "teacher_logp": b["t"], "y": b["y"], "idx": b["idx"]})

    res = fit(model, len(prep.distill_inputs()), distill_batches(prep, teacher_model, targets, p, seed), loss_fn,
              (prep.x["val"], prep.y["val"]), qat.train_params(p.student.train, p.student.qat), seed)
    return model, res


def test_fake_quantization_changes_the_training_and_the_loss_stays_the_distillation_loss(setup):
    """With fake quantization switched off, the QAT phase is exactly a float fine-tune under the distillation
    loss (same weights as the control); switched on, the weights it learns differ from that control."""
    _, p, prep, model, targets, student, qmodel, _ = setup
    control, cres = _control(prep, student, model, targets, p)
    real_init = qat.QatStudent.__init__

    def without_fake_quant(self, *a, **kw):
        real_init(self, *a, **kw)
        self.fake_quant_enabled(False)

    with mock.patch.object(qat.QatStudent, "__init__", without_fake_quant):
        off, info = distill_qat(prep, student, model, targets, p, seed=0, ckpt=None)
    assert set(info["history"][0]) == set(cres.history[0]) == {"epoch", "val_accuracy", "kd"}
    for name, lin in (("features.0", off.net.get_submodule("features.0")), ("head", off.net.head)):
        torch.testing.assert_close(lin.weight, control.state_dict()[f"{name}.weight"], rtol=1e-5, atol=1e-6)
    differs = [not torch.allclose(lin.weight, control.state_dict()[f"{name}.weight"], atol=1e-4)
               for name, lin in (("features.0", qmodel.net.get_submodule("features.0")), ("head", qmodel.net.head))]
    assert all(differs)


def test_observers_freeze_at_the_configured_epoch_and_evaluation_never_moves_them(setup):
    _, p, prep, model, targets, student, _, _ = setup
    history = []

    def record(epoch):
        history.append(q_holder[0].net.activation_post_process_1.scale.clone())

    q_holder = []
    real_init = qat.QatStudent.__init__

    def keep(self, *a, **kw):
        real_init(self, *a, **kw)
        q_holder.append(self)

    with mock.patch.object(qat.QatStudent, "__init__", keep):
        distill_qat(prep, student, model, targets, p, seed=0, ckpt=None, on_epoch_end=record)
    # epochs 1, 2 observe (freeze_observers_after: 2); epoch 3 trains against the frozen scales
    assert not torch.equal(history[0], history[1]) and torch.equal(history[1], history[2])
    fresh = qat.QatStudent(student, p.student.qat, steps_per_epoch=10).train()
    x = torch.from_numpy(prep.x["val"])
    fresh(x)
    scale = fresh.net.activation_post_process_0.scale.clone()
    fresh.eval()(x * 100)
    assert torch.equal(fresh.net.activation_post_process_0.scale, scale)
    fresh.train()(x * 100)
    assert fresh.net.activation_post_process_0.scale > scale


def _distill_run(setup, out, ckpt_dir, stop_at=None):
    root, p, prep, *_ = setup

    def stop(epoch):
        if epoch == stop_at:
            raise StopTraining

    real_fit = kd.training.fit

    def fit_with_stop(*a, **kw):
        if kw.get("desc") == "qat" and stop_at:
            kw["on_epoch_end"] = stop
        return real_fit(*a, **kw)

    with mock.patch.object(kd.training, "fit", fit_with_stop):
        return distill(prep, root / "teacher", root / "cache", p, out, ckpt_dir)


def test_distill_stage_writes_the_qat_student_and_a_kill_during_qat_resumes(setup, tmp_path):
    full = _distill_run(setup, tmp_path / "full", tmp_path / "ck-full")
    with pytest.raises(StopTraining):
        _distill_run(setup, tmp_path / "resumed", tmp_path / "ck", stop_at=2)
    # the student's own checkpoint is kept until the fine-tune ends, so the resume does not retrain it
    assert sorted(f.name.split("-")[1] for f in (tmp_path / "ck").glob("distill-*.pt")) == ["0", "qat"]
    resumed = _distill_run(setup, tmp_path / "resumed", tmp_path / "ck")
    assert resumed["qat"]["resumed_from_epoch"] == 2 and full["qat"]["resumed_from_epoch"] == 0
    assert resumed["qat"]["loss"] == ["kd"] and not list((tmp_path / "ck").glob("distill-*.pt"))
    a, b = (torch.load(tmp_path / d / "student" / "qat.pt", weights_only=True)["state_dict"] for d in ("full", "resumed"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    loaded, saved = qat.load(tmp_path / "full" / "student" / "qat.pt")
    assert saved["qat"]["epochs"] == 3 and int(loaded.steps) > 0


def test_bundle_serves_the_qat_int8_graph_and_keeps_the_ptq_one(setup, tmp_path):
    root, p, prep, *_ = setup
    distill(prep, root / "teacher", root / "cache", p, tmp_path / "models", None)
    ref = pd.DataFrame({"a": [1.0]})
    out = write_student_bundle(tmp_path / "bundle", tmp_path / "models" / "student" / "model.pt", prep, True, ref, {},
                               tmp_path / "models" / "student" / "qat.pt")
    assert json.loads((out / "predictor.json").read_text())["int8"] == "qat"
    served = Counter(n.op_type for n in onnx.load(str(out / "student_int8.onnx")).graph.node)
    ptq = Counter(n.op_type for n in onnx.load(str(out / "student_int8_ptq.onnx")).graph.node)
    assert served["QuantizeLinear"] == 3 and ptq["QuantizeLinear"] == 0 and ptq["DynamicQuantizeLinear"] >= 1
    logits = OnnxModel(qat.to_onnx(qat.load(tmp_path / "models" / "student" / "qat.pt")[0], tmp_path / "again.onnx"))(prep.x["test"])
    z = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(Predictor(out, "onnx_int8").proba(prep.x["test"]), z / z.sum(1, keepdims=True), rtol=1e-5)
    edge_inputs = [i.name for i in cpu_session(out / "edge.onnx").get_inputs()]
    assert edge_inputs == prep.preprocessor.numeric + list(prep.preprocessor.categories)
