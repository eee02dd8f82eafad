"""Which backends the suite compares, and which of them this machine has.

Every backend is a row, present or not: a backend missing here (no GPU, no TensorRT, no plan,
a module without DLA, no checkpoint on a device) is a row whose status says why, never an
error. The rows, in table order:

| name | what runs |
|---|---|
| ``pytorch-eager`` | the checkpoint in PyTorch (host only: ``benchmarks.host_torch``) |
| ``ort-cpu-fp32`` / ``-int8-qdq`` / ``-fp16`` | ONNX Runtime CPU: export, Q/DQ copy, FP16 copy |
| ``ort-cuda-fp32`` / ``-fp16`` | ONNX Runtime's CUDA execution provider (onnxruntime-gpu) |
| ``ort-trt-fp16`` | ONNX Runtime's TensorRT execution provider, FP16 allowed |
| ``trt-fp32`` / ``-fp16`` / ``-int8`` / ``-best`` | our TensorRT plans, ``runtime.session`` |
| ``trt-dla-<precision>`` | a plan built for DLA (``--dla-core``; GPU fallback) |

Model files follow the project's layout: ``<models>/<name>.onnx``, ``<name>.qdq.onnx``,
``<name>.fp16.onnx`` (optional: else converted for the run when ``onnx`` is installed), and
``<engines>/<name>.<precision>.plan`` (``<name>.<precision>.dla.plan`` for DLA).
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Sequence

from common.errors import ToolkitError

READY, NOT_AVAILABLE = "ready", "not available here"
TRT_PRECISIONS = ("fp32", "fp16", "int8", "best")


class NotAvailable(ToolkitError):
    """Found out only when the backend is opened (e.g. the CPU provider lacks an FP16 kernel):
    the row says 'not available here', not 'failed'."""


@dataclass
class Backend:
    name: str
    engine: str  # "pytorch" | "onnxruntime" | "tensorrt"
    precision: str  # fp32 | fp16 | int8-qdq | int8 | best
    device: str  # cpu | gpu | dla
    path: Path | None = None  # what is opened: .pt, .onnx or .plan
    providers: List[Any] | None = None  # ONNX Runtime providers
    status: str = READY
    reason: str | None = None
    convert_fp16_from: Path | None = None  # an FP16 copy is made from this .onnx for the run
    extra: Dict[str, Any] = field(default_factory=dict)

    @property
    def ready(self) -> bool:
        return self.status == READY

    def row(self) -> Dict[str, Any]:
        """What the JSON and the table show of the backend itself."""
        return {"backend": self.name, "engine": self.engine, "precision": self.precision,
                "device": self.device, "path": str(self.path) if self.path else None,
                "status": self.status, "reason": self.reason}


def _missing(backend: Backend, reason: str) -> Backend:
    backend.status, backend.reason = NOT_AVAILABLE, reason
    return backend


def has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def ort_providers() -> List[str]:
    if not has_module("onnxruntime"):
        return []
    import onnxruntime as ort

    return list(ort.get_available_providers())


def discover(name: str, models_dir: Path, engines_dir: Path, checkpoint: Path | None = None,
             only: Sequence[str] | None = None) -> List[Backend]:
    """Every backend row for model ``name``; ``only``: keep these names (others dropped)."""
    models_dir, engines_dir = Path(models_dir), Path(engines_dir)
    onnx = models_dir / f"{name}.onnx"
    rows = [pytorch_backend(checkpoint)]
    rows += ort_backends(name, models_dir, onnx)
    rows += trt_backends(name, engines_dir)
    if only:
        unknown = sorted(set(only) - {b.name for b in rows})
        if unknown:
            raise ToolkitError(f"--backend {unknown}: expected some of {[b.name for b in rows]}")
        rows = [b for b in rows if b.name in only]
    return rows


def pytorch_backend(checkpoint: Path | None) -> Backend:
    backend = Backend("pytorch-eager", "pytorch", "fp32", "cpu", checkpoint)
    if checkpoint is None:
        return _missing(backend, "host only: give --checkpoint (the .pt the ONNX came from)")
    if not has_module("torch"):
        return _missing(backend, "torch is not installed (device side)")
    if not Path(checkpoint).is_file():
        return _missing(backend, f"checkpoint not found: {checkpoint}")
    return backend


def ort_backends(name: str, models_dir: Path, onnx: Path) -> List[Backend]:
    providers = ort_providers()
    fp16_file = models_dir / f"{name}.fp16.onnx"
    cpu = [Backend("ort-cpu-fp32", "onnxruntime", "fp32", "cpu", onnx),
           Backend("ort-cpu-int8-qdq", "onnxruntime", "int8-qdq", "cpu",
                   models_dir / f"{name}.qdq.onnx"),
           _fp16_backend("ort-cpu-fp16", "cpu", fp16_file, onnx)]
    cuda = [Backend("ort-cuda-fp32", "onnxruntime", "fp32", "gpu", onnx),
            _fp16_backend("ort-cuda-fp16", "gpu", fp16_file, onnx)]
    trt_ep = [Backend("ort-trt-fp16", "onnxruntime", "fp16", "gpu", onnx)]
    for b in cpu:
        b.providers = ["CPUExecutionProvider"]
    for b in cuda:
        b.providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    for b in trt_ep:
        cache = Path("engines") / "ort-trt-cache"
        b.providers = [("TensorrtExecutionProvider",
                        {"trt_fp16_enable": True, "trt_engine_cache_enable": True,
                         "trt_engine_cache_path": str(cache)}),
                       "CUDAExecutionProvider", "CPUExecutionProvider"]
    rows = cpu + cuda + trt_ep
    for b in rows:
        wanted = b.providers[0] if isinstance(b.providers[0], str) else b.providers[0][0]
        if not providers:
            _missing(b, "onnxruntime is not installed")
        elif wanted not in providers:
            _missing(b, f"onnxruntime has no {wanted} here (it has {', '.join(providers)})"
                        + ("; install onnxruntime-gpu" if wanted != "CPUExecutionProvider"
                           else ""))
        elif b.ready and b.convert_fp16_from is None and not b.path.is_file():
            _missing(b, f"{b.path} does not exist" + (
                " (make calibrate writes it)" if b.precision == "int8-qdq" else ""))
    return rows


def _fp16_backend(name: str, device: str, fp16_file: Path, onnx: Path) -> Backend:
    backend = Backend(name, "onnxruntime", "fp16", device, fp16_file)
    if fp16_file.is_file():
        return backend
    if not onnx.is_file():
        return _missing(backend, f"{onnx} does not exist")
    if not has_module("onnx"):
        return _missing(backend, f"no {fp16_file.name}, and onnx is not installed to convert "
                                 f"{onnx.name} (python -m calibration.fp16 on the host)")
    backend.convert_fp16_from = onnx  # converted into a temporary folder for the run
    return backend


def trt_backends(name: str, engines_dir: Path) -> List[Backend]:
    rows = []
    have_trt = has_module("tensorrt")
    dla_reason = _dla_unavailable_reason() if have_trt else None
    for precision in TRT_PRECISIONS:
        plan = engines_dir / f"{name}.{precision}.plan"
        b = Backend(f"trt-{precision}", "tensorrt", precision, "gpu", plan)
        rows.append(_trt_status(b, have_trt, f"make engine MODEL={name} PRECISION={precision}"))
    for precision in ("fp16", "int8"):
        plan = engines_dir / f"{name}.{precision}.dla.plan"
        b = Backend(f"trt-dla-{precision}", "tensorrt", precision, "dla", plan)
        if have_trt and dla_reason:
            rows.append(_missing(b, dla_reason))
        else:
            hint = (f"python -m engines.build --onnx models/{name}.onnx --precision {precision}"
                    f" --dla-core 0 --output {plan}")
            rows.append(_trt_status(b, have_trt, hint))
    return rows


def _trt_status(b: Backend, have_trt: bool, hint: str) -> Backend:
    if not have_trt:
        return _missing(b, "TensorRT is not installed here (import tensorrt failed)")
    if not b.path.is_file():
        return _missing(b, f"no plan {b.path} (build it on this device: {hint})")
    return b


def _dla_unavailable_reason() -> str | None:
    """Why this machine has no DLA, or None when it may have one."""
    from engines import trt_info

    jetson = trt_info.jetson_info()
    if not jetson:
        return "DLA exists only on Jetson AGX Orin / Orin NX (this is not a Jetson)"
    module = jetson.get("module") or jetson.get("model")
    if trt_info.module_has_no_dla(module):
        return f"{module} has no DLA"
    return None
