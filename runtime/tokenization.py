"""Text to token ids on the device, exactly as training made them.

- ``model_info``: the description of a model file, the ONNX sidecar for ``.onnx`` and the
  manifest's copy of the sidecar fields for a TensorRT ``.plan``/``.engine``.
- ``load_model_tokenizer``: the tokenizer named by that description, from beside the model.
- IMDB cleaning (``<br />`` tags) and the head+tail truncation, from ``common.text``: the
  same functions training uses, for the models trained with them; a Hugging Face classifier's
  texts go through its own tokenizer's truncation and special tokens (``encode_for_model``,
  by the sidecar's ``text`` rules).
- Right padding of classifier rows into preallocated buffers.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Sequence

import numpy as np

from common.errors import ToolkitError
from common.text import (  # noqa: F401  (the runtime's text API)
    clean_imdb_text,
    clean_text,
    encode_classifier_texts,
    encode_for_model,
    truncate_head_tail,
)

ONNX_SUFFIXES = (".onnx",)
ENGINE_SUFFIXES = (".plan", ".engine")



def model_info(model_path: str | os.PathLike) -> Dict[str, Any]:
    """Sidecar fields of a model: ``kind``, ``max_seq_len``, ``special_tokens``, ``tokenizer``...

    For an engine the manifest carries a copy of its ONNX sidecar (key ``sidecar``), so an
    engine copied alone to the device still knows its tokenizer and special tokens.
    """
    path = Path(model_path)
    if path.suffix in ONNX_SUFFIXES:
        from common.artifacts import load_onnx_sidecar

        return load_onnx_sidecar(path)
    if path.suffix in ENGINE_SUFFIXES:
        return _engine_sidecar(path)
    raise ToolkitError(
        f"{path}: expected an ONNX model ({'/'.join(ONNX_SUFFIXES)}) or a TensorRT engine "
        f"({'/'.join(ENGINE_SUFFIXES)})"
    )


def _engine_sidecar(engine_path: Path) -> Dict[str, Any]:
    from engines.manifest import load_manifest

    manifest = load_manifest(engine_path)
    sidecar = manifest.get("sidecar")
    if not isinstance(sidecar, dict) or "kind" not in sidecar:
        raise ToolkitError(
            f"engine manifest of {engine_path} has no 'sidecar' copy of the ONNX sidecar "
            f"fields: rebuild the engine"
        )
    info = dict(sidecar)
    if manifest.get("tokenizer"):  # relative to the engine's folder, where the ONNX may not be
        info["tokenizer"] = manifest["tokenizer"]
    return info


def load_model_tokenizer(model_path: str | os.PathLike, info: Dict[str, Any],
                         override: str | os.PathLike | None = None):
    """The ``tokenizers.Tokenizer`` beside the model (``info["tokenizer"]``), or ``override``."""
    from tokenizers import Tokenizer

    if override is not None:
        path = Path(override)
    elif info.get("tokenizer"):
        path = Path(model_path).parent / info["tokenizer"]
    else:
        raise ToolkitError(f"{model_path}: its description names no tokenizer; pass --tokenizer")
    if not path.is_file():
        raise ToolkitError(f"tokenizer not found: {path} (expected beside {model_path})")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # the Rust bindings raise plain Exception
        raise ToolkitError(f"tokenizer {path} is unreadable ({exc})") from None


def fill_right_padded(rows: Sequence[Sequence[int]], input_ids: np.ndarray,
                      attention_mask: np.ndarray, pad_id: int) -> None:
    """Write rows into input_ids/attention_mask, both (len(rows), seq) int32, padding on the
    right as in training; an empty text gives a row of pads with a mask of zeros."""
    input_ids.fill(pad_id)
    attention_mask.fill(0)
    for r, ids in enumerate(rows):
        n = len(ids)
        if n > input_ids.shape[1]:
            raise ToolkitError(f"row {r} has {n} tokens; the buffer holds {input_ids.shape[1]}")
        input_ids[r, :n] = ids
        attention_mask[r, :n] = 1


def special_token_ids(info: Dict[str, Any], tokenizer=None) -> Dict[str, int | None]:
    """``pad_id``/``eos_id``/``cls_id`` from the sidecar, else from the tokenizer's vocabulary."""
    tokens = dict(info.get("special_tokens") or {})
    if tokenizer is not None:
        for key, text in (("pad_id", "<pad>"), ("eos_id", "<|endoftext|>"), ("cls_id", "<cls>")):
            if tokens.get(key) is None:
                tokens[key] = tokenizer.token_to_id(text)
    return {key: tokens.get(key) for key in ("pad_id", "eos_id", "cls_id")}
