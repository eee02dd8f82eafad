"""Pieces shared by the encoder and decoder wrappers of Hugging Face models.

Plain MatMul/Softmax attention whose reshapes use the tensors' runtime sizes (so every ONNX axis
stays dynamic and TensorRT fuses it itself), masks applied with ``Where`` (a masked score is
replaced, never summed with a large negative, so it stays inside the FP16 range however large
the real scores are), and the activations the supported configs name.
"""
from __future__ import annotations

from typing import Callable, Dict

import torch
import torch.nn as nn
import torch.nn.functional as F

from common.errors import ToolkitError

# Replaces masked scores: exp(-1e4 - max) is 0 in fp32 and fp16, and -1e4 is an fp16 number.
MASK_VALUE = -1.0e4

ACTIVATIONS: Dict[str, Callable] = {
    "gelu": F.gelu,  # erf form (BERT)
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),  # GPT-2, GPT-Neo
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,  # Llama
    "swish": F.silu,
}


def activation(name: str, where: str) -> Callable:
    if name not in ACTIVATIONS:
        raise ToolkitError(f"{where}: activation {name!r} is not supported; expected one of "
                           f"{sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(batch, seq, heads * head_dim) -> (batch, heads, seq, head_dim)."""
    return x.view(x.shape[0], x.shape[1], heads, -1).transpose(1, 2)


def heads_from_cache(cache: torch.Tensor, heads: int) -> torch.Tensor:
    """(seq, batch, heads * head_dim) position-major -> (batch, heads, seq, head_dim)."""
    return cache.view(cache.shape[0], cache.shape[1], heads, -1).permute(1, 2, 0, 3)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor,
           scale: float, group: int = 1) -> torch.Tensor:
    """Scaled dot-product attention with grouped-query heads.

    q (batch, heads, q_len, head_dim); k, v (batch, kv_heads, k_len, head_dim) with
    heads = group * kv_heads (group a Python int, so the traced graph has no data-dependent
    branch); allowed: bool, broadcastable to (batch, 1, q_len, k_len).
    -> (batch, q_len, heads * head_dim). Query heads are grouped as (kv_heads, group) and the
    group folded into the query axis, (batch, kv_heads, group * q_len, head_dim), so the cache
    is never repeated in memory and every product stays a plain 4-D MatMul: ONNX Runtime then
    fuses the permutes of the position-major cache into the MatMuls. With a 5-D broadcast
    (unsqueezed K/V) it could not, and a Llama decode step copied the whole past K once per
    layer (per-token time 2.5x from position 10 to 400, against 1.3x for GPT-2).
    """
    batch, q_len, head_dim = q.shape[0], q.shape[2], q.shape[3]
    if group > 1:
        q = q.reshape(batch, k.shape[1], group * q_len, head_dim)  # (b, kv_heads, group*q, hd)
        allowed = allowed.expand(-1, -1, q_len, -1).repeat(1, 1, group, 1)  # (b, 1, group*q, k)
    scores = torch.matmul(q, k.transpose(-2, -1))
    if scale != 1.0:
        scores = scores * scale
    scores = scores.masked_fill(~allowed, MASK_VALUE)
    out = torch.matmul(torch.softmax(scores, dim=-1), v)  # (batch, kv_heads, [group *] q, hd)
    if group > 1:
        out = out.reshape(batch, -1, q_len, head_dim)  # (batch, heads, q_len, head_dim)
    out = out.transpose(1, 2)  # (batch, q_len, heads, head_dim)
    return out.reshape(batch, q_len, -1)


def linear_from_conv1d(conv) -> nn.Linear:
    """GPT-2's ``Conv1D`` (weight (in, out)) as an nn.Linear (weight (out, in)), same values."""
    n_in, n_out = conv.weight.shape
    linear = nn.Linear(n_in, n_out)
    with torch.no_grad():
        linear.weight.copy_(conv.weight.t())
        linear.bias.copy_(conv.bias)
    return linear


def split_linear(linear: nn.Linear, parts: int):
    """An nn.Linear whose outputs are [q | k | v] as ``parts`` nn.Linear modules."""
    n_out = linear.weight.shape[0] // parts
    pieces = []
    for i in range(parts):
        piece = nn.Linear(linear.weight.shape[1], n_out, bias=linear.bias is not None)
        with torch.no_grad():
            piece.weight.copy_(linear.weight[i * n_out:(i + 1) * n_out])
            if linear.bias is not None:
                piece.bias.copy_(linear.bias[i * n_out:(i + 1) * n_out])
        pieces.append(piece)
    return pieces


class RMSNorm(nn.Module):
    """Llama's RMSNorm with Mul instead of Pow (x * x), in fp32 like transformers'."""

    def __init__(self, weight: torch.Tensor, eps: float):
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone())
        self.eps = eps

    def forward(self, x):
        variance = (x * x).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(variance + self.eps))
