"""Explicit INT8 for TensorRT: insert QuantizeLinear/DequantizeLinear pairs with ONNX Runtime.

    python -m calibration.qdq --onnx models/imdb.onnx --calib calibration/imdb.calib.npz
        --output models/imdb.qdq.onnx --method entropy|percentile|minmax

What TensorRT needs from a Q/DQ graph (DESIGN.md), and how it is obtained here:
- signed INT8, zero points 0: ``QInt8`` activations and weights, ``ActivationSymmetric`` and
  ``WeightSymmetric``;
- per-channel weights (opset >= 13; ours is 17): ``per_channel`` with the MatMul weight axis 1,
  the output channels of a ``(in, out)`` weight;
- Q/DQ only at the inputs of MatMul/Gemm, where TensorRT fuses them into INT8 GEMMs; every other
  op (LayerNorm, Softmax, Add, the KV and logits outputs) stays float;
- by default only the MatMul/Gemm with a constant weight (the linear layers): the attention
  products (Q.K^T and softmax.V, both inputs activations) stay float. Measured on a small
  IMDB model (d_model 64, 2 layers, 80% accuracy; 5,000 test reviews): quantizing them too
  moved the largest |logit difference| from 0.08 to 0.83 and prediction agreement with FP32
  from 99.8% to 98.1% (per-tensor INT8 cannot hold the softmax's small probabilities).
  ``--quantize-attention`` puts them back, for TensorRT's INT8 attention kernels when the
  gate allows it;
- no INT32 bias DequantizeLinear (TensorRT does not take one): ``QuantizeBias`` off;
- the nodes of normalizations written as elementwise ops (the TensorRT 8.5 export's decomposed
  LayerNorm, Llama's RMSNorm; ``export.norm_graph``) are excluded by name, whatever the op
  types quantized, and the sidecar keeps their ``keep_fp32`` list (found again in the Q/DQ
  graph) and the FP32 graph's ``tensorrt_target``, with the Q/DQ graph's own
  ``tensorrt_parse``.
The result is checked against these rules before it is written (``check_qdq_for_tensorrt``).

Host-only: onnx and onnxruntime are imported inside the functions; never torch.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List

if __package__ in (None, ""):  # run as a script: python calibration/qdq.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import click
import numpy as np

from calibration.loader import CalibrationSet
from common.artifacts import (
    load_onnx_sidecar,
    sidecar_path,
    tokenizer_path,
    write_onnx_sidecar,
)
from common.errors import ToolkitError, exit_on_toolkit_error
from common.fileio import atomic_path, atomic_write_bytes, sha256_file

METHODS = ("entropy", "percentile", "minmax")
OP_TYPES = ["MatMul", "Gemm"]
PRECISION = "int8-qdq"


def load_onnx(path: str | Path):
    """``onnx.load`` with a one-line error for a missing or unreadable file."""
    import onnx
    from google.protobuf.message import DecodeError

    path = Path(path)
    if not path.is_file():
        raise ToolkitError(f"ONNX file not found: {path}")
    try:
        return onnx.load(str(path))
    except (DecodeError, ValueError, OSError) as exc:
        raise ToolkitError(f"{path} is not a readable ONNX model ({exc})") from None


def calibration_reader(calib: CalibrationSet):
    """An ``onnxruntime.quantization.CalibrationDataReader`` over the calibration batches.

    ``set_range``/``__len__`` let quantize_static collect one batch at a time
    (``CalibStridedMinMax``): its histogram calibrators stack a whole collection into one array,
    which fails when the batches have different lengths."""
    from onnxruntime.quantization import CalibrationDataReader

    feeds = list(calib)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._pending = iter(feeds)

        def __len__(self):
            return len(feeds)

        def get_next(self):
            return next(self._pending, None)

        def set_range(self, start_index: int, end_index: int):
            self._pending = iter(feeds[start_index:end_index])

        def rewind(self):
            self._pending = iter(feeds)

    return Reader()


def quantize_to_qdq(
    onnx_path: str | Path,
    calib_path: str | Path,
    output: str | Path,
    method: str = "entropy",
    quantize_attention: bool = False,
    float_fallback: int = 0,
    sensitivity_batches: int = 4,
) -> Dict[str, Any]:
    """Write ``output`` (Q/DQ ONNX) and its sidecar; returns the Q/DQ summary.

    float_fallback: keep this many linear layers float, those whose INT8 error is largest
    (``calibration.sensitivity``, scored on ``sensitivity_batches`` calibration batches)."""
    import onnx

    if method not in METHODS:
        raise ToolkitError(f"--method {method!r}: expected one of {list(METHODS)}")
    sidecar = load_onnx_sidecar(onnx_path, check_hash=True)
    load_onnx(onnx_path)  # a clear error for an unreadable graph before ORT's long one
    calib = CalibrationSet(calib_path)
    check_calibration_matches(calib, sidecar, onnx_path)
    with tempfile.TemporaryDirectory(prefix="qdq-") as tmp:
        prepared = preprocess(onnx_path, Path(tmp) / "prepared.onnx")
        quantized = Path(tmp) / "quantized.onnx"
        prepared_model = load_onnx(prepared)
        attention = [] if quantize_attention else attention_matmuls(prepared_model)
        norms = normalization_nodes(prepared_model, sidecar, onnx_path)
        excluded = attention + norms
        run_quantize_static(prepared, quantized, calib, method, excluded)
        fallback = None
        if float_fallback:
            fallback = choose_float_fallback(prepared, quantized, calib, float_fallback,
                                             sensitivity_batches)
            run_quantize_static(prepared, quantized, calib, method,
                                excluded + fallback["float_nodes"])
        model = drop_unused_opset_imports(load_onnx(quantized))
    protected = [t["name"] for t in sidecar["outputs"]]
    summary = check_qdq_for_tensorrt(model, protected_outputs=protected)
    summary["float_attention_matmuls"] = len(attention)
    summary["float_normalization_nodes"] = len(norms)
    if fallback is not None:
        summary["float_fallback"] = fallback
    with atomic_path(output) as tmp_out:
        onnx.save(model, str(tmp_out))
    write_qdq_sidecar(onnx_path, calib_path, output, sidecar, method, summary,
                      qdq_keep_fp32(model, sidecar, output))
    return summary


def choose_float_fallback(prepared: Path, quantized: Path, calib: CalibrationSet, count: int,
                          batches: int) -> Dict[str, Any]:
    """The ``count`` linear layers to keep float, with the ranking that chose them."""
    from tqdm import tqdm

    from calibration.sensitivity import quantized_linear_nodes, rank_float_fallback

    q_model = load_onnx(quantized)
    candidates = quantized_linear_nodes(q_model)
    if count < 0 or count >= len(candidates):
        raise ToolkitError(f"--float-fallback {count}: expected 0..{len(candidates) - 1} "
                           f"(the graph has {len(candidates)} quantized linear layers)")
    feeds = list(calib)
    picked = np.linspace(0, len(feeds) - 1, min(batches, len(feeds))).round().astype(int)
    with tqdm(total=len(candidates), desc="float-fallback ranking", unit="layer") as bar:
        ranking = rank_float_fallback(load_onnx(prepared), q_model,
                                      [feeds[i] for i in sorted(set(picked))], bar.update)
    chosen = [row["node"] for row in ranking["nodes"][:count]]
    return {"float_nodes": chosen, "int8_error": ranking["int8_error"],
            "scored_batches": len(set(picked)), "ranking": ranking["nodes"]}


def check_calibration_matches(calib: CalibrationSet, sidecar: Dict[str, Any], onnx_path) -> None:
    """Same graph inputs and the same tokenizer, else the ranges would come from wrong data."""
    graph_inputs = [t["name"] for t in sidecar["inputs"]]
    if calib.input_names != graph_inputs:
        raise ToolkitError(f"calibration set {calib.path} feeds {calib.input_names}; "
                           f"{onnx_path} takes {graph_inputs}: rebuild it with calibration.dataset")
    if calib.meta.get("tokenizer_sha256") not in (None, sidecar["tokenizer_sha256"]):
        raise ToolkitError(f"calibration set {calib.path} was tokenized with another tokenizer "
                           f"than {onnx_path}'s: rebuild it with calibration.dataset")
    if calib.kind == "feature_classifier":
        from calibration.feature_data import norm_digest

        if calib.meta.get("feature_norm_sha256") != norm_digest(sidecar):
            raise ToolkitError(f"calibration set {calib.path} was made for another feature "
                               f"normalization than {onnx_path}'s: rebuild it with "
                               "calibration.dataset")


def attention_matmuls(model) -> List[str]:
    """Names of the MatMul nodes whose inputs are both activations (no constant weight)."""
    constants = {t.name for t in model.graph.initializer}
    constants |= {out for n in model.graph.node if n.op_type == "Constant" for out in n.output}
    return [n.name for n in model.graph.node
            if n.op_type == "MatMul" and not any(i in constants for i in n.input)]


def normalization_nodes(model, sidecar: Dict[str, Any], onnx_path) -> List[str]:
    """Names of the nodes of every elementwise normalization (``export.norm_graph``), to be
    excluded from quantization: they stay float and the engine build keeps them FP32.
    Refuses a graph where ORT's pre-processing lost one the export recorded."""
    from export.norm_graph import check_patterns_kept, find_normalizations

    norms = find_normalizations(model.graph)
    check_patterns_kept(norms, sidecar, f"{onnx_path} after quant_pre_process")
    return [name for norm in norms for name in norm["nodes"]]


