"""The FP16 ONNX graph: TensorRT 11's fp16 engine (strongly typed) and the host FP16 estimate.

``python -m calibration.fp16 --onnx models/imdb.onnx --output models/imdb.fp16.onnx`` writes the
graph and its sidecar (``precision: "fp16"``, ``keep_fp32``, ``tensorrt_parse``, the new file's
hash). TensorRT 11 has no FP16 builder flag: a strongly typed network runs each tensor in the
type the graph gives it, so what must stay FP32 has to be FP32 in this file. Kept FP32:

- normalization: LayerNormalization nodes (TensorRT's INormalizationLayer computes in FP32 by
  default in flag-based builds; strongly typed, it computes in its input's type), the nodes of
  decomposed LayerNorms (TensorRT 8.5 export) and of RMSNorm chains (Pow/ReduceMean/Sqrt/...),
  found by pattern (``export.norm_graph``): their squares overflow FP16 once |x| > 256;
- the ops ONNX Runtime's converter keeps FP32 by default (TopK, Range, CumSum, Min, Max, ...);
- a feature classifier's input normalization ``(features - mean) / std`` (raw features may
  exceed the FP16 range; the normalized ones feed the first MatMul in FP16).
Softmax runs FP16 (a measurement in docs/DESIGN.md: its FP16 rounding is below that of the
MatMuls around it; the masks use -1e4, an FP16 number). Inputs and outputs keep their
FP32/int32 types, so the runtime and the engine profiles are the same as the FP32 graph's.
The converter puts an FP16 Cast between two FP32 nodes; those round trips are removed here
(``remove_fp16_round_trips``), else a blocked chain would still pass its values through FP16.

It also tells on the host whether the model survives half precision: float constants beyond
the FP16 range (the converter clamps them to +-65504, silently changing the model), and inf/NaN
in the outputs of real inputs (an activation overflowed). ``calibration.gate --fp16``
evaluates such a copy next to FP32 and INT8 (ONNX Runtime's CPU provider runs most FP16 ops
through FP32 kernels, so its figures bound the FP16 rounding of the stored tensors only).

Host-only: onnx and onnxruntime are imported inside the functions; never torch.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Dict, List, Mapping, Set, Tuple

if __package__ in (None, ""):  # run as a script: python calibration/fp16.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import click
import numpy as np

from common.artifacts import load_onnx_sidecar, sidecar_path, write_onnx_sidecar
from common.errors import ToolkitError, exit_on_toolkit_error
from common.fileio import atomic_path, sha256_file

FP16_MAX = 65504.0
MAX_LISTED = 10  # constants listed by name in a report; the count covers all of them
PRECISION = "fp16"
FP32_OP_TYPES = ["LayerNormalization"]  # besides the converter's DEFAULT_OP_BLOCK_LIST
KEEP_FP32_WHY = ("FP32 in the FP16 graph: normalization (LayerNormalization, decomposed "
                 "LayerNorm, RMSNorm: squares overflow FP16 once |x| > 256) and the ops ONNX "
                 "Runtime's converter keeps FP32 ({ops})")


def convert_to_fp16(onnx_path: str | Path, output: str | Path) -> Path:
    """Write an FP16 copy of ``onnx_path``; inputs and outputs keep their FP32/int32 types,
    normalizations stay FP32 (module docstring)."""
    import onnx

    from calibration.qdq import load_onnx

    fp16_model, _ = fp16_graph(load_onnx(onnx_path))
    with atomic_path(output) as tmp:
        onnx.save(fp16_model, str(tmp))
    return Path(output)


def fp16_graph(model, sidecar: Dict[str, Any] | None = None, where: str = "FP32 graph"):
    """(FP16 ModelProto, its ``keep_fp32`` record) of an FP32 ModelProto (changed in place).

    sidecar: the FP32 graph's, to check the normalization patterns it recorded are all found."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    from export.norm_graph import check_patterns_kept, find_normalizations

    name_unnamed_nodes(model.graph)
    norms = find_normalizations(model.graph)
    check_patterns_kept(norms, sidecar or {}, where)
    blocked_ops = sorted(set(DEFAULT_OP_BLOCK_LIST) | set(FP32_OP_TYPES))
    norm_nodes = [name for norm in norms for name in norm["nodes"]]
    norm_nodes += feature_normalization_nodes(model.graph)
    norm_nodes += constants_only_for(model.graph, set(norm_nodes))
    fp16_model = convert_float_to_float16(model, keep_io_types=True, op_block_list=blocked_ops,
                                          node_block_list=norm_nodes)
    blocked = set(norm_nodes)
    fp32_names = {n.name for n in fp16_model.graph.node
                  if n.op_type in blocked_ops or n.name in blocked}
    remove_fp16_round_trips(fp16_model, fp32_names)
    sort_topologically(fp16_model.graph)
    fp32_nodes = [n for n in fp16_model.graph.node  # Constants: values, not layers
                  if n.name in fp32_names and n.op_type != "Constant"]
    keep = {"why": KEEP_FP32_WHY.format(ops=", ".join(sorted({n.op_type for n in fp32_nodes}))),
            "tensors": float_outputs(fp16_model, fp32_nodes),
            "patterns": {kind: sum(n["kind"] == kind for n in norms)
                         for kind in ("layernorm", "rmsnorm")},
            "nodes": len(fp32_nodes)}
    return fp16_model, keep


