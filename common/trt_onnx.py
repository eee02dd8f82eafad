"""Will TensorRT's ONNX parser import this graph? A check that needs no TensorRT.

``trt_onnx_support.json`` (beside this file) holds, per TensorRT release, what its ONNX parser
imports: the operators and data types onnx-tensorrt's docs/operators.md lists at the commit that
release pins, and the named conditions below (restrictions from the docs and importer sources
that can decide our graphs). The commits and files are recorded in each entry.

Two halves, so the device (no onnx) can judge a graph the host described:
  * ``graph_facts`` (host, imports onnx lazily) reduces an ONNX file to small JSON facts: per
    operator the data types seen (one example node each) and, per condition, the nodes that
    violate it. Export stores them in the sidecar under ``tensorrt_parse``.
  * ``parse_problems`` (stdlib only) judges facts against one release's table entry.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from common.errors import ToolkitError

TABLE_PATH = Path(__file__).with_name("trt_onnx_support.json")
TABLE_KEYS = ("8.5", "8.6", "10.3", "10.16", "11.1")
FACTS_FORMAT = 1
MAX_NODES_NAMED = 5  # offender names kept per condition; the count covers all of them
MAX_VALUES = 64  # constant inputs read for conditions: axes, K, zero points, scales
TOPK_MAX_K = 3840  # NvInfer.h (8.5.2 .. v11.1): "Currently only values of K up to 3840"

# ONNX element type names -> the type names docs/operators.md uses.
ONNX_TO_TABLE_TYPE = {
    "FLOAT": "FP32", "FLOAT16": "FP16", "BFLOAT16": "BF16", "DOUBLE": "DOUBLE",
    "FLOAT8E4M3FN": "FP8", "FLOAT8E4M3FNUZ": "FP8", "FLOAT8E5M2": "FP8", "FLOAT8E5M2FNUZ": "FP8",
    "FLOAT4E2M1": "FP4",
}
# The input whose type decides an operator's row (default: input 0); -1 = output 0.
TYPE_INPUT = {"Where": 1, "Constant": -1, "ConstantOfShape": -1, "RandomNormal": -1,
              "RandomUniform": -1}
REDUCE_OPS = ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax",
              "ReduceMean", "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare")
LAYERNORM_FIX = ("re-export for TensorRT 8.5: make onnx TRT=8.5 (python -m export.onnx_model "
                 "--trt-target 8.5; Hugging Face: python -m export.hf ... --trt-target 8.5)")


# --- conditions: small checks over one node's view ------------------------------------------
# A node view is a plain dict: {"op", "name", "inputs": [{"name", "constant", "values"}],
# "outputs": [names], "attrs": {name: value}}; "values" is a flat list for small constants,
# else None. Each check returns True when the node breaks the condition.

def _input(node: Dict[str, Any], index: int) -> Optional[Dict[str, Any]]:
    inputs = node.get("inputs", [])
    if index < len(inputs) and inputs[index].get("name"):
        return inputs[index]
    return None


def _not_constant(index: int) -> Callable[[Dict[str, Any]], bool]:
    def check(node: Dict[str, Any]) -> bool:
        given = _input(node, index)
        return given is not None and not given.get("constant")
    return check


def _topk_k_too_large(node: Dict[str, Any]) -> bool:
    k = _input(node, 1)
    values = (k or {}).get("values") or [node.get("attrs", {}).get("k", 0)]
    return any(v > TOPK_MAX_K for v in values)


def _zero_point_nonzero(node: Dict[str, Any]) -> bool:
    zp = _input(node, 2)
    return zp is not None and zp.get("constant") and any(zp.get("values") or [])


def _scale_not_positive(node: Dict[str, Any]) -> bool:
    scale = _input(node, 1)
    return scale is not None and scale.get("constant") and \
        any(v <= 0 for v in scale.get("values") or [])


def _qdq_uint8(node: Dict[str, Any]) -> bool:
    return any((_input(node, i) or {}).get("dtype") == "UINT8" for i in (0, 2))


def _extra_layernorm_outputs(node: Dict[str, Any]) -> bool:
    return any(name for name in node.get("outputs", [])[1:])


# id -> (what TensorRT requires, the check that says a node breaks it)
CONDITIONS: Dict[str, Tuple[str, Callable[[Dict[str, Any]], bool]]] = {
    "topk_k_constant": ("K must be an initializer or Constant", _not_constant(1)),
    "topk_k_at_most_3840": (f"K must be <= {TOPK_MAX_K}", _topk_k_too_large),
    "topk_sorted": ("attribute sorted must be 1",
                    lambda n: n.get("attrs", {}).get("sorted", 1) != 1),
    "reduce_axes_constant": ("axes input must be an initializer or Constant", _not_constant(1)),
    "slice_axes_constant": ("axes input must be an initializer or Constant", _not_constant(3)),
    "squeeze_axes_constant": ("axes input must be an initializer or Constant", _not_constant(1)),
    "unsqueeze_axes_constant": ("axes input must be an initializer or Constant",
                                _not_constant(1)),
    "cumsum_axis_constant": ("axis input must be an initializer or Constant", _not_constant(1)),
    "qdq_zero_point_given": ("the zero point input must be given (3 inputs)",
                             lambda n: _input(n, 2) is None),
    "qdq_zero_point_zero": ("zero point must be all zeros (symmetric quantization)",
                            _zero_point_nonzero),
    "qdq_scale_positive": ("scale must be all positive", _scale_not_positive),
    "qdq_not_uint8": ("UINT8 quantization is not supported (INT8 only)", _qdq_uint8),
    "layernorm_single_output": ("only output Y is supported (no Mean/InvStdDev outputs)",
                                _extra_layernorm_outputs),
}
CONDITION_OPS = {
    "topk_k_constant": ("TopK",), "topk_k_at_most_3840": ("TopK",), "topk_sorted": ("TopK",),
    "reduce_axes_constant": REDUCE_OPS, "slice_axes_constant": ("Slice",),
    "squeeze_axes_constant": ("Squeeze",), "unsqueeze_axes_constant": ("Unsqueeze",),
    "cumsum_axis_constant": ("CumSum",),
    "qdq_zero_point_given": ("QuantizeLinear", "DequantizeLinear"),
    "qdq_zero_point_zero": ("QuantizeLinear", "DequantizeLinear"),
    "qdq_scale_positive": ("QuantizeLinear", "DequantizeLinear"),
    "qdq_not_uint8": ("QuantizeLinear", "DequantizeLinear"),
    "layernorm_single_output": ("LayerNormalization",),
}


# --- the table -------------------------------------------------------------------------------

_TABLE: Dict[str, Any] = {}


def load_table() -> Dict[str, Any]:
    if not _TABLE:
        _TABLE.update(json.loads(TABLE_PATH.read_text(encoding="utf-8")))
    return _TABLE


def version_tuple(version: str) -> Tuple[int, ...]:
    """``"8.6.2.3-1+cuda12"`` -> ``(8, 6, 2, 3)``: digits up to the first non-numeric tail."""
    parts = []
    for piece in str(version).strip().split("."):
        digits = re.match(r"\d+", piece)
        if not digits:
            break
        parts.append(int(digits.group()))
        if digits.group() != piece:
            break
    if not parts:
        raise ToolkitError(f"TensorRT version {version!r}: expected digits like 8.5.2.2")
    return tuple(parts)


def table_key(trt_version: str) -> str:
    """The table entry that covers an installed TensorRT version ("10.3.0.30" -> "10.3")."""
    wanted = version_tuple(trt_version)
    for key, entry in load_table()["entries"].items():
        covers = entry["covers"]
        below = covers.get("below")
        if version_tuple(covers["from"]) <= wanted and (below is None or
                                                        wanted < version_tuple(below)):
            return key
    raise ToolkitError(f"TensorRT {trt_version}: no ONNX parser table for it (covered: 8.5.x, "
                       f"8.6.x, 10.x, 11.x; TensorRT below 8.5 is not supported)")


def table_entry(trt_version: str) -> Dict[str, Any]:
    return load_table()["entries"][table_key(trt_version)]


def assumed_note(trt_version: str) -> str:
    """Non-empty when the version is newer than what its entry was read from."""
    key = table_key(trt_version)
    exact = table_entry(trt_version)["covers"].get("exact_up_to")
    if exact and version_tuple(trt_version)[:2] > version_tuple(exact):
        return f"table {key} assumed for {trt_version}"
    return ""


# --- judging facts ---------------------------------------------------------------------------

def parse_problems(facts: Dict[str, Any], trt_version: str) -> List[str]:
    """One line per reason the parser of ``trt_version`` would refuse the graph; [] = parses."""
    key = table_key(trt_version)
    entry = load_table()["entries"][key]
    where = f"TensorRT {trt_version} (onnx-tensorrt {entry['onnx_tensorrt_commit'][:8]})"
    problems = _opset_problems(facts, entry, where)
    aliases = entry.get("type_aliases", {})
    wanted = version_tuple(trt_version)
    for op, seen in sorted(facts.get("ops", {}).items()):
        example = _example(seen)
        known = entry["operators"].get(op)
        if known is None or ("since" in known and wanted < version_tuple(known["since"])):
            fix = f"; fix: {LAYERNORM_FIX}" if op == "LayerNormalization" and key == "8.5" else ""
            problems.append(f"{op} ({seen.get('count', 1)} nodes, e.g. {example}): no importer "
                            f"in the ONNX parser of {where}{fix}")
            continue
        problems += _type_problems(op, seen, known, aliases, where)
        for cond in known.get("conditions", []):
            broken = facts.get("offenders", {}).get(op, {}).get(cond)
            if broken:
                names = ", ".join(broken["nodes"])
                more = f" (+{broken['count'] - len(broken['nodes'])} more)" \
                    if broken["count"] > len(broken["nodes"]) else ""
                problems.append(f"{op} {names}{more}: {CONDITIONS[cond][0]} for {where}")
    return problems


def _opset_problems(facts: Dict[str, Any], entry: Dict[str, Any], where: str) -> List[str]:
    opset = facts.get("opset")
    if opset is None:
        return []
    if opset > entry["max_opset"]:
        return [f"opset {opset}: the ONNX parser of {where} takes opsets up to "
                f"{entry['max_opset']}; fix: re-export with --opset {min(17, entry['max_opset'])}"]
    if opset < entry.get("min_opset", 1):
        return [f"opset {opset}: the ONNX parser of {where} takes opsets from "
                f"{entry['min_opset']}"]
    return []


def _type_problems(op: str, seen: Dict[str, Any], known: Dict[str, Any],
                   aliases: Dict[str, str], where: str) -> List[str]:
    if "types" not in known:
        return []
    bad = {t: node for t, node in seen.get("types", {}).items()
           if aliases.get(t, t) not in known["types"]}
    return [f"{op} {node}: type {t} is not among the types of {where} "
            f"({', '.join(known['types'])})" for t, node in sorted(bad.items())]


def _example(seen: Dict[str, Any]) -> str:
    names = list(seen.get("types", {}).values())
    return seen.get("example") or (names[0] if names else "?")


# --- facts from an ONNX file (host) ----------------------------------------------------------

def graph_facts(onnx_path: str | os.PathLike) -> Dict[str, Any]:
    """JSON-ready facts of an ONNX file for ``parse_problems`` (imports onnx)."""
    import onnx

    model = onnx.load(str(onnx_path))
    dtypes = _value_types(model)
    constants = _constant_values(model.graph)
    ops: Dict[str, Dict[str, Any]] = {}
    offenders: Dict[str, Dict[str, Dict[str, Any]]] = {}
    for index, node in enumerate(model.graph.node):
        view = node_view(node, index, dtypes, constants)
        op = view["op"] if node.domain in ("", "ai.onnx") else f"{node.domain}:{view['op']}"
        seen = ops.setdefault(op, {"count": 0, "example": view["name"], "types": {}})
        seen["count"] += 1
        for dtype in _node_types(view):
            seen["types"].setdefault(dtype, view["name"])
        for cond, (_, broken) in CONDITIONS.items():
            if op in CONDITION_OPS[cond] and broken(view):
                record = offenders.setdefault(op, {}).setdefault(cond, {"count": 0, "nodes": []})
                record["count"] += 1
                if len(record["nodes"]) < MAX_NODES_NAMED:
                    record["nodes"].append(view["name"])
    domains = {o.domain: o.version for o in model.opset_import}
    return {"format": FACTS_FORMAT, "opset": domains.get("", domains.get("ai.onnx")),
            "domains": domains, "nodes": len(model.graph.node),
            "ops": dict(sorted(ops.items())), "offenders": offenders}


def node_view(node, index: int, dtypes: Dict[str, str], constants: Dict[str, Any]):
    """The plain-dict view of an ONNX node that the CONDITIONS checks read."""
    from onnx import helper

    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute
             if a.type in (a.INT, a.FLOAT, a.INTS, a.FLOATS)}
    return {
        "op": node.op_type, "name": node.name or (node.output[0] if node.output else f"#{index}"),
        "inputs": [{"name": name, "dtype": dtypes.get(name), "constant": name in constants,
                    "values": constants.get(name)} for name in node.input],
        "outputs": list(node.output), "attrs": attrs,
        "output_dtype": dtypes.get(node.output[0]) if node.output else None,
    }


def _node_types(view: Dict[str, Any]) -> List[str]:
    """The data types that decide the operator's row: input 0 unless TYPE_INPUT says otherwise;
    Cast is judged by its input and its target type."""
    op = view["op"]
    if op in ("Cast", "CastLike"):
        found = [(_input(view, 0) or {}).get("dtype"), view.get("output_dtype")]
    elif TYPE_INPUT.get(op) == -1 or not view["inputs"]:
        found = [view.get("output_dtype")]
    else:
        found = [(_input(view, TYPE_INPUT.get(op, 0)) or {}).get("dtype")]
    return [t for t in found if t]


def _value_types(model) -> Dict[str, str]:
    """Tensor name -> table type name, from shape inference where it runs, else the graph."""
    from onnx import TensorProto, shape_inference

    try:
        inferred = shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - inference is a best effort; the graph's own info stays
        inferred = model
    graph = inferred.graph
    names: Dict[str, int] = {t.name: t.data_type for t in graph.initializer}
    for value in list(graph.value_info) + list(graph.input) + list(graph.output):
        if value.type.tensor_type.elem_type:
            names[value.name] = value.type.tensor_type.elem_type
    for node in graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    names[node.output[0]] = a.t.data_type
    out = {}
    for name, code in names.items():
        onnx_name = TensorProto.DataType.Name(code)
        out[name] = ONNX_TO_TABLE_TYPE.get(onnx_name, onnx_name)
    return out


def _constant_values(graph) -> Dict[str, Any]:
    """Initializer and Constant outputs -> a flat list of values when small, else None."""
    from onnx import numpy_helper

    tensors = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    tensors[node.output[0]] = a.t
    values: Dict[str, Any] = {}
    for name, tensor in tensors.items():
        size = 1
        for d in tensor.dims:
            size *= d
        values[name] = numpy_helper.to_array(tensor).reshape(-1).tolist() \
            if size <= MAX_VALUES else None
    return values


# --- reports and the pre-build check ---------------------------------------------------------

def verdicts(facts: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    entries = load_table()["entries"]
    out = {}
    for key in TABLE_KEYS:
        problems = parse_problems(facts, key)
        out[key] = {"ok": not problems, "problems": problems,
                    "onnx_tensorrt": entries[key]["onnx_tensorrt_commit"]}
    return out


def parse_report(onnx_path: str | os.PathLike) -> Dict[str, Any]:
    """``{"facts", "verdicts"}``: stored in every ONNX sidecar under ``tensorrt_parse``."""
    facts = graph_facts(onnx_path)
    return {"facts": facts, "verdicts": verdicts(facts)}


def facts_for(onnx_path: str | os.PathLike,
              sidecar: Optional[Dict[str, Any]]) -> Tuple[Optional[Dict[str, Any]], str]:
    """(facts, where they came from) or (None, why there are none): the sidecar's facts when
    the sidecar is for this very file (same sha256), else the graph read now when onnx imports."""
    from common.fileio import sha256_file

    path = Path(onnx_path)
    stored = ((sidecar or {}).get("tensorrt_parse") or {}).get("facts")
    if stored and sidecar.get("onnx_sha256") == sha256_file(path):
        return stored, "sidecar facts"
    try:
        import onnx  # noqa: F401
    except ImportError:
        why = ("the sidecar's facts are for another file (onnx_sha256 differs)" if stored
               else "the sidecar has no tensorrt_parse facts")
        return None, f"{why} and onnx is not installed to read {path.name}"
    return graph_facts(path), "graph read now"


def check_onnx_for_tensorrt(onnx_path: str | os.PathLike, sidecar: Optional[Dict[str, Any]],
                            trt_version: str) -> str:
    """Raise ToolkitError (one line: operators, conditions, fix) when the graph will not parse on
    ``trt_version``; else return a one-line note of what was checked (or why it was skipped)."""
    path = Path(onnx_path)
    key = table_key(trt_version)
    commit = load_table()["entries"][key]["onnx_tensorrt_commit"][:8]
    if not path.is_file():
        raise ToolkitError(f"ONNX file not found: {path}")
    facts, origin = facts_for(path, sidecar)
    if facts is None:
        return f"parse check: skipped: {origin}"
    problems = parse_problems(facts, trt_version)
    if problems:
        more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
        fix = "" if "fix:" in " ".join(problems[:3]) else \
            f"; see python -m export.preflight {path} --trt {trt_version}"
        raise ToolkitError(f"{path} will not parse on TensorRT {trt_version}: "
                           f"{'; '.join(problems[:3])}{more}{fix}")
    assumed = assumed_note(trt_version)
    return (f"parse check: {path.name} ok for TensorRT {trt_version} (table {key}, onnx-tensorrt "
            f"{commit}; {origin}{'; ' + assumed if assumed else ''})")
