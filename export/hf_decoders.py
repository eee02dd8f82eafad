"""Export wrappers of Hugging Face decoders (GPT-2, GPT-Neo here; the rotary families Llama,
Qwen2, Mistral, Phi-3 and Gemma in ``export/hf_decoder_families.py``): CONTRIBUTING.md's decoder
interface with the zero-copy cache the runtime binds.

Inputs: input_ids, position_ids (batch, new) int32; attention_mask (batch, past + new) int32;
past_key_{l}, past_value_{l} (past, batch, kv_dim) fp32. Outputs: logits (batch, new, vocab);
topk_values (batch, K) fp32; topk_indices (batch, K) int32; new_key_{l}, new_value_{l}
(new, batch, kv_dim) fp32: the new positions only, heads merged, kv_dim = kv_heads * head_dim;
present_key_{l}, present_value_{l} (past + new, batch, kv_dim) fp32: what the layer attends
over, which the runtime binds over the cache itself.

The wrapper holds the HF model's own modules (GPT-2's ``Conv1D`` turned into nn.Linear), with
each layer's q/k/v as one MatMul (``fused_projection``) and everything the layers share (masks,
rotary tables) made once: ONNX Runtime's CPU provider pays per node, and the graph stays plain
ONNX for TensorRT. Rotary is applied on the merged (batch, new, heads * head_dim) layout as ``x
* cos + x[..., rotate_index] * sign * sin`` (one Gather, no Slice/Neg/Concat). Keys are cached
after rotary (Llama), as transformers caches them, so a decode step rotates only its new key.
Causality is over physical cache positions, as transformers' masks are (``q_idx``/``kv_idx``
in ``masking_utils``): the graph numbers the keys 0..total-1 and the queries past..total-1 with
``Range`` and compares them, so no mask table is stored and the file does not grow with the
context. A layer with a window (GPT-Neo's local layers, Mistral's and Phi-3's sliding window,
Qwen2's sliding layers) also hides keys ``window`` or more positions back; one mask is made per
distinct window, before the layers.
``position_ids`` drive the learned position table or the rotary angles, so a left-padded row
starts at position 0 on its first real token.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from common.errors import ToolkitError
from export.hf_attention import (
    activation,
    attend_cache,
    fused_projection,
    linear_from_conv1d,
    split_linear,
)
from export.hf_rope import rotate_half_gather
from export.wrappers import DecoderForExport as OwnDecoderForExport

ROTARY_FAMILIES = ("llama", "qwen2", "mistral", "phi3", "gemma")  # hf_decoder_families.py


class FeedForward(nn.Module):
    def __init__(self, fc_in: nn.Module, fc_out: nn.Module, act):
        super().__init__()
        self.fc_in, self.fc_out, self.act = fc_in, fc_out, act

    def forward(self, x):
        return self.fc_out(self.act(self.fc_in(x)))


class DecoderBlock(nn.Module):
    """Pre-norm block: x += attn(norm_1(x)); x += mlp(norm_2(x)).

    qkv: ``export.hf_attention.fused_projection`` of the model's q/k/v (the attention scale
    folded into q), so a layer's attention inputs are one MatMul. window: 0 for a global layer,
    else a key is visible from query i only when 0 <= i - j < window.
    """

    def __init__(self, norm_1, qkv, o, norm_2, mlp, heads: int, kv_heads: int, head_dim: int,
                 window: int = 0):
        super().__init__()
        self.norm_1, self.norm_2 = norm_1, norm_2
        self.qkv, self.o, self.mlp = qkv, o, mlp
        self.heads, self.kv_heads, self.head_dim, self.window = heads, kv_heads, head_dim, window
        self.q_dim, self.kv_dim = heads * head_dim, kv_heads * head_dim


class HFDecoderForExport(nn.Module):
    """One call over ``new`` positions given ``past`` cached ones; see the module docstring."""

    def __init__(self, embed: nn.Embedding, pos: Optional[nn.Embedding], blocks: List[DecoderBlock],
                 norm_f: nn.Module, lm_head: nn.Module, max_seq_len: int, topk: int,
                 inv_freq: Optional[torch.Tensor] = None, rope_scaling: float = 1.0,
                 embed_scale: float = 1.0):
        super().__init__()
        vocab = lm_head.weight.shape[0]
        if not 1 <= topk <= vocab:
            raise ToolkitError(f"topk={topk}: expected 1..vocab_size ({vocab})")
        self.embed, self.pos, self.norm_f, self.lm_head = embed, pos, norm_f, lm_head
        self.blocks = nn.ModuleList(blocks)
        self.topk, self.n_layers, self.vocab_size = topk, len(blocks), vocab
        self.kv_dim = blocks[0].kv_dim
        for block in blocks:  # a window as long as the context never hides a key
            if block.window >= max_seq_len:
                block.window = 0
        self.windows = sorted({b.window for b in blocks})
        self.embed_scale = embed_scale  # Gemma: sqrt(hidden), transformers' fp32 scalar
        self.rotary = inv_freq is not None
        if self.rotary:
            # transformers' cat([freqs, freqs]) per head, tiled over the q and k heads of the
            # merged layout: (qk_dim,) fp32, so the angles are one Mul
            half = inv_freq.detach().clone().float()
            tiled = torch.cat([half, half]).repeat(blocks[0].heads + blocks[0].kv_heads)
            self.register_buffer("inv_freq", tiled, persistent=False)
            index, sign = rotate_half_gather(blocks[0].heads + blocks[0].kv_heads,
                                             blocks[0].head_dim)
            self.register_buffer("rotate_index", index, persistent=False)  # (qk_dim,) int64
            self.register_buffer("rotate_sign", sign, persistent=False)  # (qk_dim,) fp32 +-1
        self.rope_scaling = rope_scaling

    cache_names = OwnDecoderForExport.cache_names
    input_names = OwnDecoderForExport.input_names
    output_names = OwnDecoderForExport.output_names
    dynamic_axes = OwnDecoderForExport.dynamic_axes

    def forward(self, input_ids, position_ids, attention_mask, *past):
        new_keys, new_values, windows = [], [], []
        logits = self.decode(input_ids, position_ids, attention_mask, list(past[0::2]),
                             list(past[1::2]), new_keys, new_values,
                             windows)  # (batch, new, vocab)
        topk_values, topk_indices = torch.topk(logits[:, -1, :], self.topk, dim=-1)  # (batch, K)
        cache = [t for pair in zip(new_keys, new_values) for t in pair]
        return (logits, topk_values, topk_indices.to(torch.int32), *cache, *windows)

    def decode(self, input_ids, position_ids, attention_mask, past_keys, past_values,
               new_keys, new_values, windows):
        """-> logits; appends each layer's (new, batch, kv_dim) keys/values to the lists, and
        its (total, batch, kv_dim) key and value over past + new to ``windows``.

        Everything a layer shares (masks, rotary angles) is made once, before the layers.
        """
        past_len = past_keys[0].shape[0]
        total = past_len + input_ids.shape[1]
        # F.embedding, not the module: a padding_idx only matters for training
        x = F.embedding(input_ids.to(torch.int64), self.embed.weight)  # (batch, new, hidden)
        if self.embed_scale != 1.0:
            x = x * self.embed_scale  # an fp32 constant, as transformers multiplies
        if self.pos is not None:
            x = x + self.pos(position_ids.to(torch.int64))
        group = self.blocks[0].heads // self.blocks[0].kv_heads
        key_hidden = (attention_mask == torch.zeros((), dtype=attention_mask.dtype))[
            :, None, None, :]  # (batch, 1, 1, total); an int32 zero, so no Cast of the mask
        blocked = self._blocked_by_window(past_len, total, key_hidden, group)
        if self.rotary:
            cos_qk, sin_qk = self._rotary_tables(position_ids)  # (batch, new, q_dim + kv_dim)
        for block, past_k, past_v in zip(self.blocks, past_keys, past_values):
            qkv = block.qkv(block.norm_1(x))
            if self.rotary:
                qk, v = qkv.split([block.q_dim + block.kv_dim, block.kv_dim], dim=-1)
                qk = qk * cos_qk + qk.index_select(-1, self.rotate_index) * sin_qk
                q, k = qk.split([block.q_dim, block.kv_dim], dim=-1)
            else:
                q, k, v = qkv.split([block.q_dim, block.kv_dim, block.kv_dim], dim=-1)
            k_new, v_new = k.transpose(0, 1), v.transpose(0, 1)  # (new, batch, kv_dim)
            new_keys.append(k_new)
            new_values.append(v_new)
            keys = torch.cat([past_k, k_new], dim=0)  # (total, batch, kv_dim)
            values = torch.cat([past_v, v_new], dim=0)
            windows += [keys, values]
            x = x + block.o(attend_cache(q, keys, values, blocked[block.window],
                                         block.kv_heads, group, block.head_dim))
            x = x + block.mlp(block.norm_2(x))
        return self.lm_head(self.norm_f(x))

    def _blocked_by_window(self, past_len, total, key_hidden, group: int):
        """{window: (batch, 1, group * new, total) bool}, True where a query may not see a key.

        Built from Range + comparisons on the physical positions (no stored n x n table):
        offset[i, j] = j - (past + i); a key is in the future when offset > 0 and outside a
        window when offset <= -window."""
        offset = (torch.arange(total)[None, :]
                  - torch.arange(past_len, total)[:, None])  # (new, total) int64
        future = offset > 0
        masks = {}
        for window in self.windows:
            hidden = future | (offset <= -window) if window else future
            hidden = hidden[None, None] | key_hidden  # (batch, 1, new, total)
            masks[window] = hidden.repeat(1, 1, group, 1) if group > 1 else hidden
        return masks

    def _rotary_tables(self, position_ids):
        """cos and sin (transformers' attention_scaling applied) tiled over the q and k heads of
        the merged layout: (batch, new, (heads + kv_heads) * head_dim)."""
        angles = position_ids.to(torch.float32).unsqueeze(-1) * self.inv_freq  # (b, new, qk_dim)
        cos, sin = angles.cos(), angles.sin() * self.rotate_sign
        if self.rope_scaling == 1.0:
            return cos, sin
        return cos * self.rope_scaling, sin * self.rope_scaling

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
    if loaded.model_type in ROTARY_FAMILIES:
        from export.hf_decoder_families import rotary_decoder

        return rotary_decoder(loaded.model, topk, max_seq_len).eval()
    build = {"gpt2": _gpt2, "gpt_neo": _gpt_neo}[loaded.model_type]
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
        qkv = fused_projection(q, k, v, scale)
        blocks.append(DecoderBlock(lyr.ln_1, qkv, linear_from_conv1d(lyr.attn.c_proj),
                                   lyr.ln_2, mlp, heads, heads, head_dim))
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
        qkv = fused_projection(attn.q_proj, attn.k_proj, attn.v_proj, 1.0)
        blocks.append(DecoderBlock(lyr.ln_1, qkv, attn.out_proj, lyr.ln_2, mlp, cfg.num_heads,
                                   cfg.num_heads, cfg.hidden_size // cfg.num_heads,
                                   window=(cfg.window_size if lyr.attn.attention_type == "local"
                                           else 0)))
    return HFDecoderForExport(base.wte, base.wpe, blocks, base.ln_f, model.lm_head, max_seq_len,
                              topk)
