"""Export a student to ONNX and to an int8 dynamically quantized ONNX (onnxruntime quantize_dynamic), and
run ONNX graphs (`OnnxModel` on numpy batches, `OnnxModule` as a frozen torch module)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn


def to_onnx(model: nn.Module, n_features: int, path: Path) -> Path:
    """TorchScript-based exporter (dynamo=False): its graph quantizes cleanly; the batch axis stays dynamic.
    Text models (`input_dtype` int64) take token ids: the example input is a row of [CLS]-like ids, no padding."""
    path.parent.mkdir(parents=True, exist_ok=True)
    model.eval()
    dtype = getattr(model, "input_dtype", torch.float32)
    example = torch.zeros(2, n_features) if dtype == torch.float32 else torch.full((2, n_features), 101, dtype=dtype)
    torch.onnx.export(
        model, (example,), str(path), input_names=["x"], output_names=["logits"],
        dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False, opset_version=17,
    )
    return path


def quantize_int8(src: Path, dst: Path) -> Path:
    """Weights to int8, activations quantized on the fly (onnxruntime dynamic quantization)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
    return dst


def cpu_session(path: Path, threads: int = 0):
    """An onnxruntime session on the CPU (`threads` 0: onnxruntime's default), quiet below errors."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = threads
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


class OnnxModel:
    """Runs an ONNX file with onnxruntime on the CPU; called like a model on numpy batches."""

    def __init__(self, path: Path, threads: int = 0):
        self.path = Path(path)
        self.session = cpu_session(path, threads)
        self.dtype = np.int64 if self.session.get_inputs()[0].type == "tensor(int64)" else np.float32  # token ids or features

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"x": np.ascontiguousarray(x, dtype=self.dtype)})[0]

    @property
    def size_bytes(self) -> int:
        return os.path.getsize(self.path)


class OnnxModule(nn.Module):
    """An ONNX graph as a frozen torch module (an imported teacher): inference only, no parameters, no
    code — only the graph runs, in onnxruntime."""

    def __init__(self, path: Path, threads: int = 1):
        super().__init__()
        self.onnx = OnnxModel(path, threads)
        self.path = self.onnx.path
        self.input_name = self.onnx.session.get_inputs()[0].name

    @property
    def size_bytes(self) -> int:
        return self.onnx.size_bytes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        return torch.from_numpy(self.onnx.session.run(None, {self.input_name: x})[0])
