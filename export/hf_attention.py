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


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor,
           scale: float) -> torch.Tensor:
    """Scaled dot-product attention of an encoder: q, k, v (batch, heads, seq, head_dim);
    allowed: bool, broadcastable to (batch, 1, q_len, k_len). -> (batch, q_len, heads *
    head_dim). (Decoders attend over their cache with ``attend_cache``.)"""
    batch, q_len = q.shape[0], q.shape[2]
    scores = torch.matmul(q, k.transpose(-2, -1))
    if scale != 1.0:
        scores = scores * scale
    scores = scores.masked_fill(~allowed, MASK_VALUE)
    out = torch.matmul(torch.softmax(scores, dim=-1), v)  # (batch, heads, q_len, head_dim)
    return out.transpose(1, 2).reshape(batch, q_len, -1)


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
    """Llama's RMSNorm in fp32, as transformers writes it (``pow(2)``, ``rsqrt``): that is the
    pattern ONNX Runtime fuses into one SimplifiedLayerNormalization (``x * x`` is not), and
    TensorRT parses either. x**2 overflows FP16 once |x| > 256 in both spellings."""

    def __init__(self, weight: torch.Tensor, eps: float):
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone())
        self.eps = eps

    def forward(self, x):
        variance = x.pow(2).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(variance + self.eps))


def fused_projection(q: nn.Linear, k: nn.Linear, v: nn.Linear, scale: float) -> nn.Linear:
    """One nn.Linear whose outputs are [q | k | v], the attention scale folded into q's rows.

    One MatMul per layer instead of three and no scale Mul after the scores. TensorRT fuses the
    same way on its own; ONNX Runtime's CPU provider runs every node it is given, and for a
    small decoder at batch 1 the per-node cost is most of a step, so fewer nodes is faster.
    (Folding rotate_half into extra rows of this weight saved two nodes a layer but read 40%
    more projection weights per token, which measured slower than one Gather.)
    """
    weights = [q.weight * scale, k.weight, v.weight]
    biases = [_bias(q) * scale, _bias(k), _bias(v)]
    has_bias = any(m.bias is not None for m in (q, k, v))
    fused = nn.Linear(q.weight.shape[1], sum(w.shape[0] for w in weights), bias=has_bias)
    with torch.no_grad():
        fused.weight.copy_(torch.cat(weights, dim=0))
        if has_bias:
            fused.bias.copy_(torch.cat(biases, dim=0))
    return fused


def packed_projection(qkv: nn.Linear, q_dim: int, scale: float) -> nn.Linear:
    """A copy of an already fused [q | k | v] nn.Linear (Phi-3's ``qkv_proj``) with the
    attention scale folded into its first ``q_dim`` rows, as ``fused_projection`` does."""
    fused = nn.Linear(qkv.weight.shape[1], qkv.weight.shape[0], bias=qkv.bias is not None)
    with torch.no_grad():
        fused.weight.copy_(qkv.weight)
        fused.weight[:q_dim] *= scale
        if qkv.bias is not None:
            fused.bias.copy_(qkv.bias)
            fused.bias[:q_dim] *= scale
    return fused


def _bias(linear: nn.Linear) -> torch.Tensor:
    if linear.bias is not None:
        return linear.bias.detach()
    return torch.zeros(linear.weight.shape[0], dtype=linear.weight.dtype)


def attend_cache(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                 blocked: torch.Tensor, kv_heads: int, group: int,
                 head_dim: int) -> torch.Tensor:
    """Attention of new queries over the position-major cache, scale already in q.

    q (batch, new, heads * head_dim), heads = kv_heads * group; keys, values
    (total, batch, kv_heads * head_dim) position-major; blocked bool (batch, 1, group * new,
    total), True where a key is hidden, already repeated over the group (made once, not per
    layer). -> (batch, new, heads * head_dim).
    The query group is folded into the query axis, (batch, kv_heads, group * new, head_dim), so
    the cache is never repeated and every product is a 4-D MatMul into which ONNX Runtime folds
    the cache's permutes. Each reshape takes its dynamic sizes from its own input at the same
    axis, which ONNX Runtime's optimizer turns into a constant shape. Without a group (plain
    multi-head attention) the query needs one reshape and one transpose, not three nodes.
    """
    k = keys.view(keys.shape[0], keys.shape[1], kv_heads, head_dim).permute(1, 2, 3, 0)
    v = values.view(values.shape[0], values.shape[1], kv_heads, head_dim).permute(1, 2, 0, 3)
    if group == 1:
        qh = q.view(q.shape[0], q.shape[1], kv_heads, head_dim).transpose(1, 2)
    else:
        qh = q.view(q.shape[0], q.shape[1], kv_heads, group, head_dim).permute(0, 2, 3, 1, 4)
        qh = qh.reshape(qh.shape[0], qh.shape[1], -1, head_dim)  # (b, kv_heads, group*new, hd)
    scores = torch.matmul(qh, k).masked_fill(blocked, MASK_VALUE)  # (b, kvh, g*new, total)
    out = torch.matmul(torch.softmax(scores, dim=-1), v)  # (batch, kv_heads, group*new, hd)
    if group == 1:
        out = out.transpose(1, 2)  # (batch, new, heads, head_dim)
    else:
        out = out.view(out.shape[0], out.shape[1], group, -1, head_dim).permute(0, 3, 1, 2, 4)
    return out.reshape(out.shape[0], out.shape[1], -1)  # (batch, new, heads * head_dim)
