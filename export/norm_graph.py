"""Normalizations written as elementwise ONNX ops, found by their pattern in a graph.

Two patterns, both ending in the same variance -> Sqrt chain:

- decomposed LayerNorm (``export/layernorm.py``, the TensorRT 8.5 export):
  ReduceMean(x) -> Sub(x, mean) -> Mul(d, d) | Pow(d, 2) -> ReduceMean -> Add(eps) -> Sqrt ->
  Div(d, s) | Mul(d, Reciprocal(s)) | Mul(d, Div(1, s)) [-> Mul(weight)] [-> Add(bias)];
- RMSNorm (Llama, ``export.hf_attention.RMSNorm``): the same from Pow(x, 2) | Mul(x, x),
  with no mean subtracted, [-> Mul(weight)].

Their squares overflow FP16 once |x| > 256, and TensorRT runs these ops at the builder's
precision (only a LayerNormalization node becomes an INormalizationLayer, which computes in
FP32 by default), so the sidecar lists their output tensors in ``keep_fp32`` and the FP16
conversion leaves these nodes FP32. Found by structure, never by node name: the names are the
tracer's and a simplifier or quantizer may rename nodes.

Torch-free (``export.onnx_model`` and ``calibration`` import it); works on an
``onnx.GraphProto`` without importing onnx.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

from common.errors import ToolkitError

TARGETS = ("8.6", "8.5")  # --trt-target values: the lowest TensorRT a graph is written for
DEFAULT_TARGET = "8.6"
KEEP_FP32_WHY = ("normalization written as elementwise ops (decomposed LayerNorm, RMSNorm): "
                 "its square and mean overflow FP16 once |x| > 256, so these layers run in FP32")


def check_target(target: str) -> str:
    if target not in TARGETS:
        raise ToolkitError(f"--trt-target {target!r}: expected one of {list(TARGETS)}")
    return target


def layernorm_style(target: str) -> str:
    """The sidecar's ``tensorrt_target.layernorm`` for an export target."""
    return "decomposed" if check_target(target) == "8.5" else "LayerNormalization"


def tensorrt_target(target: str) -> Dict[str, str]:
    """The sidecar's ``tensorrt_target`` object."""
    return {"min_tensorrt": check_target(target), "layernorm": layernorm_style(target)}


def check_decomposed_graph(graph, n_layernorms: int, where) -> None:
    """A graph for TensorRT 8.5, which has no LayerNormalization importer: none may be left,
    and each nn.LayerNorm must be there as its decomposition (a lost or fused one would change
    the model, and its nodes would be missing from ``keep_fp32``)."""
    left = sum(node.op_type == "LayerNormalization" for node in graph.node)
    if left:
        raise ToolkitError(f"{where}: {left} LayerNormalization nodes in a graph for TensorRT "
                           "8.5, which cannot parse them (a LayerNorm not swapped by "
                           "export/layernorm.py, e.g. F.layer_norm)")
    found = count_kind(graph, "layernorm")
    if found != n_layernorms:
        raise ToolkitError(f"{where}: {found} decomposed LayerNorm patterns for {n_layernorms} "
                           "nn.LayerNorm modules (LayerNorm lost or rewritten)")


class _Graph:
    """Producers, consumers and constant tensors of a graph."""

    def __init__(self, graph):
        self.producer = {out: node for node in graph.node for out in node.output}
        self.consumers: Dict[str, list] = {}
        for node in graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.constants = {t.name for t in graph.initializer}
        self.constants |= {out for n in graph.node if n.op_type == "Constant" for out in n.output}
        self.nodes = list(graph.node)

    def only_consumer(self, tensor: str, op_type: str):
        users = self.consumers.get(tensor, [])
        return users[0] if len(users) == 1 and users[0].op_type == op_type else None

    def other_input(self, node, tensor: str) -> Optional[str]:
        others = [i for i in node.input if i != tensor]
        return others[0] if len(others) == 1 else None


