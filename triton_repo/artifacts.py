"""The artifacts a repository serves, found and checked before anything is written.

A served model is one of:
- an ONNX file with its sidecar (``<name>.onnx.json``) and the tokenizer the sidecar names;
- a TensorRT plan with its manifest (``<plan>.json``), which names the ONNX the plan was built
  from; that ONNX, its sidecar and its tokenizer must be there too and match the hashes the
  manifest and the sidecar record, so a repository never serves an engine beside a tokenizer
  or label list of another export.

Every problem is a one-line ``ToolkitError`` naming the file. Standard library only (the
sidecar/manifest readers are too), so this runs anywhere.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

from common.artifacts import load_onnx_sidecar, tokenizer_path
from common.errors import ToolkitError
from common.fileio import sha256_file

ONNX_SUFFIXES = (".onnx",)
PLAN_SUFFIXES = (".plan", ".engine")


@dataclass(frozen=True)
class ModelArtifacts:
    """One served model: the file Triton or the python model opens, and what describes it."""

    kind: str  # "classifier" | "decoder"
    model: Path  # the file served: .onnx (ONNX Runtime) or .plan (TensorRT)
    onnx: Path  # the ONNX (the model itself, or the one the plan was built from)
    sidecar: Dict[str, Any]  # the ONNX sidecar
    tokenizer: Path  # the tokenizer file the sidecar names
    manifest: Optional[Dict[str, Any]] = None  # the engine manifest, for a plan

    @property
    def is_plan(self) -> bool:
        return self.manifest is not None


def resolve_model(path: str | os.PathLike, kind: str, allow_plan: bool,
                  allow_onnx: bool, option: str) -> ModelArtifacts:
    """Check ``path`` (an ONNX or a plan) and everything it depends on.

    option: the command-line option that gave the path (``--imdb``), for the messages.
    """
    path = Path(path)
    if path.suffix in PLAN_SUFFIXES and allow_plan:
        return _resolve_plan(path, kind, option)
    if path.suffix in ONNX_SUFFIXES and allow_onnx:
        return _resolve_onnx(path, kind, option)
    wanted = [s for s, ok in ((".plan/.engine", allow_plan), (".onnx", allow_onnx)) if ok]
    raise ToolkitError(f"{option} {path}: expected a {' or '.join(wanted)} file for this target")


def _resolve_onnx(onnx: Path, kind: str, option: str) -> ModelArtifacts:
    if not onnx.is_file():
        raise ToolkitError(f"{option} {onnx}: ONNX file not found")
    sidecar = load_onnx_sidecar(onnx, kind=kind, check_hash=True)
    return ModelArtifacts(kind, onnx, onnx, sidecar, _checked_tokenizer(onnx, sidecar))


def _resolve_plan(plan: Path, kind: str, option: str) -> ModelArtifacts:
    from engines.manifest import check_plan_file, manifest_path

    manifest = check_plan_file(plan)  # plan present, manifest present, plan sha256 matches
    built_kind = manifest.get("kind") or (manifest.get("sidecar") or {}).get("kind")
    if built_kind != kind:
        raise ToolkitError(f"{option} {plan}: the engine is a {built_kind} model "
                           f"({manifest_path(plan).name}); expected a {kind}")
    onnx = _manifest_onnx(plan, manifest)
    claimed = str((manifest.get("onnx") or {}).get("sha256", ""))
    actual = sha256_file(onnx)
    if actual != claimed:
        raise ToolkitError(
            f"engine {plan} was built from an ONNX with sha256 {claimed[:12]}..., but {onnx} has "
            f"sha256 {actual[:12]}... (re-exported after the build?): rebuild the engine from it")
    sidecar = load_onnx_sidecar(onnx, kind=kind, check_hash=True)
    return ModelArtifacts(kind, plan, onnx, sidecar, _checked_tokenizer(onnx, sidecar), manifest)


def _manifest_onnx(plan: Path, manifest: Dict[str, Any]) -> Path:
    """The ONNX a manifest names: as recorded (relative to the plan's folder or to here), or a
    file of that name beside the plan (an engine folder copied to the device with its ONNX)."""
    recorded = (manifest.get("onnx") or {}).get("path")
    if not recorded:
        raise ToolkitError(f"engine manifest of {plan} names no ONNX (onnx.path): rebuild it")
    recorded = Path(recorded)
    candidates: List[Path] = [plan.parent / recorded, recorded, plan.parent / recorded.name]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ToolkitError(f"engine {plan} was built from {recorded}, which is not found (looked "
                       f"beside the plan too): copy that ONNX and its sidecar next to the plan")


def _checked_tokenizer(onnx: Path, sidecar: Dict[str, Any]) -> Path:
    path = tokenizer_path(onnx, sidecar)
    if not path.is_file():
        raise ToolkitError(f"tokenizer {path} named by the sidecar of {onnx} is not found")
    expected = sidecar.get("tokenizer_sha256")
    if expected and sha256_file(path) != expected:
        raise ToolkitError(f"tokenizer {path} does not match the sidecar of {onnx} "
                           "(tokenizer_sha256 differs): re-export the model with its tokenizer")
    return path


# -- what the configs read from a model's description -----------------------------------------

def classifier_profile(art: ModelArtifacts) -> Dict[str, Any]:
    """Batch and sequence limits of the classifier: from the engine's first optimization profile
    for a plan, from the sidecar's axis ranges for an ONNX (ONNX Runtime has no profiles;
    opt = max as in runtime.ort_backend)."""
    if art.is_plan:
        shapes = _plan_profile_shapes(art, "input_ids")
        (b_min, s_min), (b_opt, s_opt), (b_max, s_max) = shapes
    else:
        axes = art.sidecar["dynamic_axes"]
        b_min, b_max = int(axes["batch"]["min"]), int(axes["batch"]["max"])
        s_min, s_max = int(axes["seq"]["min"]), int(axes["seq"]["max"])
        b_opt, s_opt = b_max, s_max
    return {"batch": (b_min, b_opt, b_max), "seq": (s_min, s_opt, s_max)}


def _plan_profile_shapes(art: ModelArtifacts, tensor: str):
    profiles = art.manifest["profiles"]
    shapes = (profiles[0].get("shapes") or {}).get(tensor)
    if not shapes or not all(k in shapes for k in ("min", "opt", "max")):
        raise ToolkitError(f"engine manifest of {art.model}: profile 0 has no min/opt/max shapes "
                           f"for {tensor!r}: rebuild the engine")
    ranks = {len(shapes[k]) for k in ("min", "opt", "max")}
    if ranks != {2}:
        raise ToolkitError(f"engine manifest of {art.model}: {tensor!r} profile shapes "
                           f"{shapes} are not (batch, seq)")
    return tuple(tuple(int(d) for d in shapes[k]) for k in ("min", "opt", "max"))


def dla_core(art: ModelArtifacts) -> Optional[int]:
    """The DLA core the engine was built for (``--dla-core``), None for a GPU engine."""
    if not art.is_plan:
        return None
    core = (art.manifest.get("build_options") or {}).get("dla_core")
    return None if core is None else int(core)


def engine_dtype(art: ModelArtifacts, tensor: str) -> str:
    """numpy-style dtype name of a tensor: the engine's own I/O for a plan when the manifest
    recorded it (an engine may choose fp16 I/O), else the sidecar's."""
    if art.is_plan:
        for t in (art.manifest.get("engine_io") or {}).get("tensors", []):
            if t.get("name") == tensor:
                return str(t["dtype"])
    for t in art.sidecar["inputs"] + art.sidecar["outputs"]:
        if t["name"] == tensor:
            return str(t["dtype"])
    raise ToolkitError(f"{art.model}: no tensor {tensor!r} in its description")
