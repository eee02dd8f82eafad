"""Pre-flight report of an ONNX graph, before it goes to TensorRT on the device.

Reads only the ONNX file (no checkpoint, no torch), so it also checks a graph that came from
somewhere else: ``python -m export.preflight models/imdb.onnx``. It lists what tends to go wrong
on Jetson: per TensorRT release (8.5, 8.6, 10.x, 11.x) whether its ONNX parser imports the graph
(``common.trt_onnx``: operators, types, conditions and opset ceilings from onnx-tensorrt at the
commit each release pins), LayerNorm decomposed into ReduceMean/Pow/Sqrt (x**2 overflows FP16),
float constants beyond the FP16 range (65504), and the operators DLA cannot run (those layers
fall back to the GPU). ``--trt VERSION`` exits 2 with one line when that release cannot parse it.
"""
from __future__ import annotations

import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List

if __package__ in (None, ""):  # run by path: python export/preflight.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import click

from common.errors import ToolkitError, exit_on_toolkit_error

FP16_MAX = 65504.0

# ONNX ops that map to TensorRT layers DLA can run (Jetson Orin, TensorRT 8.5-10.x), from
# "DLA Supported Layers and Restrictions" in the TensorRT docs. Each still has shape limits
# (4-D tensors, FC only with constant weights, Softmax on one axis, Reduce max only...), so
# this list says "may run on DLA", never "will". Everything else falls back to the GPU.
DLA_ALLOWED_OPS = frozenset({
    "Conv", "ConvTranspose", "Gemm", "MatMul",  # MatMul/Gemm only as FC with constant weights
    "Relu", "LeakyRelu", "PRelu", "Sigmoid", "Tanh", "Clip",
    "Add", "Sub", "Mul", "Div", "Max", "Min", "Pow", "Equal", "Greater", "Less",
    "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LRN",
    "BatchNormalization", "Concat", "Slice", "Reshape", "Transpose", "Flatten",
    "Squeeze", "Unsqueeze", "Resize", "Softmax", "ReduceMax", "Abs",
})
# Ops TensorRT resolves at build time (shape arithmetic, constants); they never run as layers.
BUILD_TIME_OPS = frozenset({"Constant", "Shape", "Identity"})


