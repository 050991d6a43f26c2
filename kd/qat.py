"""Quantization-aware distillation: the distilled student fine-tuned with fake int8 quantization under the
same distillation loss, then exported as an int8 ONNX graph whose QuantizeLinear/DequantizeLinear (QDQ) nodes
carry the scales it learned with (Jacob et al. 2018, "Quantization and Training of Neural Networks for
Efficient Integer-Arithmetic-Only Inference"; Krishnamoorthi 2018 for the recipe: fine-tune, then freeze
the ranges).

Tooling: torch's own QAT, FX graph mode (`torch.ao.quantization.quantize_fx.prepare_qat_fx`). In torch 2.13
`torch.ao.quantization` is marked deprecated in favour of torchao, whose PT2E flow (`prepare_qat_pt2e`) is a
separate package and exports through torch.export/dynamo rather than as QDQ from the TorchScript exporter;
the FX flow is still shipped, works, and its FakeQuantize modules export as QDQ with `dynamo=False`, which is
what onnxruntime fuses into integer kernels (QGemm). The deprecation warnings are silenced here only.

The fake-quantized model (`QatStudent`): inputs, the hidden activation and the logits as uint8 (per-tensor,
asymmetric, moving-average min/max), weights as int8 (per output channel, symmetric), biases float (onnxruntime
folds them into the integer GEMM's requantization). `train()`/`eval()` switch the range observers on and off
like BatchNorm statistics, and a step counter kept as a buffer (so checkpoints and resumes carry it) freezes
them after `student.qat.freeze_observers_after` epochs. `to_onnx` exports the graph and stores each weight as
its int8 values (`q`, with `w = scale * (q - zero_point)`), so the file holds int8 weights, not floats.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from kd.config import ModelSpec, QatParams, TrainParams


def qconfig_mapping():
    """uint8 asymmetric activations (0..255, no reduced range) and int8 symmetric per-channel weights."""
    from torch.ao.quantization import (
        FakeQuantize,
        MovingAverageMinMaxObserver,
        QConfig,
        default_per_channel_weight_fake_quant,
    )
    from torch.ao.quantization.qconfig_mapping import get_default_qat_qconfig_mapping

    activation = FakeQuantize.with_args(observer=MovingAverageMinMaxObserver, quant_min=0, quant_max=255, dtype=torch.quint8,
                                        qscheme=torch.per_tensor_affine, reduce_range=False)
    qconfig = QConfig(activation=activation, weight=default_per_channel_weight_fake_quant)
    return get_default_qat_qconfig_mapping("x86", version=0).set_global(qconfig)


class QatStudent(nn.Module):
    """A student with fake quantization (torch FX QAT); called like the student, trained by `kd.training.fit`."""

    def __init__(self, student: nn.Module, q: QatParams, steps_per_epoch: int):
        super().__init__()
        from torch.ao.quantization.quantize_fx import prepare_qat_fx

        if not all(hasattr(student, a) for a in ("input_shape", "reshape", "features", "head")):
            raise ValueError("student.qat: the student is not a kd.models architecture (input_shape, reshape, features, head)")
        # The network after its input reshape: the graph's input is then the first layer's, and is quantized.
        body = copy.deepcopy(nn.Sequential(OrderedDict(features=student.features, head=student.head))).cpu().train()
        self.reshape = tuple(student.reshape)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notice (see the module docstring)
            self.net = prepare_qat_fx(body, qconfig_mapping(), (torch.zeros(2, *self.reshape),))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.q, self.steps_per_epoch = q, steps_per_epoch
        self.freeze_at = q.freeze_observers_after * steps_per_epoch  # 0: never
        self.input_shape = tuple(student.input_shape)
        self._observing: bool | None = None

    def _observe(self, on: bool) -> None:
        if on != self._observing:
            from torch.ao.quantization import disable_observer, enable_observer

            self.net.apply(enable_observer if on else disable_observer)
            self._observing = on

    def train(self, mode: bool = True) -> QatStudent:
        super().train(mode)
        if not mode:
            self._observe(False)  # evaluation never moves the ranges
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self._observe(self.freeze_at == 0 or int(self.steps) < self.freeze_at)
            self.steps += 1
        return self.net(x.reshape(x.shape[0], *self.reshape))

    def fake_quant_enabled(self, on: bool) -> QatStudent:
        """Switch fake quantization itself (tests: with it off, the model computes the float student)."""
        from torch.ao.quantization import disable_fake_quant, enable_fake_quant

        self.net.apply(enable_fake_quant if on else disable_fake_quant)
        return self


def train_params(tp: TrainParams, q: QatParams) -> TrainParams:
    """The fine-tune's settings: the student's optimizer and batch size, the QAT phase's epochs and lr, no early stop."""
    return tp.model_copy(update={"epochs": q.epochs, "lr": q.lr, "patience": 0})


