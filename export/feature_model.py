"""Export a continuous-feature classifier (``feature_dim > 0``) to ONNX with its sidecar.

Reached through ``python -m export.onnx_model --checkpoint ... --output models/x.onnx``, which
hands a feature checkpoint to ``export_feature_checkpoint``. The graph (CONTRIBUTING.md's
classifier, with features in place of token ids):

| name | dtype | shape |
|---|---|---|
| in `features` | float32 | `[batch, seq, F]` raw features, F fixed |
| in `attention_mask` | int32 | `[batch, seq]` (1 = step, 0 = padding) |
| out `logits` | float32 | `[batch, num_labels]` |

The checkpoint's ``feature_norm`` (training-split mean and std) is the graph's first op,
``(features - mean) / std`` (``export.wrappers.FeatureClassifierForExport``); the sidecar
records it again (``feature_norm``) with ``feature_dim``, ``feature_names`` and ``labels``,
and lists the normalization's outputs in ``keep_fp32`` (raw features may be far outside the
FP16 range; the normalized ones are not). No tokenizer: ``tokenizer``, ``tokenizer_sha256``
and the special token ids are null.
"""
from __future__ import annotations

import hashlib
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

from common.artifacts import (
    SIDECAR_FORMAT,
    SIDECAR_VERSION,
    validate_onnx_sidecar,
    write_onnx_sidecar,
)
from common.errors import ToolkitError
from common.fileio import atomic_write_bytes

INPUT_KIND = "features"


def feature_norm(state: Dict[str, Any], feature_dim: int, where) -> Tuple[List[float], List[float]]:
    """(mean, std) of the checkpoint's ``feature_norm``, each F finite floats, std > 0."""
    import math

    norm = state.get("feature_norm")
    if not isinstance(norm, dict) or "mean" not in norm or "std" not in norm:
        raise ToolkitError(f"checkpoint {where}: no feature_norm {{'mean': [F], 'std': [F]}} "
                           "(the training split's statistics); retrain with train.features")
    mean = [float(v) for v in _flat(norm["mean"])]
    std = [float(v) for v in _flat(norm["std"])]
    if len(mean) != feature_dim or len(std) != feature_dim:
        raise ToolkitError(f"checkpoint {where}: feature_norm has {len(mean)} means and "
                           f"{len(std)} stds; the model takes feature_dim={feature_dim}")
    if not all(math.isfinite(v) for v in mean + std) or min(std) <= 0:
        raise ToolkitError(f"checkpoint {where}: feature_norm holds a non-finite value or a "
                           "std <= 0")
    return mean, std


def _flat(values) -> list:
    if hasattr(values, "tolist"):  # a tensor or an array
        values = values.tolist()
    if not isinstance(values, (list, tuple)):
        raise ToolkitError(f"feature_norm entry {values!r}: expected a list of numbers")
    return list(values)


def feature_names(state: Dict[str, Any], feature_dim: int) -> List[str] | None:
    names = state.get("feature_names")
    if names is None:
        return None
    if not (isinstance(names, (list, tuple)) and len(names) == feature_dim):
        raise ToolkitError(f"checkpoint feature_names {names!r}: expected {feature_dim} names")
    return [str(n) for n in names]


def io_spec(cfg) -> Tuple[List[Dict[str, Any]], List[Dict[str, Any]]]:
    def t(name, dtype, *shape):
        return {"name": name, "dtype": dtype, "shape": list(shape)}

    inputs = [t("features", "float32", "batch", "seq", cfg.feature_dim),
              t("attention_mask", "int32", "batch", "seq")]
    return inputs, [t("logits", "float32", "batch", cfg.num_labels)]


