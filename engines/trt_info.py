"""What this machine offers for building and running engines: the TensorRT version and the
features that depend on it, the GPU (name, compute capability) and, on a Jetson, the module,
L4T and JetPack release.

Everything here works without TensorRT or a GPU: a missing piece reads as ``None`` or
``"unknown"``, so the manifest can be written and checked anywhere. The version rules are plain
functions of a version string, so they are tested on any machine.
"""
from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any, Dict, Tuple

from common.errors import ToolkitError

UNKNOWN = "unknown"

# L4T release -> JetPack release, for the releases the toolkit supports (DESIGN.md table).
L4T_TO_JETPACK = {
    "35.1.0": "5.0.2", "35.2.1": "5.1", "35.3.1": "5.1.1", "35.4.1": "5.1.2",
    "35.5.0": "5.1.3", "35.6.0": "5.1.4", "36.3.0": "6.0", "36.4.0": "6.1",
    "36.4.3": "6.2", "36.4.4": "6.2.1", "38.2.0": "7.0",
}


def parse_version(version: str) -> Tuple[int, ...]:
    """``"10.3.0.30"`` -> ``(10, 3, 0, 30)``; non-numeric tails (``"8.6.2.3-1"``) dropped."""
    parts = []
    for piece in str(version).split("."):
        match = re.match(r"\d+", piece)
        if not match:
            break
        parts.append(int(match.group()))
        if match.group() != piece:  # "3-1+cuda12" ends the version
            break
    if not parts:
        raise ToolkitError(f"TensorRT version {version!r} is not a dotted version number")
    return tuple(parts)


def at_least(version: str, minimum: Tuple[int, ...]) -> bool:
    return parse_version(version)[: len(minimum)] >= minimum


def has_builder_optimization_level(version: str) -> bool:
    """IBuilderConfig.builder_optimization_level arrived in TensorRT 8.6."""
    return at_least(version, (8, 6))


def has_precision_flags(version: str) -> bool:
    """TensorRT 11 is always strongly typed: the FP16/INT8 builder flags are gone."""
    return not at_least(version, (11,))


def has_implicit_int8(version: str) -> bool:
    """Calibrators (implicit INT8) exist through 10.x; TensorRT 11 removed them."""
    return not at_least(version, (11,))


def has_strongly_typed(version: str) -> bool:
    """The STRONGLY_TYPED network flag we rely on for Q/DQ graphs (TensorRT 10 and later)."""
    return at_least(version, (10,))


def has_dla_builds(version: str) -> bool:
    """DLA builds exist up to 10.x; TensorRT 11 dropped DLA."""
    return not at_least(version, (11,))


def tensorrt_version() -> str | None:
    """The installed TensorRT Python bindings' version, or None when ``import tensorrt`` fails."""
    try:
        import tensorrt as trt
    except ImportError:
        return None
    return str(trt.__version__)


def gpu_info() -> Dict[str, str]:
    """``{"name", "compute_capability", "source"}`` of GPU 0: from pycuda, else cuda-python, else
    nvidia-smi, else all "unknown". Jetson GPUs report e.g. ``Orin`` / ``8.7``."""
    for probe in (_gpu_from_pycuda, _gpu_from_cuda_python, _gpu_from_nvidia_smi):
        found = probe()
        if found is not None:
            return found
    return {"name": UNKNOWN, "compute_capability": UNKNOWN, "source": "none"}


def _gpu_from_pycuda() -> Dict[str, str] | None:
    try:
        import pycuda.driver as cuda
    except ImportError:
        return None
    try:
        cuda.init()
        device = cuda.Device(0)
        major, minor = device.compute_capability()
        return {"name": device.name(), "compute_capability": f"{major}.{minor}", "source": "pycuda"}
    except cuda.Error:  # no driver or no device: let the next probe try
        return None


