"""FP16 estimate on the host: an FP16 copy of the graph, run by ONNX Runtime on the CPU.

TensorRT's FP16 engines are built on the device; this tells beforehand whether the model
survives half precision: float constants beyond the FP16 range (the converter clamps them to
+-65504, silently changing the model), and inf/NaN in the outputs of real inputs (an
activation overflowed). ``calibration.gate --fp16`` evaluates the copy next to FP32 and INT8.

``python -m calibration.fp16 --onnx models/imdb.onnx --output models/imdb.fp16.onnx``

Host-only: onnx and onnxruntime are imported inside the functions; never torch.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Dict, List, Mapping, Tuple

if __package__ in (None, ""):  # run as a script: python calibration/fp16.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import click
import numpy as np

from common.errors import ToolkitError, exit_on_toolkit_error
from common.fileio import atomic_path

FP16_MAX = 65504.0
MAX_LISTED = 10  # constants listed by name in a report; the count covers all of them


def convert_to_fp16(onnx_path: str | Path, output: str | Path) -> Path:
    """Write an FP16 copy of ``onnx_path``; inputs and outputs keep their FP32/int32 types."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from calibration.qdq import load_onnx

    model = load_onnx(onnx_path)
    fp16_model = convert_float_to_float16(model, keep_io_types=True)
    with atomic_path(output) as tmp:
        onnx.save(fp16_model, str(tmp))
    return Path(output)


def out_of_range_constants(onnx_path: str | Path, limit: float = FP16_MAX) -> Dict[str, Any]:
    """Float initializers and Constant values of the FP32 graph with any |x| > ``limit``."""
    from onnx import TensorProto, numpy_helper

    from calibration.qdq import load_onnx

    model = load_onnx(onnx_path)
    tensors = list(model.graph.initializer)
    for node in model.graph.node:
        if node.op_type == "Constant":
            tensors += [a.t for a in node.attribute if a.name == "value"]
    found: List[Dict[str, Any]] = []
    for tensor in tensors:
        if tensor.data_type not in (TensorProto.FLOAT, TensorProto.DOUBLE):
            continue
        values = numpy_helper.to_array(tensor)
        over = int(np.count_nonzero(np.abs(values) > limit))
        if over:
            found.append({"name": tensor.name, "values_over": over,
                          "max_abs": float(np.abs(values).max())})
    return {"count": len(found), "limit": limit, "constants": found[:MAX_LISTED]}


def nonfinite_counts(outputs: Mapping[str, np.ndarray]) -> Dict[str, int]:
    """Number of inf/NaN values per float output (only outputs that have any)."""
    counts = {}
    for name, value in outputs.items():
        if np.issubdtype(value.dtype, np.floating):
            bad = int(value.size - np.count_nonzero(np.isfinite(value)))
            if bad:
                counts[name] = bad
    return counts


def try_open_on_cpu(onnx_path: str | Path) -> Tuple[Any | None, str | None]:
    """(session, None), or (None, why) when the CPU provider cannot run some FP16 op.

    Not a silent fallback: callers report the reason as the FP16 result."""
    import onnxruntime as ort
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

    try:
        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    except (ort_errors.NotImplemented, ort_errors.Fail, ort_errors.InvalidGraph) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return None, f"ONNX Runtime's CPU provider cannot run this FP16 graph: {first}"
    return session, None


@click.command(context_settings={"show_default": True})
@click.option("--onnx", "onnx_path", required=True, type=click.Path(path_type=Path),
              help="FP32 model exported by export/")
@click.option("--output", required=True, type=click.Path(path_type=Path),
              help="FP16 copy to write (I/O types unchanged)")
@exit_on_toolkit_error
def main(onnx_path: Path, output: Path) -> None:
    """Convert to FP16 and say whether the CPU provider runs it and which constants overflow."""
    constants = out_of_range_constants(onnx_path)
    convert_to_fp16(onnx_path, output)
    _session, error = try_open_on_cpu(output)
    click.echo(f"wrote {output}; {constants['count']} float constants beyond +-{FP16_MAX:g}")
    if error:
        raise ToolkitError(f"{output}: {error}")
    click.echo("ONNX Runtime's CPU provider runs it: evaluate it with calibration.gate --fp16")


if __name__ == "__main__":
    main()
