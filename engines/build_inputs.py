"""What an engine build decides before any TensorRT or Polygraphy call, in this order:

1. the precision plan for this TensorRT version (engines/builder_config.py), which says which
   graph is parsed: the FP32 ONNX, the Q/DQ ONNX (int8 from Q/DQ) or, on TensorRT 11, the FP16
   ONNX (fp16 is strongly typed there, its types come from the graph);
2. that graph and its sidecar, checked against the FP32 one (precision, same inputs);
3. the TensorRT parse check of that very graph (``common.trt_onnx.check_onnx_for_tensorrt``):
   a graph this TensorRT's ONNX parser cannot import is refused here, in one line, before
   anything is loaded or built.

``prepare_build`` does all three and returns ``BuildInputs``; ``engines.build.build_engine``
calls it first, right after the TensorRT version is known. Standard library only (plus the
parse check's own lazy onnx import when a sidecar has no facts), so it is tested without
TensorRT. The manifest records derived here (``network``, ``tensorrt_target``, ``keep_fp32``)
are plain functions too.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List

from common.artifacts import load_onnx_sidecar
from common.errors import ToolkitError
from common.fileio import sha256_file
from engines.builder_config import BuildOptions, PrecisionPlan, plan_precision

# What a sidecar from before the tensorrt_target key was written for: one LayerNormalization
# node per LayerNorm, which TensorRT's ONNX parser imports from 8.6 on.
LEGACY_TENSORRT_TARGET = {"min_tensorrt": "8.6", "layernorm": "LayerNormalization",
                          "note": "sidecar written before tensorrt_target was recorded"}


@dataclass
class BuildInputs:
    """Everything decided before the build: the plan, the graph to parse and its checks."""

    sidecar: Dict[str, Any]  # the FP32 ONNX's sidecar (interface, profiles, tokenizer)
    plan: PrecisionPlan
    source: Path  # the graph TensorRT parses
    source_sidecar: Dict[str, Any]
    parse_note: str  # check_onnx_for_tensorrt's one line
    keep_fp32: List[str] = field(default_factory=list)  # tensors to pin to FP32 (flag builds)

    @property
    def pins_fp32(self) -> bool:
        return bool(self.keep_fp32) and self.plan.lowers_precision_by_flags


def model_name(onnx_path: str | os.PathLike) -> str:
    """``models/imdb.onnx`` -> ``imdb``."""
    name = Path(onnx_path).name
    return name[: -len(".onnx")] if name.endswith(".onnx") else Path(name).stem


def default_fp16_onnx(onnx_path: str | os.PathLike) -> Path:
    """``models/imdb.onnx`` -> ``models/imdb.fp16.onnx`` (what calibration.fp16 writes)."""
    onnx_path = Path(onnx_path)
    return onnx_path.with_name(f"{model_name(onnx_path)}.fp16.onnx")


def prepare_build(onnx_path: str | os.PathLike, options: BuildOptions, trt_version: str, *,
                  qdq_onnx: str | os.PathLike | None = None,
                  fp16_onnx: str | os.PathLike | None = None) -> BuildInputs:
    """Plan, graph to parse, and the parse check of that graph (module docstring)."""
    onnx_path = Path(onnx_path)
    sidecar = load_onnx_sidecar(onnx_path, check_hash=True)
    plan = plan_precision(options, trt_version)
    source, source_sidecar = network_source(onnx_path, sidecar, plan, qdq_onnx, fp16_onnx)
    from common import trt_onnx  # looked up at call time: tests may watch the call

    note = trt_onnx.check_onnx_for_tensorrt(source, source_sidecar, trt_version)
    return BuildInputs(sidecar, plan, source, source_sidecar, note,
                       keep_fp32_tensors(source_sidecar, sidecar))


def network_source(onnx_path: Path, sidecar, plan: PrecisionPlan, qdq_onnx, fp16_onnx):
    """``(graph to parse, its sidecar)`` for ``plan``; refusals name the file and the fix."""
    if plan.use_qdq_onnx:
        return _qdq_source(onnx_path, sidecar, qdq_onnx)
    if plan.use_fp16_onnx:
        return _fp16_source(onnx_path, sidecar, fp16_onnx)
    return onnx_path, sidecar


def _qdq_source(onnx_path: Path, sidecar, qdq_onnx):
    if qdq_onnx is None or not Path(qdq_onnx).is_file():
        raise ToolkitError(f"Q/DQ ONNX not found: {qdq_onnx}; make it with python -m "
                           "calibration.qdq, or use --int8-source calibrate")
    qdq_sidecar = load_onnx_sidecar(qdq_onnx)
    if qdq_sidecar.get("precision", "int8-qdq") != "int8-qdq":
        raise ToolkitError(f"{qdq_onnx}: sidecar precision {qdq_sidecar['precision']!r}, "
                           "expected 'int8-qdq'")
    if _input_names(qdq_sidecar) != _input_names(sidecar):
        raise ToolkitError(f"{qdq_onnx} has other inputs than {onnx_path}: rebuild the Q/DQ "
                           "model from this ONNX")
    return Path(qdq_onnx), qdq_sidecar


def _fp16_source(onnx_path: Path, sidecar, fp16_onnx):
    path = Path(fp16_onnx) if fp16_onnx is not None else default_fp16_onnx(onnx_path)
    fix = (f"make it with python -m calibration.fp16 --onnx {onnx_path} --output {path} "
           "(make calibrate writes models/<name>.fp16.onnx)")
    where = "TensorRT 11 builds fp16 strongly typed from the FP16 ONNX"
    if not path.is_file():
        raise ToolkitError(f"FP16 ONNX not found: {path} ({where}); {fix}")
    try:
        fp16_sidecar = load_onnx_sidecar(path)
    except ToolkitError as exc:
        raise ToolkitError(f"{exc}; {fix}") from None
    if fp16_sidecar.get("precision") != "fp16":
        raise ToolkitError(f"{path}: sidecar precision {fp16_sidecar.get('precision')!r}, "
                           f"expected 'fp16' ({where}); {fix}")
    if _input_names(fp16_sidecar) != _input_names(sidecar):
        raise ToolkitError(f"{path} has other inputs than {onnx_path}: {fix}")
    return path, fp16_sidecar


def _input_names(sidecar) -> List[Any]:
    """Names, dtypes and shapes of the inputs (a feature graph's F is part of its shape), and
    a feature classifier's normalization: a Q/DQ or FP16 graph made from another export of the
    same model (other statistics, other F) is refused."""
    inputs = [(t["name"], t.get("dtype"), list(t.get("shape", []))) for t in sidecar["inputs"]]
    return inputs + [("feature_norm", sidecar.get("feature_norm"))]


def keep_fp32_tensors(source_sidecar, sidecar) -> List[str]:
    """``keep_fp32.tensors`` of the parsed graph's sidecar, else of the FP32 one."""
    for data in (source_sidecar, sidecar):
        keep = data.get("keep_fp32")
        if isinstance(keep, dict) and keep.get("tensors"):
            return [str(name) for name in keep["tensors"]]
    return []


def network_record(inputs: BuildInputs, trt_version: str) -> Dict[str, Any]:
    """The manifest's ``network``: which file was parsed, its hash, the typing mode and why."""
    plan = inputs.plan
    if plan.use_fp16_onnx:
        why = (f"TensorRT {trt_version} has no FP16 flag (strongly typed only): the FP16 ONNX's "
               "types decide, what must stay FP32 is FP32 in it")
    elif plan.use_qdq_onnx and plan.strongly_typed:
        why = "Q/DQ ONNX, strongly typed: its Q/DQ nodes and types decide the precision"
    elif plan.use_qdq_onnx:
        why = f"Q/DQ ONNX with builder flags ({plan.describe()}) on TensorRT {trt_version}"
    elif plan.strongly_typed:
        why = f"TensorRT {trt_version} builds only strongly typed networks: the FP32 graph"
    else:
        why = f"FP32 ONNX with builder flags ({plan.describe()})"
    return {"file": str(inputs.source), "sha256": sha256_file(inputs.source),
            "mode": plan.network_mode, "why": why}


def tensorrt_target_record(sidecar) -> Dict[str, Any]:
    """The export's ``tensorrt_target`` (TensorRT 8.6 and LayerNormalization for old sidecars)."""
    target = sidecar.get("tensorrt_target")
    return dict(target) if isinstance(target, dict) else dict(LEGACY_TENSORRT_TARGET)


def keep_fp32_record(inputs: BuildInputs, pinned: Dict[str, Any]) -> Dict[str, Any]:
    """The manifest's ``keep_fp32``: tensors listed, matched by a layer and pinned, or why not."""
    listed = len(set(inputs.keep_fp32))
    if not inputs.keep_fp32:
        return {"listed": 0, "applied": False, "why": "the sidecar lists no keep_fp32 tensors"}
    if not inputs.pins_fp32:
        why = ("strongly typed: the graph's own types decide" if inputs.plan.strongly_typed
               else "no FP16/INT8 builder flag: every layer runs FP32 already")
        return {"listed": listed, "applied": False, "why": why}
    return {"listed": listed, "applied": True, "matched": pinned.get("matched", 0),
            "layers": pinned.get("layers", 0), "unmatched": pinned.get("unmatched", []),
            "why": "layer.precision and output types FP32, precision_constraints obey"}


def keep_fp32_warning(record: Dict[str, Any]) -> str | None:
    """One line when some listed keep_fp32 tensors matched no TensorRT layer."""
    unmatched = record.get("unmatched") or []
    if not record.get("applied") or not unmatched:
        return None
    shown = ", ".join(unmatched[:5]) + (", ..." if len(unmatched) > 5 else "")
    return (f"note: keep_fp32: {len(unmatched)} of {record['listed']} listed tensors match no "
            f"TensorRT layer output and stay in the build's precision: {shown}")