def qdq_keep_fp32(model, sidecar: Dict[str, Any], where) -> Dict[str, Any]:
    """``keep_fp32`` found again in the Q/DQ graph (its tensor names are the ones the engine
    build sees when it parses this file), the same patterns as the FP32 graph's."""
    from export.norm_graph import check_patterns_kept, find_normalizations, keep_fp32_record
    from export.preflight import feature_normalization

    check_patterns_kept(find_normalizations(model.graph), sidecar, where)
    keep = keep_fp32_record(model.graph)
    norm = feature_normalization(model.graph)  # a feature classifier's (x - mean) / std
    if norm is not None:
        keep.update(tensors=keep["tensors"] + norm["tensors"],
                    feature_normalization=norm["tensors"])
    return keep


def run_quantize_static(prepared: Path, quantized: Path, calib: CalibrationSet, method: str,
                        nodes_to_exclude: List[str]) -> None:
    """ORT's static quantization with the TensorRT settings of this module's docstring."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    calibrate_method = {"entropy": CalibrationMethod.Entropy, "minmax": CalibrationMethod.MinMax,
                        "percentile": CalibrationMethod.Percentile}[method]
    quantize_static(
        str(prepared), str(quantized), calibration_reader(calib),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=OP_TYPES,
        per_channel=True,
        reduce_range=False,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=calibrate_method,
        nodes_to_exclude=nodes_to_exclude,
        extra_options={
            "ActivationSymmetric": True,
            "WeightSymmetric": True,
            "QuantizeBias": False,
            "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1},
            "OpTypesToExcludeOutputQuantization": OP_TYPES,
            "CalibStridedMinMax": 1,  # one batch per collection: see calibration_reader
        },
    )


def preprocess(onnx_path: str | Path, prepared: Path) -> Path:
    """ORT's pre-processing (shape inference, basic optimizations) before quantization.

    ``auto_merge`` lets symbolic shape inference merge the graph's symbolic axes; without it
    it stops with "Incomplete symbolic shape inference" on these graphs (DESIGN.md)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(onnx_path), str(prepared), auto_merge=True)
    except Exception as exc:  # ORT's shape inference raises bare Exception; reworded here
        raise ToolkitError(f"quant_pre_process failed on {onnx_path} ({_first_line(exc)})"
                           ) from None
    return prepared