def finetune(student: nn.Module, n_rows: int, batches, loss_fn, val: tuple[np.ndarray, np.ndarray], tp: TrainParams, q: QatParams,
             seed: int, ckpt: Path | None = None, rt=None, on_epoch_end=None):
    """Fine-tune a copy of the distilled `student` with fake quantization, on the same batches and loss that
    distilled it; returns the `QatStudent` (on its best validation epoch, measured fake-quantized) and the fit."""
    from kd.training import fit

    qtp = train_params(tp, q)
    model = QatStudent(student, q, steps_per_epoch=math.ceil(n_rows / qtp.batch_size))
    res = fit(model, n_rows, batches, loss_fn, val, qtp, seed, ckpt, desc="qat", rt=rt, on_epoch_end=on_epoch_end)
    return model.eval(), res


def save(model: QatStudent, spec: ModelSpec, classes: list[str], path: Path) -> None:
    """Like `kd.models.save`, plus what rebuilds the fake-quantized graph (tensors and plain values only)."""
    torch.save({"spec": spec.model_dump(), "input_shape": list(model.input_shape), "classes": list(classes), "qat": model.q.model_dump(),
                "steps_per_epoch": model.steps_per_epoch, "state_dict": model.state_dict()}, path)


def load(path: Path) -> tuple[QatStudent, dict]:
    """A `save`d QAT student, loaded with `torch.load(weights_only=True)` (`kd.models.safe_load`)."""
    from kd import models

    saved = models.safe_load(path)
    if not isinstance(saved, dict) or not {"spec", "input_shape", "classes", "qat", "steps_per_epoch", "state_dict"} <= set(saved):
        raise ValueError(f"{path}: not a kd QAT student checkpoint")
    spec = ModelSpec.model_validate({k: v for k, v in saved["spec"].items() if k in ModelSpec.model_fields})
    student = models.build(spec, tuple(saved["input_shape"]), len(saved["classes"]))
    model = QatStudent(student, QatParams.model_validate(saved["qat"]), saved["steps_per_epoch"])
    model.load_state_dict(saved["state_dict"])
    return model.eval(), saved


def to_onnx(model: QatStudent, path: Path) -> Path:
    """The fake-quantized student as int8 ONNX (QDQ, opset 17, the TorchScript exporter as `kd.export.to_onnx`):
    every FakeQuantize becomes QuantizeLinear -> DequantizeLinear with its scale and zero point; then each
    weight's QuantizeLinear is folded into an int8 initializer (`fold_weights`). Input `x`, output `logits`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    model.eval()
    n_features = math.prod(model.input_shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(2, n_features),), str(path), input_names=["x"], output_names=["logits"],
                          dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False, opset_version=17)
    import onnx

    graph = onnx.load(str(path))
    fold_weights(graph)
    onnx.checker.check_model(graph)
    onnx.save(graph, str(path))
    return path


def fold_weights(model) -> int:
    """Replace QuantizeLinear(float initializer) by the int8 initializer it computes, in place; returns how many.

    q = clip(round_half_even(w * (1 / scale)) + zero_point) as torch's fake quantization computes it (a float32
    product with the reciprocal, not a division), so DequantizeLinear(q) is bit for bit the weight the
    fake-quantized model trained with."""
    from onnx import numpy_helper

    g = model.graph
    for node in [n for n in g.node if n.op_type == "Identity" and n.input[0] in {t.name for t in g.initializer}]:
        # the exporter shares equal constants (zero points) through Identity nodes: make each one an initializer
        source = next(t for t in g.initializer if t.name == node.input[0])
        g.initializer.append(numpy_helper.from_array(numpy_helper.to_array(source), node.output[0]))
        g.node.remove(node)
    inits = {t.name: t for t in g.initializer}
    consumers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    folded = 0
    for node in list(g.node):
        if node.op_type != "QuantizeLinear" or not all(i in inits for i in node.input[:3]) or len(node.input) < 3:
            continue
        w, scale, zp = (numpy_helper.to_array(inits[i]) for i in node.input[:3])
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        shape = [1] * w.ndim
        if scale.size > 1:
            shape[axis] = scale.size
        inv = (np.float32(1.0) / scale.astype(np.float32)).reshape(shape)
        info = np.iinfo(zp.dtype)
        q = np.clip(np.rint(w.astype(np.float32) * inv) + zp.reshape(shape).astype(np.int32), info.min, info.max).astype(zp.dtype)
        name = node.input[0] + ".int8"
        g.initializer.append(numpy_helper.from_array(q, name))
        for c in consumers.get(node.output[0], []):
            c.input[:] = [name if i == node.output[0] else i for i in c.input]
        g.node.remove(node)
        if len(consumers[node.input[0]]) == 1:
            g.initializer.remove(inits[node.input[0]])
        folded += 1
    return folded
