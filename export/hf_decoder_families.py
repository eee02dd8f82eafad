"""The rotary pre-norm decoders of Hugging Face as ``export.hf_decoders.HFDecoderForExport``:
Llama (and SmolLM, TinyLlama), Qwen2 / Qwen2.5, Mistral, Phi-3 and Gemma.

They share one block (RMSNorm -> attention with rotary -> residual; RMSNorm -> gated MLP ->
residual) and differ where transformers' modeling files differ (transformers 5.x
``models/{llama,qwen2,mistral,phi3,gemma}/modeling_*.py``):
- Qwen2: q/k/v with bias (``fused_projection`` folds the scale into q's bias too); layers
  named "sliding_attention" in ``config.layer_types`` use ``sliding_window``.
- Mistral: every layer attends within ``sliding_window`` when it is set (the model picks
  ``create_sliding_window_causal_mask`` whenever ``config.sliding_window`` is not None).
- Phi-3: fused ``qkv_proj`` ([q | k | v] rows) and ``gate_up_proj`` ([gate | up] rows, output
  ``up * act(gate)``); ``sliding_window`` for every layer like Mistral.
- Gemma: embeddings times sqrt(hidden) (an fp32 scalar), RMSNorm times ``1 + weight``,
  GeLU-tanh gate; the LM head is tied to the unscaled embedding.
Sliding windows count physical cache positions, as transformers' ``sliding_window_overlay``
does (``kv_idx > q_idx - sliding_window``). Rope types: ``export.hf_rope``.
"""
from __future__ import annotations

from typing import List

import torch.nn as nn

from common.errors import ToolkitError
from export.hf_attention import RMSNorm, activation, fused_projection, packed_projection
from export.hf_decoders import DecoderBlock, HFDecoderForExport
from export.hf_rope import rotary_frequencies

SLIDING_FAMILIES = ("mistral", "phi3")  # one window for every layer when sliding_window is set
LAYER_TYPES = ("full_attention", "sliding_attention")


class GatedFeedForward(nn.Module):
    """Llama: down(act(gate(x)) * up(x))."""

    def __init__(self, gate: nn.Module, up: nn.Module, down: nn.Module, act):
        super().__init__()
        self.gate, self.up, self.down, self.act = gate, up, down, act

    def forward(self, x):
        return self.down(self.act(self.gate(x)) * self.up(x))


class PackedGatedFeedForward(nn.Module):
    """Phi-3: gate_up(x) = [gate | up]; down(up * act(gate)). One MatMul for both halves."""

    def __init__(self, gate_up: nn.Linear, down: nn.Module, act):
        super().__init__()
        self.gate_up, self.down, self.act = gate_up, down, act
        self.half = gate_up.weight.shape[0] // 2

    def forward(self, x):
        gate, up = self.gate_up(x).split([self.half, self.half], dim=-1)
        return self.down(up * self.act(gate))


def layer_windows(cfg, n_layers: int) -> List[int]:
    """Each layer's attention window (0: global), as the family's transformers model uses it."""
    family = cfg.model_type
    window = int(getattr(cfg, "sliding_window", None) or 0)
    if family in SLIDING_FAMILIES:
        return [window] * n_layers
    if family == "qwen2":
        types = list(getattr(cfg, "layer_types", None) or ["full_attention"] * n_layers)
        unknown = sorted(set(types) - set(LAYER_TYPES))
        if unknown or len(types) < n_layers:
            raise ToolkitError(f"qwen2 layer_types {unknown or types}: expected {n_layers} of "
                               f"{list(LAYER_TYPES)}")
        if "sliding_attention" in types[:n_layers] and not window:
            raise ToolkitError("qwen2 has sliding_attention layers but no sliding_window")
        return [window if t == "sliding_attention" else 0 for t in types[:n_layers]]
    return [0] * n_layers


def rms_norm(module, family: str) -> RMSNorm:
    """The model's RMSNorm as ours; Gemma's scales by (1 + weight), computed once in fp32."""
    eps = getattr(module, "variance_epsilon", getattr(module, "eps", None))
    if eps is None:
        raise ToolkitError(f"{family}: cannot read the epsilon of {type(module).__name__}")
    weight = module.weight.detach().float()
    return RMSNorm(1.0 + weight if family == "gemma" else weight, float(eps))


def rotary_decoder(model, topk: int, max_seq_len: int) -> HFDecoderForExport:
    """The export wrapper of a ``*ForCausalLM`` of one of ``hf_decoders.ROTARY_FAMILIES``."""
    cfg, base = model.config, model.model
    family = cfg.model_type
    if getattr(cfg, "use_bidirectional_attention", False):
        raise ToolkitError(f"{family} with use_bidirectional_attention is not a causal decoder")
    inv_freq, scaling = rotary_frequencies(cfg, base.rotary_emb, max_seq_len)
    act = activation(cfg.hidden_act, f"{family} hidden_act")
    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    kv_heads = cfg.num_key_value_heads or heads
    blocks = []
    for lyr, window in zip(base.layers, layer_windows(cfg, len(base.layers))):
        attn, mlp = lyr.self_attn, lyr.mlp
        scale = float(getattr(attn, "scaling", head_dim ** -0.5))
        if hasattr(attn, "qkv_proj"):
            qkv = packed_projection(attn.qkv_proj, heads * head_dim, scale)
        else:
            qkv = fused_projection(attn.q_proj, attn.k_proj, attn.v_proj, scale)
        if hasattr(mlp, "gate_up_proj"):
            ff = PackedGatedFeedForward(mlp.gate_up_proj, mlp.down_proj, act)
        else:
            ff = GatedFeedForward(mlp.gate_proj, mlp.up_proj, mlp.down_proj, act)
        blocks.append(DecoderBlock(rms_norm(lyr.input_layernorm, family), qkv, attn.o_proj,
                                   rms_norm(lyr.post_attention_layernorm, family), ff,
                                   heads, kv_heads, head_dim, window=window))
    embed_scale = float(getattr(base.embed_tokens, "scalar_embed_scale", 1.0))
    if family == "gemma" and embed_scale == 1.0:  # transformers 4.x: the scale is in forward
        embed_scale = cfg.hidden_size ** 0.5
    return HFDecoderForExport(base.embed_tokens, None, blocks, rms_norm(base.norm, family),
                              model.lm_head, max_seq_len, topk, inv_freq=inv_freq,
                              rope_scaling=scaling, embed_scale=embed_scale)