def drop_unused_opset_imports(model):
    """Remove the opset imports of domains no node uses (ORT's pre-processing declares all of
    its own, com.microsoft included): the graph then names only what TensorRT must parse."""
    used = {node.domain for node in model.graph.node} | {"", "ai.onnx"}
    kept = [o for o in model.opset_import if o.domain in used]
    del model.opset_import[:]
    model.opset_import.extend(kept)
    return model


def check_qdq_for_tensorrt(model, protected_outputs: List[str] | None = None) -> Dict[str, Any]:
    """Check a Q/DQ graph against what TensorRT takes; returns counts, raises on a violation.

    Rules: only ONNX-domain ops; every Q/DQ is int8 with all-zero zero points; every
    DequantizeLinear feeds only MatMul/Gemm; weight DequantizeLinear (constant input) is
    per-channel (``axis`` set, a scale per channel); no graph output comes from a
    DequantizeLinear; opset stays 17.
    """
    from onnx import TensorProto, numpy_helper

    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    consumers: Dict[str, List[str]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node.op_type)
    problems: List[str] = [f"{n.name}: {n.domain} op {n.op_type} (TensorRT parses only ONNX ops)"
                           for n in graph.node if n.domain not in ("", "ai.onnx")]
    counts = {"quantize": 0, "dequantize": 0, "weights_per_channel": 0, "activations": 0}
    for node in graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        counts["quantize" if node.op_type == "QuantizeLinear" else "dequantize"] += 1
        zp = initializers.get(node.input[2]) if len(node.input) > 2 else None
        if zp is None:
            problems.append(f"{node.name}: no constant zero point")
        elif zp.data_type != TensorProto.INT8 or numpy_helper.to_array(zp).any():
            problems.append(f"{node.name}: zero point must be int8 and 0")
        if node.op_type == "DequantizeLinear":
            _check_dequantize(node, initializers, consumers, problems, counts)
    for name in protected_outputs or []:
        producer = next((n for n in graph.node if name in n.output), None)
        if producer is not None and producer.op_type == "DequantizeLinear":
            problems.append(f"graph output {name} comes from a DequantizeLinear (must stay float)")
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset != 17:
        problems.append(f"opset {opset}, expected 17")
    if counts["dequantize"] == 0:
        problems.append("no Q/DQ nodes were inserted")
    if problems:
        raise ToolkitError(f"Q/DQ graph is not TensorRT-ready: {'; '.join(problems[:5])}")
    return {**counts, "opset": opset}


