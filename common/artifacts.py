"""ONNX sidecars: the JSON file written beside every exported ONNX graph (``model.onnx.json``).

The sidecar is how later layers (calibration, engines, runtime) learn a graph's I/O names,
dtypes, axis ranges, special tokens and KV-cache layout without opening the ONNX file or
importing torch. Standard library only, so it imports on the device (Python 3.8).
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

from common.errors import ToolkitError
from common.fileio import atomic_write_json, read_json, sha256_file

SIDECAR_FORMAT = "jetson-toolkit/onnx-sidecar"
SIDECAR_VERSION = 1
KINDS = ("classifier", "decoder")

COMMON_KEYS = (
    "format", "version", "kind", "opset", "inputs", "outputs", "dynamic_axes", "vocab_size",
    "max_seq_len", "special_tokens", "tokenizer", "model_config", "checkpoint_sha256",
    "tokenizer_sha256", "onnx_sha256",
)
KIND_KEYS = {
    "classifier": ("labels",),
    "decoder": ("topk", "kv_cache"),
}
# Keys added with the TensorRT 8.5 export (issue 21). Optional, so sidecars written before them
# still load; a reader treats a missing one as: target 8.6 (LayerNormalization), nothing kept
# FP32, no parse verdicts recorded.
TENSORRT_TARGETS = {"8.5": "decomposed", "8.6": "LayerNormalization"}  # min_tensorrt -> layernorm
# Keys added with issue 23 (Hugging Face text handling), optional: a sidecar without them is an
# old export of our own models and reads as today's behaviour (``text_rules``, ``prompt_rules``,
# ``stop_ids``, ``head_rules`` below give the defaults).
#   text: {"cleaning": "imdb"|"none", "truncation": "head_tail"|"right"|"left",
#          "special_tokens": "cls_prefix"|"tokenizer"}  (classifier)
#   prompt: {"prefix_ids": [int], "add_special_tokens": bool}  (decoder)
#   eos_ids: [int]  (decoder: every id that ends generation)
#   head: {"problem_type": one of HEAD_PROBLEMS, "threshold": float}  (classifier)
TEXT_CHOICES = {"cleaning": ("imdb", "none"), "truncation": ("head_tail", "right", "left"),
                "special_tokens": ("cls_prefix", "tokenizer")}
OWN_TEXT = {"cleaning": "imdb", "truncation": "head_tail", "special_tokens": "cls_prefix"}
HEAD_PROBLEMS = ("single_label_classification", "multi_label_classification", "regression")
SINGLE_LABEL, MULTI_LABEL, REGRESSION = HEAD_PROBLEMS
KIND_AXES = {
    "classifier": ("batch", "seq"),
    "decoder": ("batch", "new", "past", "total"),
}


def sidecar_path(onnx_path: str | os.PathLike) -> Path:
    """``models/imdb.onnx`` -> ``models/imdb.onnx.json``."""
    onnx_path = Path(onnx_path)
    return onnx_path.with_name(onnx_path.name + ".json")


def tokenizer_path(onnx_path: str | os.PathLike, sidecar: Dict[str, Any]) -> Path:
    """The tokenizer file the sidecar names, resolved beside the ONNX file."""
    return Path(onnx_path).parent / sidecar["tokenizer"]


def write_onnx_sidecar(onnx_path: str | os.PathLike, data: Dict[str, Any]) -> Path:
    """Validate ``data`` and write it atomically beside ``onnx_path``; returns the sidecar path.

    ``format`` and ``version`` are filled in when missing, so writers only supply content.
    """
    path = sidecar_path(onnx_path)
    data = {"format": SIDECAR_FORMAT, "version": SIDECAR_VERSION, **data}
    validate_onnx_sidecar(data, path)
    return atomic_write_json(path, data)


def load_onnx_sidecar(
    onnx_path: str | os.PathLike, kind: str | None = None, check_hash: bool = False
) -> Dict[str, Any]:
    """Read and validate the sidecar of ``onnx_path``.

    kind: when given, a sidecar of another kind is an error. check_hash: also compare
    ``onnx_sha256`` with the ONNX file on disk (catches a graph replaced after export).
    """
    path = sidecar_path(onnx_path)
    if not path.exists() and not Path(onnx_path).exists():  # the graph itself is what is missing
        raise ToolkitError(f"ONNX file not found: {onnx_path}")
    data = read_json(path, what="ONNX sidecar")
    validate_onnx_sidecar(data, path)
    if kind is not None and data["kind"] != kind:
        raise ToolkitError(
            f"ONNX sidecar {path} describes a {data['kind']} model; expected a {kind}"
        )
    if check_hash:
        onnx_file = Path(onnx_path)
        if not onnx_file.is_file():
            raise ToolkitError(f"ONNX file not found: {onnx_file}")
        actual = cached_sha256(onnx_file)
        if actual != data["onnx_sha256"]:
            raise ToolkitError(
                f"{onnx_file} does not match its sidecar {path} (onnx_sha256 differs: the "
                f"sidecar names {str(data['onnx_sha256'])[:12]}..., the file hashes to "
                f"{actual[:12]}...; a stale sidecar from another export, or a replaced graph): "
                "re-export the model"
            )
    return data


# (real path, size, mtime_ns, inode) -> sha256: a graph reopened unchanged in this process is
# not hashed again (about 24 ms per 23 MB here). A rewrite changes mtime or inode (our
# atomic writes rename a new file in), which misses the cache. Filesystem clocks tick in
# milliseconds, so a file modified in the last 2 s is not cached: an in-place rewrite of the
# same size within one tick would otherwise keep its old hash (git's "racy" case).
_SHA256_CACHE: Dict[Tuple[str, int, int, int], str] = {}
_RACY_SECONDS = 2.0


def cached_sha256(path: str | os.PathLike) -> str:
    """sha256 of ``path``, remembered per (real path, size, mtime, inode) for this process."""
    real = os.path.realpath(path)
    stat = os.stat(real)
    key = (real, stat.st_size, stat.st_mtime_ns, stat.st_ino)
    digest = _SHA256_CACHE.get(key)
    if digest is None:
        digest = sha256_file(real)
        if time.time() - stat.st_mtime > _RACY_SECONDS:
            _SHA256_CACHE[key] = digest
    return digest


def validate_onnx_sidecar(data: Any, path: str | os.PathLike) -> None:
    """Raise a one-line ToolkitError naming ``path`` at the first problem found."""
    if not isinstance(data, dict):
        raise ToolkitError(f"ONNX sidecar {path}: expected a JSON object")
    if data.get("format") != SIDECAR_FORMAT:
        raise ToolkitError(
            f"ONNX sidecar {path}: format {data.get('format')!r}, expected {SIDECAR_FORMAT!r}"
        )
    if data.get("version") != SIDECAR_VERSION:
        raise ToolkitError(
            f"ONNX sidecar {path}: version {data.get('version')!r}, expected {SIDECAR_VERSION}"
        )
    kind = data.get("kind")
    if kind not in KINDS:
        raise ToolkitError(f"ONNX sidecar {path}: kind {kind!r}, expected one of {list(KINDS)}")
    missing = [k for k in COMMON_KEYS + KIND_KEYS[kind] if k not in data]
    if missing:
        raise ToolkitError(f"ONNX sidecar {path}: missing keys {missing}")
    _validate_tensors(data, path)
    _validate_axes(data, path, KIND_AXES[kind])
    _validate_tensorrt_keys(data, path)
    _validate_text_keys(data, path)
    if kind == "decoder":
        cache = data["kv_cache"]
        missing = [k for k in ("layers", "kv_dim", "layout", "dtype") if k not in cache]
        if missing:
            raise ToolkitError(f"ONNX sidecar {path}: kv_cache lacks {missing}")
        if cache["layout"] != "position-major":
            raise ToolkitError(
                f"ONNX sidecar {path}: kv_cache layout {cache['layout']!r}, "
                "expected 'position-major'"
            )


def _validate_tensors(data: Dict[str, Any], path) -> None:
    for key in ("inputs", "outputs"):
        tensors = data[key]
        if not isinstance(tensors, list) or not tensors:
            raise ToolkitError(f"ONNX sidecar {path}: {key} must be a non-empty list")
        for t in tensors:
            if not isinstance(t, dict) or not {"name", "dtype", "shape"} <= set(t):
                raise ToolkitError(f"ONNX sidecar {path}: each of {key} needs name, dtype, shape")


def _validate_tensorrt_keys(data: Dict[str, Any], path) -> None:
    """``tensorrt_target``, ``keep_fp32`` and ``tensorrt_parse``, when present."""
    target = data.get("tensorrt_target")
    if target is not None:
        if not isinstance(target, dict) or \
                TENSORRT_TARGETS.get(target.get("min_tensorrt")) != target.get("layernorm"):
            raise ToolkitError(
                f"ONNX sidecar {path}: tensorrt_target {target!r}, expected one of "
                + ", ".join(f"{{'min_tensorrt': '{v}', 'layernorm': '{ln}'}}"
                            for v, ln in TENSORRT_TARGETS.items()))
    keep = data.get("keep_fp32")
    if keep is not None:
        tensors = keep.get("tensors") if isinstance(keep, dict) else None
        if not (isinstance(tensors, list) and all(isinstance(t, str) for t in tensors)):
            raise ToolkitError(f"ONNX sidecar {path}: keep_fp32 must be an object whose "
                               "'tensors' is a list of tensor names")
    parse = data.get("tensorrt_parse")
    if parse is not None and not (isinstance(parse, dict)
                                  and isinstance(parse.get("verdicts"), dict)):
        raise ToolkitError(f"ONNX sidecar {path}: tensorrt_parse must be an object with "
                           "'verdicts' per TensorRT version (common.trt_onnx.parse_report)")


def _validate_axes(data: Dict[str, Any], path, required: Tuple[str, ...]) -> None:
    axes = data["dynamic_axes"]
    if not isinstance(axes, dict):
        raise ToolkitError(f"ONNX sidecar {path}: dynamic_axes must be an object")
    for name in required:
        if name not in axes:
            raise ToolkitError(f"ONNX sidecar {path}: dynamic_axes lacks {name!r}")
        lo, hi = axes[name].get("min"), axes[name].get("max")
        if not (isinstance(lo, int) and isinstance(hi, int) and 0 <= lo <= hi):
            raise ToolkitError(
                f"ONNX sidecar {path}: dynamic_axes[{name!r}] = {axes[name]}, "
                "expected 0 <= min <= max"
            )


def axis_range(sidecar: Dict[str, Any], axis: str) -> Tuple[int, int]:
    """(min, max) of a named dynamic axis, e.g. ``axis_range(sc, "batch") -> (1, 64)``."""
    axes = sidecar.get("dynamic_axes", {})
    if axis not in axes:
        raise ToolkitError(f"ONNX sidecar has no dynamic axis {axis!r}; it has {sorted(axes)}")
    return int(axes[axis]["min"]), int(axes[axis]["max"])


# --- issue 23's optional keys: validation, and the defaults of sidecars written before them ---
def _validate_text_keys(data: Dict[str, Any], path) -> None:
    text = data.get("text")
    if text is not None and not (isinstance(text, dict) and all(
            text.get(k) in v for k, v in TEXT_CHOICES.items())):
        raise ToolkitError(f"ONNX sidecar {path}: text {text!r}, expected "
                           + ", ".join(f"{k} in {list(v)}" for k, v in TEXT_CHOICES.items()))
    prompt = data.get("prompt")
    if prompt is not None and not (
            isinstance(prompt, dict) and _int_list(prompt.get("prefix_ids"))
            and isinstance(prompt.get("add_special_tokens"), bool)):
        raise ToolkitError(f"ONNX sidecar {path}: prompt {prompt!r}, expected "
                           "{'prefix_ids': [int, ...], 'add_special_tokens': true|false}")
    if "eos_ids" in data and not _int_list(data["eos_ids"]):
        raise ToolkitError(f"ONNX sidecar {path}: eos_ids {data['eos_ids']!r}, expected a list "
                           "of token ids")
    head = data.get("head")
    if head is not None and not (
            isinstance(head, dict) and head.get("problem_type") in HEAD_PROBLEMS
            and _number(head.get("threshold", 0.5))):
        raise ToolkitError(f"ONNX sidecar {path}: head {head!r}, expected problem_type in "
                           f"{list(HEAD_PROBLEMS)} and a numeric threshold")


def _int_list(value: Any) -> bool:
    """A list of ids >= 0; a JSON true/false is not an id (bool is an int subclass)."""
    return isinstance(value, list) and all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def text_rules(sidecar: Dict[str, Any]) -> Dict[str, str]:
    """How a classifier's texts become ids; an old sidecar is one of our IMDB models."""
    return {**OWN_TEXT, **(sidecar.get("text") or {})}