def feature_normalization_nodes(graph) -> List[str]:
    """A feature classifier's ``(features - mean) / std`` (``export.preflight``): FP32, since
    raw features may lie beyond FP16 (a pressure in Pa, a timestamp) where normalized ones
    do not; its output is cast to FP16 for the first MatMul."""
    from export.preflight import feature_normalization

    norm = feature_normalization(graph)
    return list(norm["nodes"]) if norm is not None else []


def constants_only_for(graph, nodes: Set[str]) -> List[str]:
    """Constant nodes read only by ``nodes`` (eps, the exponent): blocked with them, so eps
    keeps its FP32 value (1e-5 and 1e-6 are FP16 subnormals) and the island has no Cast."""
    readers: Dict[str, Set[str]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, set()).add(node.name)
    return [n.name for n in graph.node if n.op_type == "Constant"
            and readers.get(n.output[0]) and readers[n.output[0]] <= nodes]


def name_unnamed_nodes(graph) -> None:
    """The converter blocks nodes by name: give every unnamed node a unique one."""
    taken = {n.name for n in graph.node}
    for index, node in enumerate(graph.node):
        if not node.name:
            name = f"{node.op_type}_fp16_{index}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)


def remove_fp16_round_trips(model, fp32_nodes: Set[str]) -> int:
    """Rewire Cast(FP32 -> FP16) -> Cast(FP16 -> FP32) pairs to the FP32 tensor itself.

    The converter casts each FP32 node's output to FP16 and each FP32 node's input back, so a
    chain of FP32 nodes still rounds every intermediate to FP16 (and (x - mean)^2 can be inf
    there). Only pairs whose source is an FP32 node's output or an FP32 graph input are
    rewired; returns how many Casts were removed."""
    from onnx import TensorProto

    graph = model.graph
    fp32_sources = {out for n in graph.node if n.name in fp32_nodes for out in n.output}
    fp32_sources |= {v.name for v in graph.input
                     if v.type.tensor_type.elem_type == TensorProto.FLOAT}
    producer = {out: n for n in graph.node for out in n.output}
    outputs = {v.name for v in graph.output}
    replace: Dict[str, str] = {}
    for node in graph.node:
        first = producer.get(node.input[0]) if node.op_type == "Cast" else None
        if (_cast_to(node) == TensorProto.FLOAT and first is not None
                and _cast_to(first) == TensorProto.FLOAT16 and first.input[0] in fp32_sources):
            if node.output[0] in outputs:  # a graph output keeps its name: an Identity
                node.op_type = "Identity"
                del node.attribute[:]
                node.input[0] = first.input[0]
            else:
                replace[node.output[0]] = first.input[0]
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in replace:
                node.input[i] = replace[name]
    return _drop_dead_casts(graph)


def _cast_to(node) -> int | None:
    if node is None or node.op_type != "Cast":
        return None
    return next((a.i for a in node.attribute if a.name == "to"), None)