def export_feature_checkpoint(ckpt, output: Path, *, max_batch: int, simplify: bool,
                              check_parity: bool, opset: int, trt_target: str,
                              started: float | None = None) -> Path:
    """Trace, check, compare with PyTorch and write ``output`` and its sidecar (nothing is
    written when a check fails)."""
    from export.onnx_model import tensorrt_fields, trace_checked
    from export.wrappers import FeatureClassifierForExport

    started = time.perf_counter() if started is None else started
    cfg = ckpt.config
    mean, std = feature_norm(ckpt.state, cfg.feature_dim, ckpt.path)
    wrapper = FeatureClassifierForExport(ckpt.model, mean, std).eval()
    inputs, outputs = io_spec(cfg)
    with tempfile.TemporaryDirectory(prefix="onnx-export-") as tmp:
        final = Path(tmp) / "model.onnx"
        simplifier, note = trace_checked(wrapper, final, inputs, outputs, opset, simplify,
                                         output, trt_target)
        shapes_from_input(final)
        export_seconds = time.perf_counter() - started
        parity = None
        if check_parity:
            from export.parity import DEFAULT_BATCHES, check_feature_parity

            batches = sorted({min(b, max_batch) for b in DEFAULT_BATCHES})
            parity = check_feature_parity(ckpt.model, final, mean, std, batches=batches,
                                          where=f"{output} (not written)")
            parity["seconds"] = time.perf_counter() - started - export_seconds
        graph_fields = tensorrt_fields(final, trt_target)
        graph_fields["keep_fp32"] = _keep_normalization_fp32(final, graph_fields["keep_fp32"])
        onnx_bytes = final.read_bytes()
    sidecar = feature_sidecar(ckpt, onnx_bytes, opset, max_batch, mean, std)
    sidecar.update(simplifier=simplifier, simplifier_note=note, export_seconds=export_seconds,
                   parity=parity, **graph_fields)
    validate_onnx_sidecar({"format": SIDECAR_FORMAT, "version": SIDECAR_VERSION, **sidecar},
                          output)
    atomic_write_bytes(output, onnx_bytes)
    write_onnx_sidecar(output, sidecar)
    return output


def shapes_from_input(onnx_path: Path) -> int:
    """Point every Shape node that reads the normalized features at ``features`` itself (same
    shape: the normalization is elementwise). Else the Q/DQ graph's DequantizeLinear of the
    normalized features would feed a Shape as well as the first MatMul, which TensorRT's Q/DQ
    fusion does not take (``calibration.qdq.check_qdq_for_tensorrt``). Returns the count."""
    import onnx

    from export.preflight import FEATURE_INPUT, feature_normalization

    model = onnx.load(str(onnx_path))
    norm = feature_normalization(model.graph)
    if norm is None:
        raise ToolkitError(f"{onnx_path}: the exported feature graph has no (features - mean) / "
                           "std at its input (lost by the simplifier?)")
    moved = 0
    for node in model.graph.node:
        if node.op_type == "Shape" and node.input[0] in norm["tensors"]:
            node.input[0] = FEATURE_INPUT
            moved += 1
    if moved:
        onnx.checker.check_model(model, full_check=True)
        onnx.save(model, str(onnx_path))
    return moved


def _keep_normalization_fp32(onnx_path: Path, keep: Dict[str, Any]) -> Dict[str, Any]:
    """``keep_fp32`` plus the feature normalization's outputs (found again in the final graph:
    the simplifier names the tensors)."""
    import onnx

    from export.preflight import feature_normalization

    norm = feature_normalization(onnx.load(str(onnx_path)).graph)
    if norm is None:
        raise ToolkitError(f"{onnx_path}: the exported feature graph has no (features - mean) / "
                           "std at its input (lost by the simplifier?)")
    keep = dict(keep)
    keep["tensors"] = list(keep.get("tensors", [])) + norm["tensors"]
    keep["feature_normalization"] = norm["tensors"]
    return keep


def feature_sidecar(ckpt, onnx_bytes: bytes, opset: int, max_batch: int, mean, std):
    """The sidecar keys of CONTRIBUTING.md, with nulls for the tokenizer's, and the features'."""
    import onnx
    import torch

    from export.onnx_model import axis_ranges, kind_fields

    cfg = ckpt.config
    inputs, outputs = io_spec(cfg)
    return {
        "kind": cfg.kind, "input_kind": INPUT_KIND, "opset": opset,
        "inputs": inputs, "outputs": outputs, "dynamic_axes": axis_ranges(cfg, max_batch),
        "vocab_size": cfg.vocab_size, "max_seq_len": cfg.max_seq_len,
        "special_tokens": {"pad_id": None, "eos_id": None, "cls_id": None},
        "tokenizer": None, "tokenizer_sha256": None,
        "feature_dim": cfg.feature_dim, "feature_norm": {"mean": mean, "std": std},
        "feature_names": feature_names(ckpt.state, cfg.feature_dim),
        "model_config": ckpt.state["model_config"], "checkpoint": str(ckpt.path),
        "checkpoint_sha256": ckpt.sha256(),
        "onnx_sha256": hashlib.sha256(onnx_bytes).hexdigest(),
        "torch_version": torch.__version__, "onnx_version": onnx.__version__,
        **kind_fields(cfg, ckpt.state, 0),
    }
