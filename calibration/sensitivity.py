"""Which quantized MatMul/Gemm hurts most: the per-layer float fallback of ``calibration.qdq``.

Pretrained encoders (BERT, MiniLM) carry a few activation outliers, mostly at the FFN output of
later layers, that one per-tensor INT8 scale cannot hold; tiny from-scratch models do not. So
``--float-fallback K`` ranks every quantized linear layer by how much of the INT8 graph's
output error goes away when that layer alone is put back in float, and keeps the K worst
float (TensorRT then runs those GEMMs in FP16/FP32 and the rest in INT8).

The ranking needs no extra calibration: a variant is the INT8 graph with one node rewired to
the float tensors the FP32 graph feeds it (its activation is the QuantizeLinear's input, its
weight the FP32 initializer), scored on a few calibration batches by the mean squared
difference of the first output (the logits) from the FP32 graph's. The final graph is then
re-quantized with those nodes excluded, so it carries no dead Q/DQ pairs.

Host-only, like ``calibration.qdq``: onnx and onnxruntime inside the functions.
"""
from __future__ import annotations

from typing import Any, Dict, List, Sequence

import numpy as np

OP_TYPES = ("MatMul", "Gemm")


def quantized_linear_nodes(q_model) -> List[str]:
    """Names of the MatMul/Gemm nodes of the Q/DQ graph fed by a DequantizeLinear."""
    dq_outputs = {o for n in q_model.graph.node if n.op_type == "DequantizeLinear"
                  for o in n.output}
    return [n.name for n in q_model.graph.node
            if n.op_type in OP_TYPES and any(i in dq_outputs for i in n.input)]


def with_nodes_in_float(q_model, fp32_model, names: Sequence[str]):
    """A copy of the Q/DQ graph where ``names`` read the FP32 graph's inputs (float weights
    added back as initializers); the Q/DQ pairs they bypass are left dangling."""
    import onnx

    wanted = set(names)
    fp32_nodes = {n.name: n for n in fp32_model.graph.node if n.name in wanted}
    missing = wanted - set(fp32_nodes)
    if missing:
        raise ValueError(f"nodes not in the FP32 graph: {sorted(missing)}")
    fp32_inits = {t.name: t for t in fp32_model.graph.initializer}
    model = onnx.ModelProto()
    model.CopyFrom(q_model)
    present = {t.name for t in model.graph.initializer}
    for node in model.graph.node:
        if node.name in wanted:
            del node.input[:]
            node.input.extend(fp32_nodes[node.name].input)
            for name in node.input:
                if name in fp32_inits and name not in present:
                    model.graph.initializer.append(fp32_inits[name])
                    present.add(name)
    return model


def layer_labels(model) -> Dict[str, str]:
    """What each linear node is, in facts the graph holds: its name, weight shape and bias
    initializer (exporters name some Gemms only ``Gemm_<n>``; the bias name often says the
    layer, but onnxsim merges equal constants under one name, so it is a hint, not a proof)."""
    shapes = {t.name: "x".join(str(d) for d in t.dims) for t in model.graph.initializer}
    labels = {}
    for node in model.graph.node:
        if node.op_type in OP_TYPES:
            weight = next((shapes[n] for n in node.input[1:2] if n in shapes), "activation")
            bias = node.input[2] if len(node.input) > 2 else ""
            labels[node.name] = f"{node.name} [{weight}]" + (f" bias {bias}" if bias else "")
    return labels


def _session(model):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # the dangling Q/DQ pairs are expected: no warnings for them
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def output_error(session, feeds: Sequence[Dict[str, np.ndarray]],
                 reference: Sequence[np.ndarray]) -> float:
    """Mean squared difference of the first output from ``reference`` over ``feeds``."""
    name = session.get_outputs()[0].name
    total, count = 0.0, 0
    for feed, want in zip(feeds, reference):
        got = session.run([name], feed)[0].astype(np.float64)
        total += float(np.sum((got - want) ** 2))
        count += want.size
    return total / max(count, 1)


def rank_float_fallback(fp32_model, q_model, feeds: Sequence[Dict[str, np.ndarray]],
                        progress=None) -> Dict[str, Any]:
    """Every quantized linear node with the output error left when it alone runs in float,
    most helpful first: ``{"int8_error", "nodes": [{"node", "layer", "error", "gain"}]}``."""
    fp32 = _session(fp32_model)
    first = fp32.get_outputs()[0].name
    reference = [fp32.run([first], feed)[0].astype(np.float64) for feed in feeds]
    base = output_error(_session(q_model), feeds, reference)
    labels = layer_labels(fp32_model)
    ranked = []
    for name in quantized_linear_nodes(q_model):
        error = output_error(_session(with_nodes_in_float(q_model, fp32_model, [name])), feeds,
                             reference)
        ranked.append({"node": name, "layer": labels.get(name, name), "error": error,
                       "gain": base - error})
        if progress is not None:
            progress()
    ranked.sort(key=lambda row: row["gain"], reverse=True)
    return {"int8_error": base, "nodes": ranked}
