"""nn.Module wrappers that give the trained models the ONNX I/O of CONTRIBUTING.md.

The device side feeds int32 token ids (TensorRT has no int64 bindings worth using), so the
wrappers take int32 and cast to int64 inside the graph, where Gather needs it. The decoder
wrapper flattens the per-layer cache lists into named tensors ``past_key_{l}``/``past_value_{l}``
-> ``new_key_{l}``/``new_value_{l}`` and ``present_key_{l}``/``present_value_{l}`` (the keys and
values the layer attended over, past + new), and adds the top-K of the last position, so a
sampler on the device reads K values instead of a whole vocabulary row.
"""
from __future__ import annotations

from typing import Dict, List, Tuple

import torch
import torch.nn as nn

from common.errors import ToolkitError


class ClassifierForExport(nn.Module):
    """input_ids, attention_mask: (batch, seq) int32 -> logits (batch, num_labels) fp32."""

    input_names = ["input_ids", "attention_mask"]
    output_names = ["logits"]

    def __init__(self, model: nn.Module):
        super().__init__()
        if model.cfg.feature_dim > 0:
            raise ToolkitError(
                f"classifier with feature_dim={model.cfg.feature_dim} takes float features; "
                "the ONNX export expects a token-id classifier (feature_dim=0)"
            )
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids.to(torch.int64), attention_mask)

    def dynamic_axes(self) -> Dict[str, Dict[int, str]]:
        return {
            "input_ids": {0: "batch", 1: "seq"},
            "attention_mask": {0: "batch", 1: "seq"},
            "logits": {0: "batch"},
        }

    def dummy_inputs(self, batch: int = 2, seq: int = 7) -> Tuple[torch.Tensor, ...]:
        # Non-degenerate sizes (no 1s, batch != seq) so the tracer cannot bake a size in.
        gen = torch.Generator().manual_seed(0)
        vocab = self.model.cfg.vocab_size
        input_ids = torch.randint(0, vocab, (batch, seq), generator=gen, dtype=torch.int32)
        attention_mask = torch.ones((batch, seq), dtype=torch.int32)  # (batch, seq)
        attention_mask[1, seq - 2:] = 0  # some padding, so the mask path is traced
        return input_ids, attention_mask


class DecoderForExport(nn.Module):
    """One decoder call over ``new`` positions given ``past`` cached ones (see CONTRIBUTING.md).

    Inputs: input_ids, position_ids (batch, new) int32; attention_mask (batch, past+new) int32;
    past_key_{l}, past_value_{l} (past, batch, kv_dim) fp32, in layer order.
    Outputs: logits (batch, new, vocab); topk_values (batch, K) fp32; topk_indices (batch, K)
    int32; new_key_{l}, new_value_{l} (new, batch, kv_dim) fp32; present_key_{l},
    present_value_{l} (past + new, batch, kv_dim) fp32, the concatenation each layer attends
    over (``runtime.kv_cache`` binds it over the cache itself, so it costs no copy).
    """

    def __init__(self, model: nn.Module, topk: int):
        super().__init__()
        vocab = model.cfg.vocab_size
        if not 1 <= topk <= vocab:
            raise ToolkitError(f"topk={topk}: expected 1..vocab_size ({vocab})")
        self.model = model
        self.topk = topk
        self.n_layers = model.cfg.n_layers

    @property
    def cache_names(self) -> Tuple[List[str], List[str], List[str]]:
        """(past_*, new_*, present_*) names, layer by layer, key before value."""
        return tuple([f"{what}_{kv}_{layer}" for layer in range(self.n_layers)
                      for kv in ("key", "value")] for what in ("past", "new", "present"))

    @property
    def input_names(self) -> List[str]:
        return ["input_ids", "position_ids", "attention_mask"] + self.cache_names[0]

    @property
    def output_names(self) -> List[str]:
        _, new, present = self.cache_names
        return ["logits", "topk_values", "topk_indices"] + new + present

    def forward(self, input_ids, position_ids, attention_mask, *past):
        past_keys = list(past[0::2])  # each (past, batch, kv_dim)
        past_values = list(past[1::2])
        windows: List[torch.Tensor] = []  # per layer key, value: (total, batch, kv_dim)
        logits, new_keys, new_values = self.model(
            input_ids.to(torch.int64), position_ids.to(torch.int64), attention_mask,
            past_keys, past_values, windows=windows,
        )  # logits (batch, new, vocab)
        topk_values, topk_indices = torch.topk(logits[:, -1, :], self.topk, dim=-1)  # (batch, K)
        cache = [t for pair in zip(new_keys, new_values) for t in pair]
        return (logits, topk_values, topk_indices.to(torch.int32), *cache, *windows)

    def dynamic_axes(self) -> Dict[str, Dict[int, str]]:
        axes = {
            "input_ids": {0: "batch", 1: "new"},
            "position_ids": {0: "batch", 1: "new"},
            "attention_mask": {0: "batch", 1: "total"},
            "logits": {0: "batch", 1: "new"},
            "topk_values": {0: "batch"},
            "topk_indices": {0: "batch"},
        }
        past_names, new_names, present_names = self.cache_names
        axes.update({name: {0: "past", 1: "batch"} for name in past_names})
        axes.update({name: {0: "new", 1: "batch"} for name in new_names})
        axes.update({name: {0: "total", 1: "batch"} for name in present_names})
        return axes

    def dummy_inputs(self, batch: int = 2, past: int = 3, new: int = 2) -> Tuple[torch.Tensor, ...]:
        # batch, past, new all different and > 1, so every axis is traced as its own size.
        cfg = self.model.cfg
        gen = torch.Generator().manual_seed(0)
        input_ids = torch.randint(0, cfg.vocab_size, (batch, new), generator=gen,
                                  dtype=torch.int32)  # (batch, new)
        position_ids = (torch.arange(past, past + new, dtype=torch.int32)
                        .unsqueeze(0).repeat(batch, 1))  # (batch, new)
        attention_mask = torch.ones((batch, past + new), dtype=torch.int32)  # (batch, total)
        attention_mask[1, 0] = 0  # one left-padded row, so the padding path is traced
        past_kv = [torch.randn((past, batch, cfg.kv_dim), generator=gen)  # (past, batch, kv_dim)
                   for _ in range(2 * cfg.n_layers)]
        return (input_ids, position_ids, attention_mask, *past_kv)


