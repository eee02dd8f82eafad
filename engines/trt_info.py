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
from typing import Any, Dict, Tuple

from common.errors import ToolkitError
from common.trt_onnx import version_tuple as parse_version  # the parse table's parser too
from jetson import device_state
from jetson.device_state import (  # noqa: F401  (the engines' names for them)
    module_has_no_dla,
    parse_l4t_core_package,
    parse_tegra_release,
)

UNKNOWN = "unknown"


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


# DLA on Jetson (TensorRT 11.4.1 release notes and "Working with DLA"): 8.5 through 10.x build
# DLA engines (10.7 is the last 10.x release that shipped with DLA, on JetPack 6; later 10.x
# devices report 0 DLA cores, which check_dla refuses); 11.0 through 11.4.0 have no DLA on
# Jetson; 11.4.1 brought DLA back on Jetson AGX Orin only, with JetPack 7.2.2 or later; 11.5
# dropped JetPack altogether, so DLA ends with the 11.4.x releases.
DLA_RETURNED_IN = (11, 4, 1)
DLA_LAST_MINOR = (11, 4)  # the last TensorRT minor release for JetPack (11.5 dropped it)
DLA_RETURN_JETPACK = (7, 2, 2)
DLA_RETURN_MODULE = "agx orin"  # the only module with DLA under TensorRT 11.4.1+
DLA_RULE = ("DLA is in 8.5..10.x, and in 11.4.1..11.4.x on Jetson AGX Orin with JetPack 7.2.2+; "
            "11.0..11.4.0 have none and 11.5 dropped JetPack")


def has_dla_builds(version: str) -> bool:
    """TensorRT ``version`` builds DLA engines somewhere: 8.5..10.x, and 11.4.x from 11.4.1."""
    if not at_least(version, (11,)):
        return True
    return at_least(version, DLA_RETURNED_IN) and parse_version(version)[:2] == DLA_LAST_MINOR


def dla_platform_problem(version: str, module: str | None, jetpack: str | None) -> str | None:
    """Why this TensorRT on this module/JetPack builds no DLA engine, or None when it may.

    Unknown module or JetPack (``None``/``"unknown"``) is not held against the build: the
    builder's ``num_DLA_cores`` decides then.
    """
    if not has_dla_builds(version):
        return f"TensorRT {version} builds no DLA engines ({DLA_RULE})"
    if not at_least(version, DLA_RETURNED_IN):
        return None
    if module and module != UNKNOWN and DLA_RETURN_MODULE not in module.lower():
        return (f"TensorRT {version} has DLA only on Jetson AGX Orin; this device is {module}")
    if jetpack and jetpack != UNKNOWN and _version_or_none(jetpack) is not None \
            and _version_or_none(jetpack) < DLA_RETURN_JETPACK:
        return (f"TensorRT {version} has DLA on AGX Orin only with JetPack 7.2.2 or later; "
                f"this device has JetPack {jetpack}")
    return None


# Polygraphy's floor, everywhere (requirements, pyproject, the build's check): 0.49.0 and 0.49.9
# read IBuilderConfig.int8_calibrator unguarded and 0.49.26 still reads layer.precision_is_set
# unguarded in CreateConfig (config.py, _CreateConfigCommon.call_impl); TensorRT 11 removed both,
# so every build fails with an AttributeError. 0.50.3 is the first release that guards both
# (try/except AttributeError, and fail_unavailable for the calibrator).
POLYGRAPHY_FLOOR = (0, 50, 3)


def polygraphy_problem(polygraphy_version: str, trt_version: str) -> str | None:
    """Why this Polygraphy cannot build with this TensorRT, or None when it can."""
    if not at_least(trt_version, (11,)):
        return None
    found = _version_or_none(polygraphy_version)
    if found is None or found[:3] >= POLYGRAPHY_FLOOR:
        return None
    floor = ".".join(map(str, POLYGRAPHY_FLOOR))
    return (f"Polygraphy {polygraphy_version} cannot build with TensorRT {trt_version} (it reads "
            f"layer.precision_is_set and config.int8_calibrator, which TensorRT 11 removed): "
            f"pip install 'polygraphy>={floor}'")


def _version_or_none(version: str) -> Tuple[int, ...] | None:
    try:
        return parse_version(version)
    except ToolkitError:
        return None


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


def jetson_info(root: str = "/") -> Dict[str, Any] | None:
    """Module, L4T, JetPack and SoC of this Jetson (``jetson.device_state``), or None when this is
    not a Jetson; an unknown field reads ``"unknown"``, as the manifest records strings."""
    info = device_state.jetson_info(root)
    if info is None:
        return None
    return {key: UNKNOWN if value is None else value for key, value in info.items()}


def device_summary() -> Dict[str, Any]:
    """Everything the manifest records about the build machine: TensorRT, the GPU, the Jetson
    identity, and the whole device state (power mode, clocks locked, frequencies) at build time."""
    return {"tensorrt_version": tensorrt_version() or UNKNOWN, "gpu": gpu_info(),
            "jetson": jetson_info(), "device_state": device_state.collect()}