def _gpu_from_cuda_python() -> Dict[str, str] | None:
    try:
        from cuda.bindings import driver
    except ImportError:
        try:
            from cuda import cuda as driver  # cuda-python < 12.6 layout
        except ImportError:
            return None
    ok = driver.CUresult.CUDA_SUCCESS
    try:
        (err,) = driver.cuInit(0)
    except RuntimeError:  # the bindings could not load libcuda
        return None
    if err != ok:
        return None
    err, device = driver.cuDeviceGet(0)
    if err != ok:
        return None
    err_name, raw_name = driver.cuDeviceGetName(256, device)
    attr = driver.CUdevice_attribute
    err_major, major = driver.cuDeviceGetAttribute(
        attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, device)
    err_minor, minor = driver.cuDeviceGetAttribute(
        attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, device)
    if err_name != ok or err_major != ok or err_minor != ok:
        return None
    name = bytes(raw_name).split(b"\0", 1)[0].decode(errors="replace")
    return {"name": name, "compute_capability": f"{major}.{minor}", "source": "cuda-python"}


def _gpu_from_nvidia_smi() -> Dict[str, str] | None:
    out = _run(["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader"])
    if out is None:  # drivers before 510 lack compute_cap: ask for the name alone
        out = _run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"])
    if not out or not out.strip():
        return None
    fields = [f.strip() for f in out.strip().splitlines()[0].split(",")]
    cc = fields[1] if len(fields) > 1 and re.fullmatch(r"\d+\.\d+", fields[1]) else UNKNOWN
    return {"name": fields[0], "compute_capability": cc, "source": "nvidia-smi"}


def _run(cmd) -> str | None:
    """stdout of a probe command, or None when it is absent or fails (probes are optional)."""
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def parse_tegra_release(text: str) -> str | None:
    """``# R36 (release), REVISION: 3.0, ...`` -> ``"36.3.0"``."""
    match = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text)
    if not match:
        return None
    release = f"{match.group(1)}.{match.group(2)}"
    return release if release.count(".") >= 2 else release + ".0"


def parse_l4t_core_package(text: str) -> str | None:
    """``dpkg-query -W nvidia-l4t-core`` output (``nvidia-l4t-core\\t36.3.0-2024...``) -> 36.3.0."""
    match = re.search(r"nvidia-l4t-core\s+(\d+\.\d+(?:\.\d+)?)", text)
    return match.group(1) if match else None


def jetson_info(root: str = "/") -> Dict[str, Any] | None:
    """Module, L4T and JetPack of this Jetson, or None when this is not a Jetson.

    root: where ``etc/`` and ``proc/`` live (tests point it at a fake tree).
    """
    base = Path(root)
    model_file = base / "proc" / "device-tree" / "model"
    release_file = base / "etc" / "nv_tegra_release"
    model = model_file.read_bytes().rstrip(b"\0").decode(errors="replace").strip() \
        if model_file.is_file() else None
    l4t = parse_tegra_release(release_file.read_text(errors="replace")) \
        if release_file.is_file() else None
    if l4t is None and root == "/":
        out = _run(["dpkg-query", "-W", "nvidia-l4t-core"])
        l4t = parse_l4t_core_package(out) if out else None
    if l4t is None and (model is None or "jetson" not in model.lower()):
        return None
    return {"module": model or UNKNOWN, "l4t": l4t or UNKNOWN,
            "jetpack": L4T_TO_JETPACK.get(l4t or "", UNKNOWN)}


def module_has_no_dla(module: str | None) -> bool:
    """Orin Nano and Thor modules have no DLA (AGX Orin has 2, Orin NX 1 or 2)."""
    name = (module or "").lower()
    return "orin nano" in name or "thor" in name


def device_summary() -> Dict[str, Any]:
    """Everything the manifest records about the build machine."""
    return {"tensorrt_version": tensorrt_version() or UNKNOWN, "gpu": gpu_info(),
            "jetson": jetson_info()}
