"""The TensorRT-touching steps of an engine build, each failure turned into one line.

engines/build.py decides what to build and writes the plan and manifest; these functions do
the Polygraphy/TensorRT calls (parse, build, deserialize to read the engine's I/O, count DLA
cores) and stage the timing and calibration caches beside their real files. TensorRT and
Polygraphy are imported inside the functions, so this module imports without them.
"""
from __future__ import annotations

import contextlib
import shutil
import time
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

from common.errors import ToolkitError
from common.fileio import atomic_path
from engines import trt_info
from engines.builder_config import PrecisionPlan, select_fp32_layers

TRT_DTYPES = {"FLOAT": "float32", "HALF": "float16", "INT32": "int32", "INT64": "int64",
              "INT8": "int8", "UINT8": "uint8", "BOOL": "bool", "BF16": "bfloat16"}


def check_polygraphy(polygraphy_version: str, trt_version: str) -> None:
    """Refuse a Polygraphy too old for this TensorRT (0.50.3+ for TensorRT 11) before building."""
    problem = trt_info.polygraphy_problem(polygraphy_version, trt_version)
    if problem:
        raise ToolkitError(problem)


def num_dla_cores() -> int:
    import tensorrt as trt
    from polygraphy.backend.trt import util as trt_util

    builder = call_build_step("create a TensorRT builder", None,
                              lambda: trt.Builder(trt_util.get_trt_logger()))
    if builder is None:
        raise ToolkitError("TensorRT could not create a builder (is the GPU usable? see its log)")
    return int(builder.num_DLA_cores)


def staged_copy(stack: contextlib.ExitStack, path: Path | str | None) -> Path | None:
    """A temp file beside ``path`` holding its current bytes, renamed over it if the build
    succeeds: Polygraphy reads and extends the temp file, the real one changes atomically.
    Without a previous file the temp file starts empty, which Polygraphy reads as no cache."""
    if path is None:
        return None
    tmp = stack.enter_context(atomic_path(path))
    if Path(path).is_file():
        shutil.copyfile(path, tmp)
    # Polygraphy locks the cache with "<file>.lock", which it never removes.
    stack.callback(lambda: Path(f"{tmp}.lock").unlink() if Path(f"{tmp}.lock").exists() else None)
    return tmp


def make_calibrator(calibration: Dict, cache_tmp: Path | None):
    if not calibration:
        return None
    from polygraphy.backend.trt import Calibrator

    # With no set (cache-only rebuild) TensorRT reads the cache and never asks for batches.
    data = calibration.get("set") or []
    return Calibrator(data, cache=str(cache_tmp) if cache_tmp is not None else None)


# A decoder graph's present_{key,value}_l outputs (past + new positions) exist for ONNX Runtime,
# which binds them over the KV cache they are concatenated from (runtime/kv_cache.py). TensorRT
# promises nothing for an output that overlaps an input, so the engine is built without them:
# the Concat stays inside it and its I/O is the append-only interface of CONTRIBUTING.md.
WINDOW_OUTPUT_PREFIX = "present_"


