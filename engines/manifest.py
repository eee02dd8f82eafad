"""The engine manifest: ``<plan>.json`` beside every TensorRT plan, and the checks that read it.

A plan only deserializes under the TensorRT version and on the GPU it was built for, and a
mismatch crashes or fails deep inside ``deserialize_cuda_engine``. The manifest records what
the plan was built with (TensorRT, GPU, JetPack, precision, INT8 source, profiles, I/O, hashes,
build options), so ``runtime/`` can refuse a wrong plan with one clear line first:

    manifest = check_plan_file(plan)            # file present, manifest present, hash matches
    check_compatible(manifest, trt.__version__, gpu_name, compute_capability)

Standard library only (Python 3.8, no TensorRT needed), so it runs before anything heavy.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Dict

from common.errors import ToolkitError
from common.fileio import atomic_write_json, read_json, sha256_file
from engines import trt_info

MANIFEST_FORMAT = "jetson-toolkit/engine-manifest"
MANIFEST_VERSION = 1
# A serialized engine is kilobytes at least; anything this short is a truncated or empty write.
MIN_PLAN_BYTES = 64
REQUIRED_KEYS = (
    "format", "version", "plan", "plan_bytes", "plan_sha256", "tensorrt_version", "gpu",
    "precision", "int8", "profiles", "inputs", "outputs", "onnx", "build_options",
    "created_at",
)
REBUILD_HINT = "rebuild it with make engine (python -m engines.build) on this device"
# Optional sections (manifests from before they existed stay valid): which graph was parsed and
# how it was typed, the export's TensorRT target, the parse check's note and the keep_fp32 count.
NETWORK_MODES = ("flags", "strongly-typed")


def manifest_path(plan_path: str | os.PathLike) -> Path:
    """``engines/imdb.int8.plan`` -> ``engines/imdb.int8.plan.json``."""
    plan_path = Path(plan_path)
    return plan_path.with_name(plan_path.name + ".json")


def write_manifest(plan_path: str | os.PathLike, data: Dict[str, Any]) -> Path:
    """Validate ``data`` and write it atomically beside the plan; returns the manifest path.

    ``format``/``version`` are filled in, and ``plan``/``plan_bytes``/``plan_sha256`` are taken
    from the plan file itself, so the manifest always describes the bytes on disk.
    """
    plan_path = Path(plan_path)
    if not plan_path.is_file():
        raise ToolkitError(f"cannot write a manifest for {plan_path}: the plan file does not exist")
    full = {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, **data,
            "plan": plan_path.name, "plan_bytes": plan_path.stat().st_size,
            "plan_sha256": sha256_file(plan_path)}
    path = manifest_path(plan_path)
    validate_manifest(full, path)
    return atomic_write_json(path, full)


def load_manifest(plan_path: str | os.PathLike) -> Dict[str, Any]:
    """Read and validate the manifest of ``plan_path`` (one-line ToolkitError naming the file)."""
    path = manifest_path(plan_path)
    if not path.is_file():
        raise ToolkitError(f"engine {plan_path} has no manifest {path.name}: it records the "
                           f"TensorRT version and GPU the plan needs; {REBUILD_HINT}")
    data = read_json(path, what="engine manifest")
    validate_manifest(data, path)
    return data


def validate_manifest(data: Any, path: str | os.PathLike) -> None:
    if not isinstance(data, dict):
        raise ToolkitError(f"engine manifest {path}: expected a JSON object")
    if data.get("format") != MANIFEST_FORMAT:
        raise ToolkitError(f"engine manifest {path}: format {data.get('format')!r}, "
                           f"expected {MANIFEST_FORMAT!r}")
    if data.get("version") != MANIFEST_VERSION:
        raise ToolkitError(f"engine manifest {path}: version {data.get('version')!r}, "
                           f"expected {MANIFEST_VERSION}")
    missing = [key for key in REQUIRED_KEYS if key not in data]
    if missing:
        raise ToolkitError(f"engine manifest {path}: missing keys {missing}")
    gpu = data["gpu"]
    if not isinstance(gpu, dict) or not {"name", "compute_capability"} <= set(gpu):
        raise ToolkitError(f"engine manifest {path}: gpu must hold name and compute_capability")
    if not isinstance(data["profiles"], list) or not data["profiles"]:
        raise ToolkitError(f"engine manifest {path}: profiles must be a non-empty list")
    network = data.get("network")
    if network is not None:
        if not isinstance(network, dict) or not {"file", "sha256", "mode"} <= set(network):
            raise ToolkitError(f"engine manifest {path}: network must hold file, sha256 and mode")
        if network["mode"] not in NETWORK_MODES:
            raise ToolkitError(f"engine manifest {path}: network mode {network['mode']!r}, "
                               f"expected one of {list(NETWORK_MODES)}")
    keep = data.get("keep_fp32")
    if keep is not None and (not isinstance(keep, dict) or "listed" not in keep):
        raise ToolkitError(f"engine manifest {path}: keep_fp32 must hold the listed count")


def check_plan_file(plan_path: str | os.PathLike) -> Dict[str, Any]:
    """The plan exists, has a manifest, and is the very file the manifest describes.

    Returns the manifest. Catches a missing plan, a missing manifest, an empty or truncated
    plan and a plan replaced or corrupted after the build (size or sha256 differ).
    """
    plan_path = Path(plan_path)
    if not plan_path.is_file():
        raise ToolkitError(f"engine plan not found: {plan_path}; build it with make engine")
    manifest = load_manifest(plan_path)
    size = plan_path.stat().st_size
    if size < MIN_PLAN_BYTES:
        raise ToolkitError(f"engine {plan_path} is empty or truncated ({size} bytes); "
                           f"{REBUILD_HINT}")
    if size != manifest["plan_bytes"] or sha256_file(plan_path) != manifest["plan_sha256"]:
        raise ToolkitError(f"engine {plan_path} does not match its manifest (size or sha256 "
                           f"differ: replaced or corrupted after the build); {REBUILD_HINT}")
    return manifest


def check_compatible(
    manifest: Dict[str, Any], trt_version: str, gpu_name: str, compute_capability: str
) -> None:
    """Refuse a plan built for another TensorRT release or GPU.

    TensorRT versions must agree on every component both name (``10.3`` matches ``10.3.0.30``).
    The compute capability must match, and so must the GPU name once vendor prefixes and driver
    suffixes are dropped (``NVIDIA Orin (nvgpu)`` equals ``Orin``). A value recorded as
    "unknown" on either side cannot be compared and is not held against the plan: TensorRT's
    own deserialization check remains the last line there.
    """
    built_trt = str(manifest.get("tensorrt_version", trt_info.UNKNOWN))
    built_gpu = manifest.get("gpu", {})
    built_name = str(built_gpu.get("name", trt_info.UNKNOWN))
    built_cc = str(built_gpu.get("compute_capability", trt_info.UNKNOWN))
    problems = []
    if not (_same_release(built_trt, trt_version) or
            (is_version_compatible(manifest) and
             (not _known(built_trt, trt_version) or
              version_compatible_loads(built_trt, trt_version)))):
        problems.append("TensorRT")
    if _known(built_cc, compute_capability) and built_cc != str(compute_capability):
        problems.append("compute capability")
    if _known(built_name, gpu_name) and _gpu_key(built_name) != _gpu_key(gpu_name):
        problems.append("GPU")
    if problems:
        plan = manifest.get("plan", "this plan")
        raise ToolkitError(
            f"engine {plan} was built with TensorRT {built_trt} for {built_name} ({built_cc}); "
            f"this device has TensorRT {trt_version} and {gpu_name} ({compute_capability}) "
            f"[{', '.join(problems)} differ]: {REBUILD_HINT}")


def check_engine_for_this_device(plan_path: str | os.PathLike) -> Dict[str, Any]:
    """check_plan_file + check_compatible against the TensorRT and GPU found here."""
    manifest = check_plan_file(plan_path)
    version = trt_info.tensorrt_version()
    if version is None:
        raise ToolkitError(f"cannot run engine {plan_path}: TensorRT is not installed "
                           "(import tensorrt failed)")
    gpu = trt_info.gpu_info()
    check_compatible(manifest, version, gpu["name"], gpu["compute_capability"])
    return manifest


def _known(*values: str) -> bool:
    return all(v and str(v) != trt_info.UNKNOWN for v in values)


def _same_release(built: str, here: str) -> bool:
    if not _known(built, here):
        return True
    a, b = trt_info.parse_version(built), trt_info.parse_version(here)
    n = min(len(a), len(b))
    return a[:n] == b[:n]


def is_version_compatible(manifest: Dict[str, Any]) -> bool:
    """The plan was built with --version-compatible (it embeds TensorRT's lean runtime)."""
    return bool(manifest.get("version_compatible") or
                (manifest.get("build_options") or {}).get("version_compatible"))


# TensorRT's rule for version-compatible plans ("Engine Portability" in the TensorRT 11.4.1
# support matrix, "Version Compatibility" in the 10.16 developer guide): built with 8.6 or
# later, the plan runs on a later TensorRT of the same major version, and across major versions
# only from 8 to 9, 8 to 10 and 10 to 11 ("a TensorRT 8 engine cannot run with TensorRT 11").
# The one copy of the rule: triton_repo/preflight.py (run_triton.sh) imports it from here.
VERSION_COMPATIBLE_BUILT_FROM = (8, 6)
VERSION_COMPATIBLE_ACROSS_MAJORS = ((8, 9), (8, 10), (10, 11))


def version_compatible_loads(built: str, here: str) -> bool:
    """True when a version-compatible plan built with TensorRT ``built`` runs on ``here``."""
    a, b = trt_info.parse_version(built), trt_info.parse_version(here)
    if a[:2] < VERSION_COMPATIBLE_BUILT_FROM:
        return False  # before 8.6 there is no version-compatible plan
    if a[0] == b[0]:
        return b >= a
    return (a[0], b[0]) in VERSION_COMPATIBLE_ACROSS_MAJORS


def _gpu_key(name: str) -> str:
    """Comparable GPU name: no vendor prefix, no parenthesised driver suffix, one case."""
    name = re.sub(r"\(.*?\)", " ", name).lower()
    name = re.sub(r"\bnvidia\b", " ", name)
    return " ".join(name.split())
