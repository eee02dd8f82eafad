"""LayerNorm for TensorRT 8.5: the export-time swap of every nn.LayerNorm for its decomposition.

TensorRT 8.5's ONNX parser (JetPack 5.1) has no importer for ``LayerNormalization`` (it arrived
in 8.6), so an export for it writes each LayerNorm in operators that parser imports:

    mean = ReduceMean(x)               # axes as an attribute at opset 17
    d    = Sub(x, mean)
    var  = ReduceMean(Mul(d, d))       # d * d, not Pow: the pattern export.norm_graph finds
    y    = Div(d, Sqrt(Add(var, eps)))
    out  = Add(Mul(y, weight), bias)   # when elementwise_affine (bias when it has one)

The swap happens on the module being traced and is undone afterwards (``decomposed``), so
training code and the model the parity check compares against keep nn.LayerNorm: parity then
measures the decomposition itself against PyTorch's fused LayerNorm. The replacement shares the
original's weight, bias and eps (no copies). ``x - mean`` before squaring (not E[x^2]-E[x]^2)
is the numerically stable form; its square still overflows FP16 once |x - mean| > 256, which
is why the sidecar lists these nodes in ``keep_fp32`` for the engine build.
"""
from __future__ import annotations

import contextlib
from typing import Dict, Iterator, List, Tuple

import torch
import torch.nn as nn

from common.errors import ToolkitError
from export.norm_graph import layernorm_style


class DecomposedLayerNorm(nn.Module):
    """nn.LayerNorm's forward in ReduceMean/Sub/Mul/Sqrt/Div/Add, on the original's parameters."""

    def __init__(self, norm: nn.LayerNorm):
        super().__init__()
        self.dims = tuple(range(-len(norm.normalized_shape), 0))  # the normalized trailing axes
        self.eps = float(norm.eps)
        # The original's Parameters (or None), registered here too: the same tensors, not copies.
        self.weight = norm.weight
        self.bias = norm.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=self.dims, keepdim=True)
        centred = x - mean
        variance = (centred * centred).mean(dim=self.dims, keepdim=True)
        y = centred / torch.sqrt(variance + self.eps)
        if self.weight is not None:
            y = y * self.weight
        if self.bias is not None:
            y = y + self.bias
        return y


@contextlib.contextmanager
def decomposed(module: nn.Module, target: str) -> Iterator[int]:
    """Within the block, every nn.LayerNorm under ``module`` is a DecomposedLayerNorm when
    ``target`` is "8.5" (nothing changes for "8.6"); yields how many were swapped. The original
    modules are put back on exit, even after an error."""
    swaps = _swap_layernorms(module) if layernorm_style(target) == "decomposed" else []
    try:
        yield len({id(original) for _, _, original in swaps})
    finally:
        for parent, name, original in swaps:
            setattr(parent, name, original)


def _swap_layernorms(module: nn.Module) -> List[Tuple[nn.Module, str, nn.LayerNorm]]:
    """Replace each nn.LayerNorm child of every submodule; returns (parent, name, original).

    Every parent is visited, so a LayerNorm shared by two parents is replaced in both (by one
    replacement, so it still is one module)."""
    replacements: Dict[int, DecomposedLayerNorm] = {}
    swaps = []
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, nn.LayerNorm):
                continue
            if type(child).forward is not nn.LayerNorm.forward:
                raise ToolkitError(f"{type(child).__name__} at {name!r} overrides nn.LayerNorm's "
                                   "forward: its decomposition for TensorRT 8.5 is not known")
            if id(child) not in replacements:
                replacements[id(child)] = DecomposedLayerNorm(child)
            setattr(parent, name, replacements[id(child)])
            swaps.append((parent, name, child))
    return swaps