def _drop_dead_casts(graph) -> int:
    """Remove Cast nodes nothing reads (repeatedly: a removed one may orphan its source)."""
    removed = 0
    while True:
        used = {name for n in graph.node for name in n.input} | {o.name for o in graph.output}
        dead = [n for n in graph.node if n.op_type == "Cast" and n.output[0] not in used]
        if not dead:
            return removed
        for node in dead:
            graph.node.remove(node)
        removed += len(dead)
        names = {n.output[0] for n in dead}
        kept = [v for v in graph.value_info if v.name not in names]
        del graph.value_info[:]
        graph.value_info.extend(kept)


def sort_topologically(graph) -> None:
    """The converter appends its Casts at the end of the node list; ONNX requires (and the
    checker checks) that each node comes after the producers of its inputs. Stable: nodes
    keep their order wherever it was already valid."""
    available = {v.name for v in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(graph.node)
    ordered = []
    while pending:
        ready = [n for n in pending if all(i in available for i in n.input)]
        if not ready:
            raise ToolkitError(f"FP16 graph has a cycle or an unknown input at "
                               f"{pending[0].name} ({list(pending[0].input)})")
        ready_ids = {id(n) for n in ready}
        for node in ready:
            ordered.append(node)
            available.update(node.output)
        pending = [n for n in pending if id(n) not in ready_ids]
    copies = [type(n)() for n in ordered]
    for copy, node in zip(copies, ordered):
        copy.CopyFrom(node)
    del graph.node[:]
    graph.node.extend(copies)


def float_outputs(model, nodes) -> List[str]:
    """The outputs of ``nodes`` that are FP32 in ``model`` (by ONNX shape inference)."""
    from onnx import TensorProto, shape_inference

    inferred = shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in
             list(inferred.graph.value_info) + list(inferred.graph.output)}
    return [out for n in nodes for out in n.output if types.get(out) == TensorProto.FLOAT]


def write_fp16_onnx(onnx_path: str | Path, output: str | Path) -> Dict[str, Any]:
    """Write the FP16 graph of ``onnx_path`` and its sidecar beside it; returns the sidecar."""
    import onnx

    from calibration.qdq import copy_tokenizer_beside, load_onnx
    from common.trt_onnx import parse_report

    output = Path(output)
    if output.suffix != ".onnx" or output.resolve() == Path(onnx_path).resolve():
        raise ToolkitError(f"--output {output}: expected a new path ending in .onnx")
    sidecar = load_onnx_sidecar(onnx_path, check_hash=True)
    if sidecar.get("precision", "fp32") != "fp32":
        raise ToolkitError(f"{onnx_path}: sidecar precision {sidecar['precision']!r}; convert "
                           "the FP32 graph the export wrote")
    fp16_model, keep = fp16_graph(load_onnx(onnx_path), sidecar, str(onnx_path))
    with atomic_path(output) as tmp:
        onnx.save(fp16_model, str(tmp))
    data = dict(sidecar)
    data.update(precision=PRECISION, keep_fp32=keep, onnx_sha256=sha256_file(output),
                tensorrt_parse=parse_report(output),
                fp16={"tool": "onnxruntime.transformers.float16.convert_float_to_float16",
                      "keep_io_types": True, "source_onnx": Path(onnx_path).name,
                      "source_onnx_sha256": sidecar["onnx_sha256"]})
    copy_tokenizer_beside(onnx_path, output, sidecar)
    write_onnx_sidecar(output, data)
    return data


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
              help="FP16 graph to write, e.g. models/imdb.fp16.onnx (I/O types unchanged)")
@exit_on_toolkit_error
def main(onnx_path: Path, output: Path) -> None:
    """Write the FP16 graph and its sidecar; say whether the CPU provider runs it and which
    constants overflow."""
    constants = out_of_range_constants(onnx_path)
    sidecar = write_fp16_onnx(onnx_path, output)
    _session, error = try_open_on_cpu(output)
    keep = sidecar["keep_fp32"]
    click.echo(f"wrote {output} and {sidecar_path(output)}; {keep['nodes']} nodes kept FP32 "
               f"({len(keep['tensors'])} tensors); {constants['count']} float constants "
               f"beyond +-{FP16_MAX:g}")
    if error:
        raise ToolkitError(f"{output}: {error}")
    click.echo("ONNX Runtime's CPU provider runs it: evaluate it with calibration.gate --fp16")


if __name__ == "__main__":
    main()
