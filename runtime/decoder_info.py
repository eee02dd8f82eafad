"""What a decoder is (from its sidecar or an engine manifest's copy), how its prompts become
ids, and what one generation returns: the plain data around ``runtime.generate.Generator``.

Prompts follow the sidecar's ``prompt`` rules: our TinyStories models put ``<|endoftext|>``
first, as the training streams do; a Hugging Face decoder gets exactly ``tokenizer(prompt)``
(BOS only when its tokenizer adds one). Generation stops on any of the sidecar's ``eos_ids``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

from common.errors import ToolkitError


@dataclass(frozen=True)
class DecoderInfo:
    """What the generator needs from the ONNX sidecar (or an engine manifest's copy of it)."""

    layers: int
    kv_dim: int
    vocab_size: int
    max_seq_len: int
    topk: int
    eos_id: int | None  # None: no end-of-text stop at all (benchmarks replace it so)
    pad_id: int
    eos_ids: Tuple[int, ...] = ()  # every id that ends generation, eos_id first
    prompt_prefix: Tuple[int, ...] | None = None  # ids before each prompt (None: (eos_id,))
    prompt_special: bool = False  # the tokenizer's post-processor adds its special tokens

    @classmethod
    def from_sidecar(cls, info: Dict[str, Any]) -> DecoderInfo:
        from common.artifacts import prompt_rules, stop_ids

        if info.get("kind") != "decoder":
            raise ToolkitError(
                f"generation needs a decoder model; this one is {info.get('kind')!r}")
        cache, special = info["kv_cache"], info.get("special_tokens") or {}
        pad_id, prompt, eos_ids = special.get("pad_id"), prompt_rules(info), stop_ids(info)
        eos_id = eos_ids[0] if eos_ids else None
        return cls(layers=int(cache["layers"]), kv_dim=int(cache["kv_dim"]),
                   vocab_size=int(info["vocab_size"]), max_seq_len=int(info["max_seq_len"]),
                   topk=int(info["topk"]), eos_id=eos_id,
                   pad_id=int(pad_id) if pad_id is not None else 0, eos_ids=tuple(eos_ids),
                   prompt_prefix=tuple(prompt["prefix_ids"]),
                   prompt_special=prompt["add_special_tokens"])

    @property
    def stop_ids(self) -> Tuple[int, ...]:
        """The ids that end generation: ``eos_ids``; none when ``eos_id`` was replaced by None,
        that id alone when it was replaced by another (tests, benchmarks)."""
        if self.eos_id is None:
            return ()
        return self.eos_ids if self.eos_id in self.eos_ids else (self.eos_id,)

    def encode_prompt(self, tokenizer, text: str) -> List[int]:
        """A prompt's ids by the sidecar's prompt rules (see ``encode_prompt``)."""
        prefix = self.prompt_prefix if self.prompt_prefix is not None else self.eos_id
        return encode_prompt(tokenizer, text, prefix, self.prompt_special)


@dataclass
class GenerationResult:
    tokens: List[List[int]]  # per row: new token ids, end-of-text excluded
    stop_reasons: List[str]  # per row: "eos" | "max_new_tokens" | "context"
    prompt_lengths: List[int]
    prefill_ms: float
    decode_ms: np.ndarray  # (steps,) float64: wall ms of each decode step (copies + run)
    decode_past: np.ndarray  # (steps,) int32: cache positions before each step

    @property
    def new_tokens(self) -> int:
        return sum(len(t) for t in self.tokens)

    def decode_tokens_per_s(self) -> float:
        """Rows x decode steps per second of decode time (a batch's rows count together)."""
        total_s = float(self.decode_ms.sum()) / 1e3
        rows = len(self.tokens)
        return rows * len(self.decode_ms) / total_s if total_s > 0 else 0.0


def encode_prompt(tokenizer, text: str, prefix: int | Sequence[int] | None,
                  add_special_tokens: bool = False) -> List[int]:
    """``prefix`` + the prompt's ids. Our TinyStories models: prefix ``<|endoftext|>``'s id, as
    train/generate.py's ``prompt_token_ids``; a Hugging Face decoder: no prefix and
    ``add_special_tokens`` (the ids of transformers' ``tokenizer(text)``)."""
    if text or add_special_tokens:
        ids = tokenizer.encode(text, add_special_tokens=add_special_tokens).ids
    else:
        ids = []
    head = [] if prefix is None else [prefix] if isinstance(prefix, int) else list(prefix)
    return head + ids
