"""Text to token ids on the device, exactly as training made them.

- ``model_info``: the description of a model file, the ONNX sidecar for ``.onnx`` and the
  manifest's copy of the sidecar fields for a TensorRT ``.plan``/``.engine``.
- ``load_model_tokenizer``: the tokenizer named by that description, from beside the model.
- IMDB cleaning (``<br />`` tags) and the head+tail truncation of ``train/batching.py``
  (``truncate_head_tail``/``encode_texts``), reimplemented here because the device never imports
  ``train/``; ``tests/test_classify_bench.py`` checks that both agree.
- Right padding of classifier rows into preallocated buffers.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Dict, List, Sequence

import numpy as np

from common.errors import ToolkitError

ONNX_SUFFIXES = (".onnx",)
ENGINE_SUFFIXES = (".plan", ".engine")

_BR_TAG = re.compile(r"<br\s*/?>", re.IGNORECASE)
_WHITESPACE = re.compile(r"\s+")


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


def clean_imdb_text(text: str) -> str:
    """``<br />`` tags to spaces, whitespace collapsed: the cleaning of train/data.py."""
    return _WHITESPACE.sub(" ", _BR_TAG.sub(" ", text)).strip()


def truncate_head_tail(ids: Sequence[int], max_len: int) -> List[int]:
    """Keep the first ``max_len // 4`` tokens and the last ``max_len - max_len // 4``."""
    if len(ids) <= max_len:
        return list(ids)
    head = max_len // 4
    return list(ids[:head]) + list(ids[len(ids) - (max_len - head):])


def encode_classifier_texts(tokenizer, texts: Sequence[str], max_len: int,
                            cls_id: int | None = None) -> List[List[int]]:
    """Cleaned, tokenized, head+tail truncated rows of at most ``max_len`` ids.

    cls_id: prepended to every row when the model pools on ``<cls>`` (training's
    ``prepend_cls``), after truncating the text to ``max_len - 1``.
    """
    budget = max_len - 1 if cls_id is not None else max_len
    if budget < 1:
        raise ToolkitError(f"max_len={max_len}: too short to hold any token")
    rows = []
    for enc in tokenizer.encode_batch([clean_imdb_text(t) for t in texts]):
        ids = truncate_head_tail(enc.ids, budget)
        rows.append([cls_id] + ids if cls_id is not None else ids)
    return rows


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
