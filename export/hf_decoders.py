"""Export wrappers of Hugging Face decoders (GPT-2, GPT-Neo, Llama): CONTRIBUTING.md's decoder
interface with the zero-copy cache the runtime binds.

Inputs: input_ids, position_ids (batch, new) int32; attention_mask (batch, past + new) int32;
past_key_{l}, past_value_{l} (past, batch, kv_dim) fp32. Outputs: logits (batch, new, vocab);
topk_values (batch, K) fp32; topk_indices (batch, K) int32; new_key_{l}, new_value_{l}
(new, batch, kv_dim) fp32: the new positions only, heads merged, kv_dim = kv_heads * head_dim.

The wrapper holds the HF model's own modules (GPT-2's ``Conv1D`` turned into nn.Linear, its
fused QKV split in three). Keys are cached after rotary (Llama), as transformers caches them, so
a decode step rotates only its new key. Causality is over physical cache positions (a bool
table sliced at ``past``, like our own decoder); GPT-Neo's local layers also hide keys
``window_size`` or more positions back. ``position_ids`` drive the learned position table or
the rotary angles, so a left-padded row starts at position 0 on its first real token.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from common.errors import ToolkitError
from export.hf_attention import (
    RMSNorm,
    activation,
    attend,
    heads_from_cache,
    linear_from_conv1d,
    split_heads,
    split_linear,
)
from export.wrappers import DecoderForExport as OwnDecoderForExport

STATIC_ROPE_TYPES = ("default", "linear", "llama3")  # inv_freq fixed, whatever the length


class FeedForward(nn.Module):
    def __init__(self, fc_in: nn.Module, fc_out: nn.Module, act):
        super().__init__()
        self.fc_in, self.fc_out, self.act = fc_in, fc_out, act

    def forward(self, x):
        return self.fc_out(self.act(self.fc_in(x)))


class GatedFeedForward(nn.Module):
    """Llama: down(act(gate(x)) * up(x))."""

    def __init__(self, gate: nn.Module, up: nn.Module, down: nn.Module, act):
        super().__init__()
        self.gate, self.up, self.down, self.act = gate, up, down, act

    def forward(self, x):
        return self.down(self.act(self.gate(x)) * self.up(x))


class DecoderBlock(nn.Module):
    """Pre-norm block: x += attn(norm_1(x)); x += mlp(norm_2(x)). local: GPT-Neo local layer."""

    def __init__(self, norm_1, q, k, v, o, norm_2, mlp, heads: int, kv_heads: int, scale: float,
                 local: bool = False):
        super().__init__()
        self.norm_1, self.norm_2 = norm_1, norm_2
        self.q, self.k, self.v, self.o, self.mlp = q, k, v, o, mlp
        self.heads, self.kv_heads, self.scale, self.local = heads, kv_heads, scale, local


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary in transformers' rotate_half form: x (batch, heads, new, head_dim)."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class HFDecoderForExport(nn.Module):
    """One call over ``new`` positions given ``past`` cached ones; see the module docstring."""

    def __init__(self, embed: nn.Embedding, pos: Optional[nn.Embedding], blocks: List[DecoderBlock],
                 norm_f: nn.Module, lm_head: nn.Module, max_seq_len: int, topk: int,
                 window: int = 0, inv_freq: Optional[torch.Tensor] = None,
                 rope_scaling: float = 1.0):
        super().__init__()
        vocab = lm_head.weight.shape[0]
        if not 1 <= topk <= vocab:
            raise ToolkitError(f"topk={topk}: expected 1..vocab_size ({vocab})")
        self.embed, self.pos, self.norm_f, self.lm_head = embed, pos, norm_f, lm_head
        self.blocks = nn.ModuleList(blocks)
        self.topk, self.n_layers, self.vocab_size = topk, len(blocks), vocab
        self.kv_dim = blocks[0].k.weight.shape[0]
        causal = torch.tril(torch.ones((max_seq_len, max_seq_len), dtype=torch.bool))
        self.register_buffer("causal", causal, persistent=False)  # (max_seq, max_seq) bool
        if window:  # key j is visible from query i when 0 <= i - j < window
            local = causal & ~torch.tril(torch.ones_like(causal), diagonal=-window)
            self.register_buffer("local_causal", local, persistent=False)
        self.rotary = inv_freq is not None
        if self.rotary:
            self.register_buffer("inv_freq", inv_freq.detach().clone().float(), persistent=False)
        self.rope_scaling = rope_scaling

    cache_names = OwnDecoderForExport.cache_names
    input_names = OwnDecoderForExport.input_names
    output_names = OwnDecoderForExport.output_names
    dynamic_axes = OwnDecoderForExport.dynamic_axes

    def forward(self, input_ids, position_ids, attention_mask, *past):
        new_keys, new_values = [], []
        logits = self.decode(input_ids, position_ids, attention_mask, list(past[0::2]),
                             list(past[1::2]), new_keys, new_values)  # (batch, new, vocab)
        topk_values, topk_indices = torch.topk(logits[:, -1, :], self.topk, dim=-1)  # (batch, K)
        cache = [t for pair in zip(new_keys, new_values) for t in pair]
        return (logits, topk_values, topk_indices.to(torch.int32), *cache)

    def decode(self, input_ids, position_ids, attention_mask, past_keys, past_values,
               new_keys, new_values):
        """-> logits; appends each layer's (new, batch, kv_dim) keys/values to the lists."""
        past_len = past_keys[0].shape[0]
        total = past_len + input_ids.shape[1]
        positions = position_ids.to(torch.int64)  # (batch, new)
        # F.embedding, not the module: a padding_idx only matters for training
        x = F.embedding(input_ids.to(torch.int64), self.embed.weight)  # (batch, new, hidden)
        if self.pos is not None:
            x = x + self.pos(positions)
        key_ok = (attention_mask != 0)[:, None, None, :]  # (batch, 1, 1, total)
        allowed = self.causal[past_len:total, :total][None, None] & key_ok  # (batch, 1, new, total)
        allowed_local = (self.local_causal[past_len:total, :total][None, None] & key_ok
                         if hasattr(self, "local_causal") else allowed)
        cos = sin = None
        if self.rotary:
            angles = positions.to(torch.float32).unsqueeze(-1) * self.inv_freq  # (b, new, hd/2)
            angles = torch.cat([angles, angles], dim=-1).unsqueeze(1)  # (batch, 1, new, hd)
            cos, sin = angles.cos() * self.rope_scaling, angles.sin() * self.rope_scaling
        for block, past_k, past_v in zip(self.blocks, past_keys, past_values):
            h = block.norm_1(x)
            q = split_heads(block.q(h), block.heads)  # (batch, heads, new, head_dim)
            k = block.k(h)  # (batch, new, kv_dim)
            if self.rotary:
                q = rotate(q, cos, sin)
                k = rotate(split_heads(k, block.kv_heads), cos, sin).transpose(1, 2)
                k = k.reshape(k.shape[0], k.shape[1], -1)  # (batch, new, kv_dim)
            k_new = k.transpose(0, 1)  # (new, batch, kv_dim) position-major
            v_new = block.v(h).transpose(0, 1)
            new_keys.append(k_new)
            new_values.append(v_new)
            keys = heads_from_cache(torch.cat([past_k, k_new], dim=0), block.kv_heads)
            values = heads_from_cache(torch.cat([past_v, v_new], dim=0), block.kv_heads)
            mask = allowed_local if block.local else allowed
            x = x + block.o(attend(q, keys, values, mask, block.scale,
                                      block.heads // block.kv_heads))
            x = x + block.mlp(block.norm_2(x))
        return self.lm_head(self.norm_f(x))

    def dummy_inputs(self, batch: int = 2, past: int = 3, new: int = 2) -> Tuple[torch.Tensor, ...]:
        gen = torch.Generator().manual_seed(0)
        input_ids = torch.randint(0, self.vocab_size, (batch, new), generator=gen,
                                  dtype=torch.int32)  # (batch, new)
        position_ids = (torch.arange(past, past + new, dtype=torch.int32)
                        .unsqueeze(0).repeat(batch, 1))  # (batch, new)
        attention_mask = torch.ones((batch, past + new), dtype=torch.int32)  # (batch, total)
        attention_mask[1, 0] = 0
        past_kv = [torch.randn((past, batch, self.kv_dim), generator=gen)  # (past, batch, kv_dim)
                   for _ in range(2 * self.n_layers)]
        return (input_ids, position_ids, attention_mask, *past_kv)


def decoder_wrapper(loaded, topk: int, max_seq_len: int) -> HFDecoderForExport:
    """The export wrapper of an ``export.hf_load.HFModel`` decoder, in eval mode."""
    build = {"gpt2": _gpt2, "gpt_neo": _gpt_neo, "llama": _llama}[loaded.model_type]
    return build(loaded.model, topk, max_seq_len).eval()


def max_positions(config) -> int:
    return int(getattr(config, "n_positions", None) or config.max_position_embeddings)


def _gpt2(model, topk: int, max_seq_len: int) -> HFDecoderForExport:
    cfg, base = model.config, model.transformer
    if getattr(cfg, "add_cross_attention", False):
        raise ToolkitError("gpt2 with add_cross_attention is not supported")
    act = activation(cfg.activation_function, "gpt2 activation_function")
    heads = cfg.n_head
    head_dim = cfg.n_embd // heads
    blocks = []
    for index, lyr in enumerate(base.h):
        scale = head_dim ** -0.5 if cfg.scale_attn_weights else 1.0
        if cfg.scale_attn_by_inverse_layer_idx:
            scale /= index + 1
        q, k, v = split_linear(linear_from_conv1d(lyr.attn.c_attn), 3)
        mlp = FeedForward(linear_from_conv1d(lyr.mlp.c_fc), linear_from_conv1d(lyr.mlp.c_proj), act)
        blocks.append(DecoderBlock(lyr.ln_1, q, k, v, linear_from_conv1d(lyr.attn.c_proj),
                                   lyr.ln_2, mlp, heads, heads, scale))
    return HFDecoderForExport(base.wte, base.wpe, blocks, base.ln_f, model.lm_head, max_seq_len,
                              topk)


def _gpt_neo(model, topk: int, max_seq_len: int) -> HFDecoderForExport:
    cfg, base = model.config, model.transformer
    act = activation(cfg.activation_function, "gpt_neo activation_function")
    blocks = []
    for lyr in base.h:
        attn = lyr.attn.attention
        mlp = FeedForward(lyr.mlp.c_fc, lyr.mlp.c_proj, act)
        # GPT-Neo does not scale its attention scores (transformers' _attn has no 1/sqrt(d)).
        blocks.append(DecoderBlock(lyr.ln_1, attn.q_proj, attn.k_proj, attn.v_proj,
                                   attn.out_proj, lyr.ln_2, mlp, cfg.num_heads, cfg.num_heads,
                                   1.0, local=lyr.attn.attention_type == "local"))
    window = cfg.window_size if any(b.local for b in blocks) else 0
    return HFDecoderForExport(base.wte, base.wpe, blocks, base.ln_f, model.lm_head, max_seq_len,
                              topk, window=window)


def _llama(model, topk: int, max_seq_len: int) -> HFDecoderForExport:
    cfg, base = model.config, model.model
    rope = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in STATIC_ROPE_TYPES:
        raise ToolkitError(f"llama rope_type {rope_type!r} is not supported; expected one of "
                           f"{list(STATIC_ROPE_TYPES)}")
    act = activation(cfg.hidden_act, "llama hidden_act")
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    kv_heads = cfg.num_key_value_heads or cfg.num_attention_heads
    blocks = []
    for lyr in base.layers:
        attn, mlp = lyr.self_attn, lyr.mlp
        blocks.append(DecoderBlock(
            RMSNorm(lyr.input_layernorm.weight, lyr.input_layernorm.variance_epsilon),
            attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj,
            RMSNorm(lyr.post_attention_layernorm.weight,
                    lyr.post_attention_layernorm.variance_epsilon),
            GatedFeedForward(mlp.gate_proj, mlp.up_proj, mlp.down_proj, act),
            cfg.num_attention_heads, kv_heads, head_dim ** -0.5))
    norm = RMSNorm(base.norm.weight, base.norm.variance_epsilon)
    rotary = base.rotary_emb
    return HFDecoderForExport(base.embed_tokens, None, blocks, norm, model.lm_head, max_seq_len,
                              topk, inv_freq=rotary.inv_freq,
                              rope_scaling=float(rotary.attention_scaling))