def engine_outputs(outputs: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The sidecar's outputs an engine keeps (all but the cache windows), in order."""
    return [t for t in outputs if not t["name"].startswith(WINDOW_OUTPUT_PREFIX)]


def window_outputs(outputs: Sequence[Dict[str, Any]]) -> List[str]:
    """Names of the sidecar's cache-window outputs, which the engine build unmarks."""
    return [t["name"] for t in outputs if t["name"].startswith(WINDOW_OUTPUT_PREFIX)]


def pin_fp32_layers(keep_fp32: Sequence[str], record: Dict[str, Any]):
    """A Polygraphy network postprocess (``PostprocessNetwork``'s ``func(network=...)``) that
    pins the layers producing the ``keep_fp32`` tensors to FP32: ``layer.precision`` and
    ``set_output_type`` of the named outputs (TensorRT 8.5..10.x; 11 has neither). It fills
    ``record`` with what the manifest reports: tensors listed and matched, layers pinned and
    the names found in no layer."""

    def pin_fp32(network) -> None:
        import tensorrt as trt

        layers = [network.get_layer(i) for i in range(network.num_layers)]
        described = [(layer.name, [layer.get_output(j).name for j in range(layer.num_outputs)])
                     for layer in layers]
        chosen = select_fp32_layers(described, keep_fp32)
        for index, outputs in chosen["layers"].items():
            layers[index].precision = trt.float32
            for j in outputs:
                layers[index].set_output_type(j, trt.float32)
        record.update(listed=len(set(keep_fp32)), matched=len(chosen["matched"]),
                      layers=len(chosen["layers"]), unmatched=chosen["unmatched"])

    return pin_fp32


def build_serialized(source: Path, plan: PrecisionPlan, config, timing_tmp, plan_path: Path,
                     verbose: bool, drop_outputs: Sequence[str] = (),
                     keep_fp32: Sequence[str] = (),
                     keep_fp32_record: Dict[str, Any] | None = None) -> Tuple[bytes, float]:
    """The serialized engine and its build seconds; ``drop_outputs`` are unmarked after parsing,
    and, in flag-based FP16/INT8 builds, the ``keep_fp32`` tensors' layers are pinned to FP32
    (``pin_fp32_layers``; ``keep_fp32_record`` receives the counts)."""
    from polygraphy.backend.trt import (
        EngineBytesFromNetwork,
        ModifyNetworkOutputs,
        NetworkFromOnnxPath,
        PostprocessNetwork,
    )
    from polygraphy.logger import G_LOGGER

    network_kwargs = {"strongly_typed": True} if plan.strongly_typed else {}
    network = NetworkFromOnnxPath(str(source), **network_kwargs)
    if drop_outputs:
        network = ModifyNetworkOutputs(network, exclude_outputs=list(drop_outputs))
    if keep_fp32 and plan.lowers_precision_by_flags:
        network = PostprocessNetwork(network, pin_fp32_layers(
            keep_fp32, keep_fp32_record if keep_fp32_record is not None else {}), "keep_fp32")
    build = EngineBytesFromNetwork(network, config=config,
                                   save_timing_cache=str(timing_tmp) if timing_tmp else None)
    severity = G_LOGGER.EXTRA_VERBOSE if verbose else G_LOGGER.INFO
    start = time.perf_counter()

    def build_logged():
        with G_LOGGER.verbosity(severity):
            return build()

    serialized = call_build_step(f"build {plan_path} from {source}", polygraphy_version(),
                                 build_logged)
    if serialized is None:  # the builder returned no engine without Polygraphy raising
        raise ToolkitError(f"TensorRT could not build {plan_path} from {source}: the builder "
                           f"returned no engine{RERUN_HINT}")
    return bytes(serialized), time.perf_counter() - start


RERUN_HINT = " (rerun with --verbose for TensorRT's log)"


def call_build_step(what: str, polygraphy_version: str | None, step):
    """``step()``, with what a failing Polygraphy/TensorRT step raises turned into one line.

    - ``PolygraphyException``: Polygraphy's own report (a parser error, a failed build: its
      ``G_LOGGER.critical`` raises it), first line kept.
    - ``AttributeError``: a Polygraphy that uses an API this TensorRT removed (0.49.0/0.49.9 read
      ``config.int8_calibrator``, 0.49.26 ``layer.precision_is_set`` on TensorRT 11); named with
      the Polygraphy version and the floor (trt_info.POLYGRAPHY_FLOOR).
    - ``RuntimeError``/``TypeError``/``ValueError``: what the TensorRT bindings raise (a
      ``PY_ASSERT_RUNTIME_ERROR``, a factory that returned nullptr, a bad argument).
    A ``ToolkitError`` (our own postprocess step) passes through unchanged.
    """
    from polygraphy.exception import PolygraphyException

    try:
        return step()
    except ToolkitError:
        raise
    except PolygraphyException as exc:
        raise ToolkitError(f"TensorRT could not {what}: {first_line(exc)}{RERUN_HINT}") from None
    except AttributeError as exc:
        version = f"Polygraphy {polygraphy_version}" if polygraphy_version else "Polygraphy"
        floor = ".".join(map(str, trt_info.POLYGRAPHY_FLOOR))
        raise ToolkitError(
            f"could not {what}: {version} and this TensorRT disagree on the API "
            f"({first_line(exc)}); pip install 'polygraphy>={floor}'") from None
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ToolkitError(f"TensorRT could not {what}: {first_line(exc)}{RERUN_HINT}") from None


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message, or its type's name."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__


def engine_io(engine_bytes: bytes) -> Dict[str, Any]:
    """I/O tensors and per-profile input shapes as the built engine reports them."""
    import tensorrt as trt
    from polygraphy.backend.trt import EngineFromBytes

    engine = call_build_step("deserialize the engine it just built", polygraphy_version(),
                             EngineFromBytes(engine_bytes))
    tensors, names = [], []
    for index in range(engine.num_io_tensors):
        name = engine.get_tensor_name(index)
        is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
        dtype = engine.get_tensor_dtype(name)
        tensors.append({"name": name, "mode": "input" if is_input else "output",
                        "dtype": TRT_DTYPES.get(dtype.name, dtype.name.lower()),
                        "shape": [int(d) for d in engine.get_tensor_shape(name)]})
        if is_input:
            names.append(name)
    profiles = []
    for p in range(engine.num_optimization_profiles):
        shapes = {}
        for name in names:
            lo, opt, hi = engine.get_tensor_profile_shape(name, p)
            shapes[name] = {"min": list(lo), "opt": list(opt), "max": list(hi)}
        profiles.append(shapes)
    return {"tensors": tensors, "profiles": profiles}


def polygraphy_version() -> str:
    import polygraphy

    return str(polygraphy.__version__)
