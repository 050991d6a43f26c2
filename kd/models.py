"""Architectures by name (`mlp`, `cnn1d`, `cnn2d`, `resnet`; for text `minilm`, `minilm_layers`, `embbag`, `textcnn` in
`kd.transformer`) or a user factory `package.module:factory`.

Every model takes flat inputs `(batch, n_features)` (float; int64 token ids for text models, which say so
with `input_dtype`) and reshapes internally, so data, cache, ONNX
export and serving share one input format. Each built-in exposes a `features` submodule (the
penultimate representation) and a `head`; feature losses hook `features` by default.
"""

from __future__ import annotations

import importlib
import io
import math

import torch
from torch import nn

from kd.config import ModelSpec
from kd.config.train import TEXT_ARCHS


class _Net(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], reshape: tuple[int, ...], features: nn.Module, dim: int, n_classes: int):
        super().__init__()
        self.input_shape = tuple(input_shape)
        self.reshape = reshape
        self.features = features
        self.head = nn.Linear(dim, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x.reshape(x.shape[0], *self.reshape)))


def mlp(input_shape, n_classes: int, width: int = 64, depth: int = 2, dropout: float = 0.0) -> nn.Module:
    n_in = math.prod(input_shape)
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Linear(n_in if i == 0 else width, width), nn.ReLU()]
        if dropout:
            layers.append(nn.Dropout(dropout))
    return _Net(input_shape, (n_in,), nn.Sequential(*layers), width, n_classes)


def cnn1d(input_shape, n_classes: int, width: int = 32, depth: int = 2, dropout: float = 0.0) -> nn.Module:
    """Features as a 1-channel sequence: useful for ordered tabular or signal inputs."""
    n_in = math.prod(input_shape)
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Conv1d(1 if i == 0 else width, width, 3, padding=1), nn.BatchNorm1d(width), nn.ReLU()]
    layers += [nn.AdaptiveAvgPool1d(4), nn.Flatten()]
    if dropout:
        layers.append(nn.Dropout(dropout))
    return _Net(input_shape, (1, n_in), nn.Sequential(*layers), width * 4, n_classes)


def _image_shape(input_shape, arch: str) -> tuple[int, int, int]:
    if len(input_shape) != 3:
        raise ValueError(f"architecture {arch!r} needs image inputs (C, H, W); this data set's input shape is {tuple(input_shape)} — use mlp or cnn1d")
    return tuple(input_shape)  # type: ignore[return-value]


def cnn2d(input_shape, n_classes: int, width: int = 32, depth: int = 2, dropout: float = 0.0) -> nn.Module:
    c, h, w = _image_shape(input_shape, "cnn2d")
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Conv2d(c if i == 0 else width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
    layers += [nn.AdaptiveAvgPool2d(2), nn.Flatten()]
    if dropout:
        layers.append(nn.Dropout(dropout))
    return _Net(input_shape, (c, h, w), nn.Sequential(*layers), width * 4, n_classes)


class _Block(nn.Module):
    """A basic residual block (He et al. 2016)."""

    def __init__(self, width: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
        )

    def forward(self, x):
        return torch.relu(x + self.body(x))


def resnet(input_shape, n_classes: int, width: int = 32, depth: int = 2, dropout: float = 0.0) -> nn.Module:
    c, h, w = _image_shape(input_shape, "resnet")
    layers: list[nn.Module] = [nn.Conv2d(c, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
    layers += [_Block(width) for _ in range(depth)]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    if dropout:
        layers.append(nn.Dropout(dropout))
    return _Net(input_shape, (c, h, w), nn.Sequential(*layers), width, n_classes)


ARCHITECTURES = {"mlp": mlp, "cnn1d": cnn1d, "cnn2d": cnn2d, "resnet": resnet}


def build(spec: ModelSpec, input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    """Build `spec` for inputs of `input_shape`; user factories get the same keyword arguments."""
    kwargs = dict(width=spec.width, depth=spec.depth, dropout=spec.dropout)
    if spec.arch in TEXT_ARCHS:  # token-id models (kd.transformer), imported only when used
        from kd.transformer import TEXT_ARCHITECTURES

        return TEXT_ARCHITECTURES[spec.arch](tuple(input_shape), n_classes, **kwargs, layers=spec.layers, tune_layers=spec.tune_layers)
    if spec.arch in ARCHITECTURES:
        return ARCHITECTURES[spec.arch](tuple(input_shape), n_classes, **kwargs)
    module_name, _, attr = spec.arch.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"architecture {spec.arch!r}: cannot import {attr!r} from {module_name!r} ({err})") from None
    model = factory(input_shape=tuple(input_shape), n_classes=n_classes, **kwargs)
    if not isinstance(model, nn.Module):
        raise ValueError(f"architecture {spec.arch!r}: the factory returned {type(model).__name__}, expected a torch.nn.Module")
    return model


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def serialized_bytes(model: nn.Module) -> int:
    """Bytes of the model's state_dict as `torch.save` writes it."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getbuffer().nbytes


def state_hash(state_dicts: list[dict]) -> str:
    """Content hash of model weights (the teacher part of the soft-target cache key)."""
    import hashlib

    h = hashlib.sha256()
    for sd in state_dicts:
        for k in sorted(sd):
            t = sd[k].detach().cpu().contiguous()
            h.update(k.encode() + str(t.dtype).encode() + str(tuple(t.shape)).encode())
            h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()[:16]


def save(model: nn.Module, spec: ModelSpec, input_shape: tuple[int, ...], classes: list[str], path) -> None:
    """A self-describing checkpoint: everything `load` needs to rebuild the model."""
    torch.save({"spec": spec.model_dump(), "input_shape": list(input_shape), "classes": list(classes), "state_dict": model.state_dict()}, path)


class UnsafeFileError(ValueError):
    """A file that would run code to load (a pickled object, not plain weights): refused."""


def safe_load(path) -> dict:
    """`torch.load(weights_only=True)`: tensors, numbers, strings and containers only. A file that needs
    arbitrary unpickling (a pickled module, a crafted payload) is refused before anything of it runs."""
    import pickle

    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UnsafeFileError(f"{path}: refused to load: not a plain weights file, loading it would run code ({first[:160]})") from None


def load(path) -> tuple[nn.Module, dict]:
    saved = safe_load(path)
    if not isinstance(saved, dict) or not {"spec", "input_shape", "classes", "state_dict"} <= set(saved):
        raise ValueError(f"{path}: not a kd model checkpoint (expected spec, input_shape, classes, state_dict)")
    spec = ModelSpec.model_validate({k: v for k, v in saved["spec"].items() if k in ModelSpec.model_fields})
    model = build(spec, tuple(saved["input_shape"]), len(saved["classes"]))
    model.load_state_dict(saved["state_dict"])
    return model.eval(), saved