def load_onnx(path: str | os.PathLike):
    """Load an ONNX file with a one-line ToolkitError when it is missing or not ONNX."""
    import onnx
    from google.protobuf.message import DecodeError

    path = Path(path)
    if not path.is_file():
        raise ToolkitError(f"ONNX file not found: {path}")
    try:
        return onnx.load(str(path))
    except (DecodeError, ValueError, RuntimeError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ToolkitError(f"{path} is not a readable ONNX model ({first})") from None


def preflight_report(onnx_path: str | os.PathLike,
                     parse: Dict[str, Any] | None = None) -> Dict[str, Any]:
    """The report as a JSON-ready dict (stored in the sidecar under ``preflight``).

    parse: ``common.trt_onnx.parse_report`` of this file when the caller has it already (the
    exporters store it in the sidecar too), so the graph's facts are not read twice."""
    model = load_onnx(onnx_path)
    graph = model.graph
    histogram = Counter(node.op_type for node in graph.node)
    dla_fallback = {op: n for op, n in sorted(histogram.items())
                    if op not in DLA_ALLOWED_OPS and op not in BUILD_TIME_OPS}
    inputs = [_tensor_info(v) for v in graph.input]
    outputs = [_tensor_info(v) for v in graph.output]
    opset = _default_opset(model)
    from common.trt_onnx import load_table, parse_report

    entries = load_table()["entries"]
    parse = parse if parse is not None else parse_report(onnx_path)
    return {
        "opset": opset,
        "opset_ceilings": {key: entry["max_opset"] for key, entry in entries.items()},
        "tensorrt_verdicts": parse["verdicts"],
        "nodes": len(graph.node),
        "op_histogram": dict(sorted(histogram.items())),
        "inputs": inputs,
        "outputs": outputs,
        "dynamic_axes": sorted({d for t in inputs + outputs for d in t["shape"]
                                if isinstance(d, str)}),
        "layernorm_nodes": histogram.get("LayerNormalization", 0),
        "fp16_hazards": find_fp16_hazards(model),
        "dla_fallback_ops": dla_fallback,
    }


def find_fp16_hazards(model) -> List[Dict[str, str]]:
    """Decomposed LayerNorm, Pow nodes and float constants beyond the FP16 range."""
    graph = model.graph
    hazards = [{"kind": "decomposed_layernorm", "node": name,
                "detail": "ReduceMean -> Sub -> Pow/Mul -> ReduceMean: keep it FP32 (the "
                          "sidecar's keep_fp32, for TensorRT 8.5) or export with LayerNorm as "
                          "one node (TensorRT 8.6+)"}
               for name in decomposed_layernorms(graph)]
    hazards += [{"kind": "pow", "node": n.name or n.output[0],
                 "detail": "Pow can overflow FP16 (x**2 > 65504 once |x| > 256)"}
                for n in graph.node if n.op_type == "Pow"]
    hazards += [{"kind": "large_constant", "node": name,
                 "detail": f"max |x| = {peak:.4g} > {FP16_MAX:g} (inf in FP16)"}
                for name, peak in _large_float_constants(graph)]
    return hazards + feature_hazards(graph)


FEATURE_INPUT = "features"
RAW_SIGMAS = 6.0  # raw features up to mean +- 6 std are expected on the device


def feature_normalization(graph) -> Dict[str, Any] | None:
    """The baked-in ``(features - mean) / std`` of a feature classifier, found by structure:
    Sub(features, constant) -> Div(that, constant). Returns {"nodes", "tensors", "mean", "std"}
    (lists), or None for a graph without a ``features`` input or without that pair."""
    import numpy as np
    from onnx import numpy_helper

    if FEATURE_INPUT not in {v.name for v in graph.input}:
        return None
    constants = {t.name: t for t in graph.initializer}
    constants.update({n.output[0]: a.t for n in graph.node if n.op_type == "Constant"
                      for a in n.attribute if a.name == "value"})
    for sub in (n for n in graph.node if n.op_type == "Sub" and n.input[0] == FEATURE_INPUT):
        if sub.input[1] not in constants:
            continue
        div = next((n for n in graph.node if n.op_type == "Div" and n.input[0] == sub.output[0]
                    and n.input[1] in constants), None)
        if div is None:
            continue
        mean = np.ravel(numpy_helper.to_array(constants[sub.input[1]])).astype(np.float64)
        std = np.ravel(numpy_helper.to_array(constants[div.input[1]])).astype(np.float64)
        return {"nodes": [sub.name or sub.output[0], div.name or div.output[0]],
                "tensors": [sub.output[0], div.output[0]],
                "mean": mean.tolist(), "std": std.tolist()}
    return None


def feature_hazards(graph) -> List[Dict[str, str]]:
    """A feature graph without its normalization, or raw features whose expected range
    (mean +- RAW_SIGMAS std) leaves FP16: the normalization must then run in FP32 (the export
    lists its outputs in keep_fp32; calibration.fp16 keeps its nodes FP32)."""
    if FEATURE_INPUT not in {v.name for v in graph.input}:
        return []
    norm = feature_normalization(graph)
    if norm is None:
        return [{"kind": "feature_normalization_missing", "node": FEATURE_INPUT,
                 "detail": "no Sub/Div of constants on the features input: the device would "
                           "feed unnormalized features to the model"}]
    reach = max(abs(m) + RAW_SIGMAS * s for m, s in zip(norm["mean"], norm["std"]))
    tiny = min(norm["std"])
    hazards = []
    if reach > FP16_MAX:
        hazards.append({"kind": "raw_features_beyond_fp16", "node": norm["nodes"][0],
                        "detail": f"raw features reach |x| ~ {reach:.4g} (mean + {RAW_SIGMAS:g} "
                                  f"std) > {FP16_MAX:g}: keep the input FP32 and the "
                                  "normalization in keep_fp32"})
    if tiny < 1e-4:
        hazards.append({"kind": "tiny_feature_std", "node": norm["nodes"][1],
                        "detail": f"smallest std {tiny:.3g}: (x - mean) / std amplifies input "
                                  "noise by > 1e4; FP16 rounding of x is amplified with it"})
    return hazards


def decomposed_layernorms(graph) -> List[str]:
    """Names of ReduceMean nodes that start a mean/variance LayerNorm pattern."""
    consumers: Dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    found = []
    for mean in (n for n in graph.node if n.op_type == "ReduceMean"):
        x = mean.input[0]
        centred = [n for n in consumers.get(mean.output[0], [])
                   if n.op_type == "Sub" and list(n.input) == [x, mean.output[0]]]
        for sub in centred:
            squares = [n for n in consumers.get(sub.output[0], [])
                       if n.op_type == "Pow" or (n.op_type == "Mul" and n.input[0] == n.input[1])]
            if any(c.op_type == "ReduceMean" for sq in squares
                   for c in consumers.get(sq.output[0], [])):
                found.append(mean.name or mean.output[0])
                break
    return found


def _large_float_constants(graph):
    """(name, max |x|) of float initializers and Constant/ConstantOfShape values > FP16_MAX."""
    import numpy as np
    from onnx import numpy_helper

    tensors = [(t.name, t) for t in graph.initializer]
    for node in graph.node:
        if node.op_type in ("Constant", "ConstantOfShape"):
            tensors += [(node.name or node.output[0], a.t)
                        for a in node.attribute if a.name == "value"]
    for name, tensor in tensors:
        array = numpy_helper.to_array(tensor)
        if array.size and np.issubdtype(array.dtype, np.floating):
            peak = float(np.max(np.abs(array.astype(np.float64))))
            if peak > FP16_MAX:
                yield name, peak


def _default_opset(model):
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def _tensor_info(value) -> Dict[str, Any]:
    from onnx import helper

    tensor_type = value.type.tensor_type
    dtype = helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).name
    shape = [d.dim_param if d.dim_param else (d.dim_value if d.HasField("dim_value") else "?")
             for d in tensor_type.shape.dim]
    return {"name": value.name, "dtype": dtype, "shape": shape}