class FeatureClassifierForExport(nn.Module):
    """features (batch, seq, F) fp32, attention_mask (batch, seq) int32 -> logits (batch, labels).

    The training split's normalization is the graph's first op, ``(x - mean) / std`` with the
    checkpoint's statistics as constants, so the device feeds raw features and applies exactly
    what training applied (no second copy of the statistics to drift)."""

    input_names = ["features", "attention_mask"]
    output_names = ["logits"]

    def __init__(self, model: nn.Module, mean, std):
        super().__init__()
        feature_dim = model.cfg.feature_dim
        if feature_dim <= 0:
            raise ToolkitError("a feature export needs a classifier with feature_dim > 0")
        mean = torch.as_tensor(mean, dtype=torch.float32).reshape(-1)  # (F,)
        std = torch.as_tensor(std, dtype=torch.float32).reshape(-1)  # (F,)
        if mean.numel() != feature_dim or std.numel() != feature_dim:
            raise ToolkitError(f"feature_norm has {mean.numel()} means and {std.numel()} stds; "
                               f"the model takes feature_dim={feature_dim}")
        if not (torch.isfinite(mean).all() and torch.isfinite(std).all() and (std > 0).all()):
            raise ToolkitError("feature_norm: expected finite means and finite stds > 0")
        self.model = model
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, features: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        normed = (features - self.mean) / self.std  # (batch, seq, F): Sub, Div on constants
        return self.model(normed, attention_mask)

    def dynamic_axes(self) -> Dict[str, Dict[int, str]]:
        return {"features": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"},
                "logits": {0: "batch"}}

    def dummy_inputs(self, batch: int = 2, seq: int = 7) -> Tuple[torch.Tensor, ...]:
        gen = torch.Generator().manual_seed(0)
        features = torch.randn((batch, seq, self.model.cfg.feature_dim), generator=gen)
        features = features * self.std + self.mean  # (batch, seq, F) in the raw feature scale
        attention_mask = torch.ones((batch, seq), dtype=torch.int32)  # (batch, seq)
        attention_mask[1, seq - 2:] = 0
        return features, attention_mask


def export_wrapper(model: nn.Module, kind: str, topk: int) -> nn.Module:
    """The wrapper for a model of ``kind`` ("classifier" | "decoder"), in eval mode."""
    wrapper = ClassifierForExport(model) if kind == "classifier" else DecoderForExport(model, topk)
    return wrapper.eval()


def count_layernorms(model: nn.Module) -> int:
    return sum(isinstance(m, nn.LayerNorm) for m in model.modules())
