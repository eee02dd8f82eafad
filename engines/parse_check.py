"""The real TensorRT ONNX parser on a graph, to compare with the table of ``common.trt_onnx``.

``tensorrt_parse_problems`` parses like Polygraphy's ``NetworkFromOnnxPath`` (v11.1
tools/Polygraphy/polygraphy/backend/trt/loader.py): ``parser.parse_from_file`` (present in the
Python bindings from 8.5.2 to v11.1, python/src/parsers/pyOnnx.cpp), so external weights resolve
beside the file. The network flag EXPLICIT_BATCH is set only before TensorRT 10: 8.x needs it for
ONNX, 10.x ignores it (deprecated) and 11.x removed it (always explicit, always strongly typed).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List

from common.errors import ToolkitError
from common.trt_onnx import facts_for, parse_problems, version_tuple


def network_flags(trt) -> int:
    """createNetworkV2 flags: EXPLICIT_BATCH where the enum has it and TensorRT is below 10."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH", None)
    if flag is None or version_tuple(trt.__version__) >= (10,):
        return 0
    return 1 << int(flag)


def describe_parser_error(error) -> str:
    """One line from an IParserError: node index, name and operator (name/operator exist from
    TensorRT 10: pyOnnx.cpp has node_name/node_operator at v10.3.0, not at 8.5.2/v8.6.1)."""
    parts = []
    node = error.node() if hasattr(error, "node") else -1
    name = error.node_name() if hasattr(error, "node_name") else ""
    operator = error.node_operator() if hasattr(error, "node_operator") else ""
    if operator:
        parts.append(operator)
    if name:
        parts.append(name)
    if node is not None and node >= 0:
        parts.append(f"(node {node})")
    where = " ".join(parts) or "graph"
    return f"{where}: {' '.join(str(error.desc()).split())}"


def tensorrt_parse_problems(onnx_path: str | os.PathLike) -> List[str]:
    """Parse ``onnx_path`` with the installed TensorRT; the parser's errors, one line each."""
    import tensorrt as trt

    path = Path(onnx_path)
    if not path.is_file():
        raise ToolkitError(f"ONNX file not found: {path}")
    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    ok = parser.parse_from_file(str(path))
    problems = [describe_parser_error(parser.get_error(i)) for i in range(parser.num_errors)]
    if not ok and not problems:
        problems.append(f"{path.name}: the parser returned failure without an error")
    return problems


def compare_with_table(onnx_path: str | os.PathLike, trt_version: str) -> Dict[str, Any]:
    """The static table's verdict next to the real parser's, for the device check's report.
    ``table_ok`` is None when the table could not judge (no matching sidecar facts, no onnx)."""
    table_problems = table_parse_problems(onnx_path, trt_version)
    tensorrt_problems = tensorrt_parse_problems(onnx_path)
    table_ok = None if table_problems is None else not table_problems
    tensorrt_ok = not tensorrt_problems
    return {"table_ok": table_ok, "tensorrt_ok": tensorrt_ok, "agree": table_ok == tensorrt_ok,
            "table_problems": table_problems or [], "tensorrt_problems": tensorrt_problems}


def table_parse_problems(onnx_path: str | os.PathLike, trt_version: str) -> List[str] | None:
    """What the table says for this file on ``trt_version``; None when it cannot judge."""
    from common.artifacts import load_onnx_sidecar

    try:
        sidecar = load_onnx_sidecar(onnx_path)
    except ToolkitError:  # no sidecar, or one that does not validate: judge the graph itself
        sidecar = None
    facts, _ = facts_for(onnx_path, sidecar)
    return None if facts is None else parse_problems(facts, trt_version)
