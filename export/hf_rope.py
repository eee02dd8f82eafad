"""Rotary position embeddings of Hugging Face decoders, as the exported graph computes them.

The graph computes ``cos(position * inv_freq) * attention_scaling`` (and sin) from the
``position_ids`` input with one fixed ``inv_freq`` vector: no table that grows with the
context. That is exact for every rope type whose frequencies do not depend on the sequence
length, and for the length-dependent ones as long as the exported context stays where
transformers keeps their frequencies fixed:

- default, linear, llama3, yarn: ``inv_freq`` and ``attention_scaling`` are computed once at
  init (transformers ``modeling_rope_utils._compute_*_parameters``), whatever the length.
- dynamic (NTK): ``dynamic_rope_update`` recomputes ``inv_freq`` only when ``max(position_ids)
  + 1`` exceeds ``max_position_embeddings``; ``_compute_dynamic_ntk_parameters`` clamps
  ``seq_len`` up to ``max_position_embeddings``, where its base factor is exactly 1. So within a
  context <= max_position_embeddings the scaling is inactive and the init frequencies (the
  default ones) are what transformers uses.
- longrope (Phi-3 128k, Phi-3.5): the short factors up to ``original_max_position_embeddings``,
  the long ones beyond; the graph holds the short ones, so the context must stay within.

Anything else (and partial rotary, which leaves part of each head unrotated and unscaled) is
refused with one line rather than exported with different numbers.
"""
from __future__ import annotations

from typing import Tuple

import torch

from common.errors import ToolkitError

STATIC_ROPE_TYPES = ("default", "linear", "llama3", "yarn")  # inv_freq fixed, whatever the length
LENGTH_BOUND_ROPE_TYPES = ("dynamic", "longrope")  # fixed only within a bound on the context
ROPE_TYPES = STATIC_ROPE_TYPES + LENGTH_BOUND_ROPE_TYPES


def rope_parameters(cfg) -> dict:
    """The config's rope dict (transformers 5 ``rope_parameters``, 4.x ``rope_scaling``)."""
    return dict(getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {})


def rope_type(cfg) -> str:
    rope = rope_parameters(cfg)
    return str(rope.get("rope_type", rope.get("type", "default")))


def rotary_frequencies(cfg, rotary, max_seq_len: int) -> Tuple[torch.Tensor, float]:
    """(inv_freq (head_dim / 2,) fp32, attention_scaling) the graph uses for a context of
    ``max_seq_len`` positions, from the model's rotary module ``rotary``; refuses what the
    fixed-frequency graph could not match."""
    family, kind = cfg.model_type, rope_type(cfg)
    if kind not in ROPE_TYPES:
        raise ToolkitError(f"{family} rope_type {kind!r} is not supported; expected one of "
                           f"{list(ROPE_TYPES)}")
    partial = float(rope_parameters(cfg).get("partial_rotary_factor",
                                             getattr(cfg, "partial_rotary_factor", 1.0)) or 1.0)
    if partial != 1.0:
        raise ToolkitError(f"{family} partial_rotary_factor {partial} is not supported; "
                           "expected 1.0 (rotary over the whole head)")
    # The frequencies made at init: a forward past the bound may have replaced inv_freq.
    inv_freq = getattr(rotary, "original_inv_freq", rotary.inv_freq)
    if kind == "dynamic":
        bound = int(cfg.max_position_embeddings)
        if max_seq_len > bound:
            raise ToolkitError(
                f"{family} rope_type 'dynamic': a context of {max_seq_len} positions would need "
                f"the NTK frequencies transformers recomputes past {bound}; pass --max-seq-len "
                f"{bound} or less")
    elif kind == "longrope":
        bound = int(rope_parameters(cfg).get("original_max_position_embeddings")
                    or getattr(cfg, "original_max_position_embeddings", 0) or 0)
        if not bound or max_seq_len > bound:
            raise ToolkitError(
                f"{family} rope_type 'longrope': a context of {max_seq_len} positions would "
                f"need its long factors (used past original_max_position_embeddings {bound}); "
                f"pass --max-seq-len {bound} or less")
    else:
        inv_freq = rotary.inv_freq
    return inv_freq.detach().clone().float(), float(rotary.attention_scaling)


def rotate_half_gather(heads: int, head_dim: int):
    """transformers' rotate_half on the merged (..., heads * head_dim) layout as one Gather and
    a sign: rotate_half(x) == x[..., index] * sign, per head [-second half, first half].
    -> (index int64, sign fp32), both (heads * head_dim,)."""
    half = head_dim // 2
    within = torch.cat([torch.arange(half, head_dim), torch.arange(0, half)])  # (head_dim,)
    index = (torch.arange(heads)[:, None] * head_dim + within).reshape(-1)
    sign = torch.cat([-torch.ones(half), torch.ones(half)]).repeat(heads)
    return index, sign