def _check_dequantize(node, initializers, consumers, problems: List[str], counts) -> None:
    from onnx import numpy_helper

    users = consumers.get(node.output[0], [])
    if not users or any(op not in OP_TYPES for op in users):
        problems.append(f"{node.name} feeds {users or 'nothing'}, expected only {OP_TYPES}")
    if node.input[0] in initializers:  # a quantized weight
        scale = numpy_helper.to_array(initializers[node.input[1]])
        has_axis = any(a.name == "axis" for a in node.attribute)
        if scale.ndim != 1 or scale.size < 2 or not has_axis:
            problems.append(f"{node.name}: weight is not quantized per channel")
        else:
            counts["weights_per_channel"] += 1
    else:
        counts["activations"] += 1


def write_qdq_sidecar(onnx_path, calib_path, output, sidecar: Dict[str, Any], method: str,
                      summary: Dict[str, Any], keep_fp32: Dict[str, Any]) -> Path:
    """The FP32 sidecar, re-pointed at the Q/DQ graph, with how the INT8 scales were made.

    ``tensorrt_target`` stays the FP32 graph's (when it has one); ``keep_fp32`` and
    ``tensorrt_parse`` are the Q/DQ graph's own."""
    from common.trt_onnx import parse_report

    data = dict(sidecar)
    data.update(
        precision=PRECISION,
        keep_fp32=keep_fp32,
        tensorrt_parse=parse_report(output),
        onnx_sha256=sha256_file(output),
        quantization={
            "tool": "onnxruntime.quantization.quantize_static",
            "method": method,
            "activations": "int8 symmetric per-tensor",
            "weights": "int8 symmetric per-channel",
            "op_types": OP_TYPES,
            "attention_matmuls": "float" if summary["float_attention_matmuls"] else "int8",
            "float_nodes": (summary.get("float_fallback") or {}).get("float_nodes", []),
            "calibration_npz": Path(calib_path).name,
            "calibration_sha256": sha256_file(calib_path),
            "source_onnx": Path(onnx_path).name,
            "source_onnx_sha256": sha256_file(onnx_path),
            "qdq_nodes": summary,
        },
    )
    copy_tokenizer_beside(onnx_path, output, sidecar)
    return write_onnx_sidecar(output, data)