def format_preflight(report: Dict[str, Any]) -> str:
    """Human-readable lines for the terminal."""
    ceilings = ", ".join(f"{key} {top}" for key, top in report["opset_ceilings"].items())
    ops = ", ".join(f"{op} {n}" for op, n in report["op_histogram"].items())
    lines = [
        f"opset {report['opset']} (TensorRT parsers take up to: {ceilings}); "
        f"{report['nodes']} nodes; {report['layernorm_nodes']} LayerNormalization",
        f"operators: {ops}",
    ]
    lines += [_verdict_line(key, verdict) for key, verdict in report["tensorrt_verdicts"].items()]
    lines += [
        "inputs:  " + "; ".join(_fmt_tensor(t) for t in report["inputs"]),
        "outputs: " + "; ".join(_fmt_tensor(t) for t in report["outputs"]),
        "dynamic axes: " + (", ".join(report["dynamic_axes"]) or "none")
        + (" (DLA needs static shapes: build a DLA engine with min = opt = max)"
           if report["dynamic_axes"] else ""),
    ]
    hazards = report["fp16_hazards"]
    lines.append(f"FP16 hazards: {len(hazards)}" if hazards else "FP16 hazards: none")
    lines += [f"  - {h['kind']}: {h['node']}: {h['detail']}" for h in hazards]
    fallback = report["dla_fallback_ops"]
    lines.append("DLA: ops that fall back to the GPU: "
                 + (", ".join(f"{op} x{n}" for op, n in fallback.items()) or "none"))
    return "\n".join(lines)


def _verdict_line(key: str, verdict: Dict[str, Any]) -> str:
    where = f"TensorRT {key} (onnx-tensorrt {verdict['onnx_tensorrt'][:8]})"
    if verdict["ok"]:
        return f"{where}: parses"
    problems = verdict["problems"]
    more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
    return f"{where}: will NOT parse: {problems[0]}{more}"


def _fmt_tensor(t: Dict[str, Any]) -> str:
    return f"{t['name']} {t['dtype']} [{', '.join(str(d) for d in t['shape'])}]"


@click.command()
@click.argument("onnx_path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--trt", "trt_version", default=None, metavar="VERSION",
              help="Also exit 2 when this TensorRT release (e.g. 8.5.2, 10.3) cannot parse it.")
@exit_on_toolkit_error
def main(onnx_path: Path, as_json: bool, trt_version: str | None) -> None:
    """Print the pre-flight report of ONNX_PATH (TensorRT parse verdicts, opset, ops, FP16
    hazards, DLA fallback)."""
    from common.trt_onnx import check_onnx_for_tensorrt, table_key

    if trt_version is not None:
        table_key(trt_version)  # an unknown release is an error before the report
    report = preflight_report(onnx_path)
    if as_json:
        import json

        click.echo(json.dumps(report, indent=2))
    else:
        click.echo(format_preflight(report))
    if trt_version is not None:
        click.echo(check_onnx_for_tensorrt(onnx_path, None, trt_version))


if __name__ == "__main__":
    main()
