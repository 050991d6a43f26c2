"""Intermediate features taken with forward hooks by module path, so models are never rewritten
(the approach of torchdistill)."""

from __future__ import annotations

import torch
from torch import nn


class FeatureTap:
    """Records the outputs of the named submodules on every forward pass: `tap.features[name]`."""

    def __init__(self, model: nn.Module, names: list[str]):
        self.features: dict[str, torch.Tensor] = {}
        self._handles = []
        known = dict(model.named_modules())
        for name in names:
            if name not in known:
                choices = ", ".join(n for n in known if n)[:400]
                raise ValueError(f"no submodule {name!r} to hook; the model has: {choices}")
            self._handles.append(known[name].register_forward_hook(self._save(name)))

    def _save(self, name: str):
        def hook(_module, _inputs, output):
            self.features[name] = output

        return hook

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