def copy_tokenizer_beside(onnx_path, output, sidecar: Dict[str, Any]) -> None:
    """The sidecar names its tokenizer file beside the graph: put it there when the Q/DQ graph
    is written to another folder, so the Q/DQ artifact stands on its own. A feature
    classifier has no tokenizer."""
    if not sidecar.get("tokenizer"):
        return
    source, target = tokenizer_path(onnx_path, sidecar), tokenizer_path(output, sidecar)
    if source.resolve() == target.resolve():
        return
    if target.exists() and sha256_file(target) != sidecar["tokenizer_sha256"]:
        raise ToolkitError(f"{target} exists and is another tokenizer than {onnx_path}'s: "
                           "write the Q/DQ graph to another folder")
    if not target.exists():
        atomic_write_bytes(target, source.read_bytes())


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@click.command(context_settings={"show_default": True})
@click.option("--onnx", "onnx_path", required=True, type=click.Path(path_type=Path),
              help="FP32 model exported by export/ (sidecar beside it)")
@click.option("--calib", "calib_path", required=True, type=click.Path(path_type=Path),
              help="calibration set from calibration.dataset")
@click.option("--output", required=True, type=click.Path(path_type=Path),
              help="Q/DQ model to write, e.g. models/imdb.qdq.onnx")
@click.option("--method", type=click.Choice(METHODS), default="entropy",
              help="how activation ranges are chosen from the calibration data")
@click.option("--quantize-attention", is_flag=True,
              help="also quantize the attention products Q.K^T and softmax.V (less accurate)")
@click.option("--float-fallback", type=click.IntRange(0), default=0,
              help="keep the N linear layers whose INT8 error is largest in float")
@click.option("--sensitivity-batches", type=click.IntRange(1), default=4,
              help="calibration batches the --float-fallback ranking is scored on")
@exit_on_toolkit_error
def main(onnx_path: Path, calib_path: Path, output: Path, method: str,
         quantize_attention: bool, float_fallback: int, sensitivity_batches: int) -> None:
    """Quantize MatMul/Gemm inputs to symmetric INT8 Q/DQ for TensorRT."""
    summary = quantize_to_qdq(onnx_path, calib_path, output, method, quantize_attention,
                              float_fallback, sensitivity_batches)
    click.echo(f"wrote {output} ({summary['dequantize']} DequantizeLinear, "
               f"{summary['weights_per_channel']} per-channel weights) and {sidecar_path(output)}")
    fallback = summary.get("float_fallback")
    if fallback:
        chosen = fallback["ranking"][:len(fallback["float_nodes"])]
        click.echo(f"float fallback (INT8 logit MSE {fallback['int8_error']:.3g}): "
                   + ", ".join(f"{row['layer']} (-{row['gain']:.3g})" for row in chosen))


if __name__ == "__main__":
    main()