def prompt_rules(sidecar: Dict[str, Any]) -> Dict[str, Any]:
    """How a decoder's prompt becomes ids; an old sidecar: ``<|endoftext|>`` first (TinyStories
    streams start every story after one), the tokenizer's own special tokens off."""
    prompt = sidecar.get("prompt")
    if prompt is not None:
        return {"prefix_ids": list(prompt["prefix_ids"]),
                "add_special_tokens": bool(prompt["add_special_tokens"])}
    eos = (sidecar.get("special_tokens") or {}).get("eos_id")
    return {"prefix_ids": [] if eos is None else [int(eos)], "add_special_tokens": False}


def stop_ids(sidecar: Dict[str, Any]) -> List[int]:
    """Every id that ends generation: ``eos_ids``, else the special tokens' ``eos_id``."""
    if "eos_ids" in sidecar:
        return [int(i) for i in sidecar["eos_ids"]]
    eos = (sidecar.get("special_tokens") or {}).get("eos_id")
    return [] if eos is None else [int(eos)]


def head_rules(sidecar: Dict[str, Any]) -> Dict[str, Any]:
    """A classifier head's problem type and multi-label threshold (old sidecar: single-label)."""
    head = sidecar.get("head") or {}
    return {"problem_type": head.get("problem_type", HEAD_PROBLEMS[0]),
            "threshold": float(head.get("threshold", 0.5))}


def check_class_head(sidecar: Dict[str, Any]) -> None:
    """Refuse a classifier whose outputs are not class scores: accuracy on class labels (the
    calibration gate, the benchmarks' accuracy) is undefined for a regression head."""
    if head_rules(sidecar)["problem_type"] == REGRESSION:
        raise ToolkitError("accuracy of a regression head (num_labels 1: one raw score per text) "
                           "is not defined on class labels; evaluate it with its own metric")


def check_single_text_inputs(sidecar: Dict[str, Any], what: str) -> None:
    """Refuse a sentence-pair model (a ``token_type_ids`` input) where ``what`` only has single
    texts, before ONNX Runtime finds the input missing."""
    if any(t.get("name") == "token_type_ids" for t in sidecar.get("inputs", [])):
        raise ToolkitError(f"{what}: the model reads sentence pairs (a token_type_ids input) and "
                           "pair models need pair data; this data has single texts (export the "
                           "model without --sentence-pairs to use it here)")