def find_normalizations(graph) -> List[Dict[str, Any]]:
    """Each decomposed normalization of ``graph``: {"kind": "layernorm" | "rmsnorm",
    "nodes": [node names], "tensors": [their output tensor names]}, in graph order."""
    g = _Graph(graph)
    found = []
    for var in (n for n in g.nodes if n.op_type == "ReduceMean"):
        square = g.producer.get(var.input[0])
        base = _squared(square, g)
        if base is None:
            continue
        chain = _normalized(var, base, g)
        if chain is None:
            continue
        start = _mean_subtraction(base, g)
        kind = "layernorm" if start else "rmsnorm"
        nodes = start + [square, var] + chain
        nodes += _affine(nodes[-1], g, with_bias=kind == "layernorm")
        found.append({"kind": kind, "nodes": [n.name for n in nodes],
                      "tensors": [out for n in nodes for out in n.output]})
    return found


def keep_fp32_record(graph) -> Dict[str, Any]:
    """The sidecar's ``keep_fp32`` of an exported (FP32) graph."""
    norms = find_normalizations(graph)
    return {"why": KEEP_FP32_WHY,
            "tensors": [t for norm in norms for t in norm["tensors"]],
            "patterns": {kind: sum(n["kind"] == kind for n in norms)
                         for kind in ("layernorm", "rmsnorm")}}


def check_patterns_kept(norms: List[Dict[str, Any]], sidecar: Dict[str, Any], where) -> None:
    """Raise when a rewritten graph (Q/DQ, FP16) holds other normalization patterns than the
    export recorded in ``sidecar["keep_fp32"]["patterns"]`` (one was fused or rewritten, and
    its nodes would escape ``keep_fp32``). A sidecar from before keep_fp32: nothing to check."""
    recorded = (sidecar.get("keep_fp32") or {}).get("patterns")
    if recorded is None:
        return
    found = {kind: sum(n["kind"] == kind for n in norms) for kind in recorded}
    if found != recorded:
        raise ToolkitError(f"{where}: normalization patterns {found}, the export recorded "
                           f"{recorded} (a LayerNorm/RMSNorm was fused or rewritten)")


def count_kind(graph, kind: str) -> int:
    return sum(n["kind"] == kind for n in find_normalizations(graph))


def _squared(node, g: _Graph) -> Optional[str]:
    """The tensor t when ``node`` is Mul(t, t) or Pow(t, 2); else None."""
    if node is None:
        return None
    if node.op_type == "Mul" and len(node.input) == 2 and node.input[0] == node.input[1]:
        return node.input[0]
    if node.op_type == "Pow" and node.input[1] in g.constants:
        return node.input[0]
    return None


def _mean_subtraction(centred: str, g: _Graph) -> list:
    """[ReduceMean, Sub] when ``centred`` is Sub(x, ReduceMean(x)); else []."""
    sub = g.producer.get(centred)
    if sub is None or sub.op_type != "Sub":
        return []
    mean = g.producer.get(sub.input[1])
    if mean is not None and mean.op_type == "ReduceMean" and mean.input[0] == sub.input[0]:
        return [mean, sub]
    return []


def _normalized(var, base: str, g: _Graph) -> Optional[list]:
    """Add(eps) -> Sqrt -> base / sqrt in one of its spellings, as a node list; else None."""
    add = g.only_consumer(var.output[0], "Add")
    if add is None or g.other_input(add, var.output[0]) not in g.constants:
        return None
    sqrt = g.only_consumer(add.output[0], "Sqrt")
    if sqrt is None:
        return None
    for user in g.consumers.get(sqrt.output[0], []):
        if user.op_type == "Div" and list(user.input) == [base, sqrt.output[0]]:
            return [add, sqrt, user]
        inverse = user.op_type == "Reciprocal" or (
            user.op_type == "Div" and user.input[1] == sqrt.output[0]
            and user.input[0] in g.constants)
        if inverse:
            scale = next((m for m in g.consumers.get(user.output[0], [])
                          if m.op_type == "Mul" and base in m.input), None)
            if scale is not None:
                return [add, sqrt, user, scale]
    return None


def _affine(last, g: _Graph, with_bias: bool) -> list:
    """The Mul(weight) [and Add(bias)] right after the normalization, constants only."""
    out = []
    mul = g.only_consumer(last.output[0], "Mul")
    if mul is not None and g.other_input(mul, last.output[0]) in g.constants:
        out.append(mul)
        last = mul
    if with_bias:
        add = g.only_consumer(last.output[0], "Add")
        if add is not None and g.other_input(add, last.output[0]) in g.constants:
            out.append(add)
    return out
