"""The TensorRT ONNX parser table (common/trt_onnx.py + trt_onnx_support.json), judged on facts
dicts and on the committed fixtures' sidecars, with no onnx and no TensorRT; the real parser
comparison at the end needs TensorRT (marked, skipped elsewhere)."""
from __future__ import annotations

import json
import re
import sys
from types import SimpleNamespace

import pytest

from common.artifacts import load_onnx_sidecar, sidecar_path
from common.errors import ToolkitError
from common.fileio import sha256_file
from common.trt_onnx import (
    CONDITION_OPS,
    CONDITIONS,
    TABLE_KEYS,
    check_onnx_for_tensorrt,
    load_table,
    parse_problems,
    table_key,
    verdicts,
)
from engines.parse_check import describe_parser_error, network_flags


def facts(ops, offenders=None, opset=17):
    """A facts dict as graph_facts writes it: op -> {count, example, types: {type: node}}."""
    return {"format": 1, "opset": opset, "domains": {"": opset}, "nodes": len(ops),
            "ops": {op: {"count": 1, "example": f"/{op}", "types": {t: f"/{op}" for t in types}}
                    for op, types in ops.items()},
            "offenders": offenders or {}}


BASIC = {"MatMul": ["FP32"], "Add": ["FP32", "INT64"], "Softmax": ["FP32"], "Erf": ["FP32"],
         "Gather": ["FP32", "INT64"], "Cast": ["INT32", "INT64"], "TopK": ["FP32"]}


def test_table_keys_entries_and_sources():
    table = load_table()
    assert tuple(table["entries"]) == TABLE_KEYS
    for key, entry in table["entries"].items():
        assert re.fullmatch(r"[0-9a-f]{40}", entry["onnx_tensorrt_commit"]), key
        assert "docs/operators.md@" in entry["source"] and entry["max_opset"] >= 17
        assert len(entry["operators"]) > 100 and "MatMul" in entry["operators"]
        for op, spec in entry["operators"].items():
            assert set(spec) <= {"types", "conditions", "since"}, (key, op)
            for cond in spec.get("conditions", []):  # every named condition is implemented
                assert cond in CONDITIONS and op in CONDITION_OPS[cond], (key, op, cond)
    used = {c for e in table["entries"].values() for s in e["operators"].values()
            for c in s.get("conditions", [])}
    assert used == set(CONDITIONS)  # and none is dead code
    assert table["entries"]["8.5"]["onnx_tensorrt_commit"].startswith("7583da4c")
    assert "LayerNormalization" not in table["entries"]["8.5"]["operators"]
    assert all("LayerNormalization" in table["entries"][k]["operators"] for k in TABLE_KEYS[1:])


@pytest.mark.parametrize("version,key", [
    ("8.5.2.2", "8.5"), ("8.5.3", "8.5"), ("8.6.2.3", "8.6"), ("8.6.1.6-1+cuda12.0", "8.6"),
    ("10.3.0.30", "10.3"), ("10.7.0", "10.3"), ("10.8", "10.16"), ("10.16.0.72", "10.16"),
    ("11.1.0", "11.1"), ("11.4.0.106", "11.1"),
])
def test_table_key_maps_installed_versions(version, key):
    assert table_key(version) == key


@pytest.mark.parametrize("version", ["8.4.3.1", "7.1.3", "9.3.0", "not-a-version"])
def test_table_key_refuses_uncovered_versions(version):
    with pytest.raises(ToolkitError, match="TensorRT"):
        table_key(version)


def test_layernorm_fails_on_8_5_only_with_the_fix():
    graph = facts({**BASIC, "LayerNormalization": ["FP32"]})
    problems = parse_problems(graph, "8.5.2.2")
    assert len(problems) == 1 and problems[0].startswith("LayerNormalization")
    assert "make onnx TRT=8.5" in problems[0] and "--trt-target 8.5" in problems[0]
    for version in ("8.6.2.3", "10.3.0.30", "10.16", "11.1", "11.4.0.106"):
        assert parse_problems(graph, version) == [], version
    result = verdicts(graph)
    assert [k for k, v in result.items() if not v["ok"]] == ["8.5"]
    assert result["8.5"]["onnx_tensorrt"].startswith("7583da4c")
    assert parse_problems(facts(BASIC), "8.5.2.2") == []


def test_types_aliases_opset_and_since():
    assert parse_problems(facts({"Equal": ["INT64"]}), "8.5") == []  # 8.x casts INT64 to INT32
    bf16 = facts({"MatMul": ["BF16"]})
    assert parse_problems(bf16, "8.6") and "BF16" in parse_problems(bf16, "8.6")[0]
    assert parse_problems(bf16, "10.3") == []
    assert parse_problems(facts({"DequantizeLinear": ["FP8"]}), "8.6")
    assert parse_problems(facts({"DequantizeLinear": ["FP8"]}), "10.3") == []
    assert parse_problems(facts({"DequantizeLinear": ["FP4"]}), "10.3")  # FP4 from 10.8
    assert parse_problems(facts({"DequantizeLinear": ["FP4"]}), "10.16") == []
    assert "opset 18" in parse_problems(facts(BASIC, opset=18), "8.6.2")[0]
    assert parse_problems(facts(BASIC, opset=18), "10.3") == []
    attention = facts({"Attention": ["FP16"]})  # added in 10.14 (Changelog)
    assert parse_problems(attention, "10.13") and parse_problems(attention, "8.6")
    assert parse_problems(attention, "10.16") == []
    custom = facts({"com.microsoft:FusedMatMul": ["FP32"]})
    assert "no importer" in parse_problems(custom, "11.1")[0]


# (condition, op, a node that breaks it, a node that keeps it)
def _in(name="x", constant=True, values=None, dtype=None):
    return {"name": name, "constant": constant, "values": values, "dtype": dtype}


CASES = [
    ("topk_k_constant", "TopK", [_in(), _in("k", constant=False)], [_in(), _in("k", values=[16])]),
    ("topk_k_at_most_3840", "TopK", [_in(), _in("k", values=[4096])],
     [_in(), _in("k", values=[3840])]),
    ("reduce_axes_constant", "ReduceSum", [_in(), _in("a", constant=False)], [_in()]),
    ("slice_axes_constant", "Slice", [_in(), _in("s"), _in("e"), _in("a", constant=False)],
     [_in(), _in("s", constant=False), _in("e", constant=False), _in("a", values=[1])]),
    ("squeeze_axes_constant", "Squeeze", [_in(), _in("a", constant=False)], [_in(), _in("a")]),
    ("unsqueeze_axes_constant", "Unsqueeze", [_in(), _in("a", constant=False)], [_in(), _in()]),
    ("cumsum_axis_constant", "CumSum", [_in(), _in("a", constant=False)], [_in(), _in("a")]),
    ("qdq_zero_point_given", "DequantizeLinear", [_in(), _in("s", values=[0.1])],
     [_in(), _in("s", values=[0.1]), _in("z", values=[0])]),
    ("qdq_zero_point_zero", "QuantizeLinear", [_in(), _in("s", values=[0.1]), _in("z", values=[3])],
     [_in(), _in("s", values=[0.1]), _in("z", values=[0, 0])]),
    ("qdq_scale_positive", "DequantizeLinear", [_in(), _in("s", values=[0.1, 0.0]), _in("z")],
     [_in(), _in("s", values=[0.1, 0.2]), _in("z", values=[0, 0])]),
    ("qdq_not_uint8", "DequantizeLinear", [_in(dtype="UINT8"), _in("s"), _in("z", dtype="UINT8")],
     [_in(dtype="INT8"), _in("s"), _in("z", dtype="INT8")]),
]


@pytest.mark.parametrize("cond,op,bad,good", CASES, ids=[c[0] for c in CASES])
def test_each_condition_fires_only_when_broken(cond, op, bad, good):
    check = CONDITIONS[cond][1]
    assert check({"op": op, "name": "/n", "inputs": bad, "outputs": ["y"], "attrs": {}})
    assert not check({"op": op, "name": "/n", "inputs": good, "outputs": ["y"], "attrs": {}})
    _judged_in_the_table(cond, op)


def test_attribute_and_output_conditions():
    topk = {"op": "TopK", "name": "/t", "inputs": [_in(), _in("k", values=[8])],
            "outputs": ["v", "i"], "attrs": {"sorted": 0}}
    assert CONDITIONS["topk_sorted"][1](topk)
    assert not CONDITIONS["topk_sorted"][1]({**topk, "attrs": {}})
    ln = {"op": "LayerNormalization", "name": "/ln", "inputs": [_in()], "attrs": {},
          "outputs": ["y", "mean", ""]}
    assert CONDITIONS["layernorm_single_output"][1](ln)
    assert not CONDITIONS["layernorm_single_output"][1]({**ln, "outputs": ["y", "", ""]})
    _judged_in_the_table("topk_sorted", "TopK")
    _judged_in_the_table("layernorm_single_output", "LayerNormalization")


def _judged_in_the_table(cond, op):
    """Facts naming an offender fail exactly the versions whose entry lists the condition."""
    dtype = "INT8" if op == "DequantizeLinear" else "FP32"  # the type that decides the row
    broken = facts({op: [dtype]}, {op: {cond: {"count": 2, "nodes": ["/a", "/b"]}}})
    clean = {**broken, "offenders": {}}
    listing = [k for k in TABLE_KEYS
               if cond in load_table()["entries"][k]["operators"].get(op, {}).get("conditions", [])]
    assert listing, f"{cond} is listed for {op} in no version"
    for key in TABLE_KEYS:
        if op not in load_table()["entries"][key]["operators"]:
            continue
        problems = parse_problems(broken, key)
        assert bool(problems) == (key in listing), (cond, key, problems)
        if problems:
            assert "/a, /b" in problems[0] and CONDITIONS[cond][0] in problems[0]
        assert parse_problems(clean, key) == [], (cond, key)


# --- the committed fixtures ---------------------------------------------------------------

def _with_sidecar(onnx_path, tmp_path, graph_facts, sha=None):
    """A copy of the fixture whose sidecar carries ``graph_facts`` (and ``sha`` as its hash)."""
    import shutil

    dst = tmp_path / onnx_path.name
    shutil.copy(onnx_path, dst)
    sidecar = json.loads(sidecar_path(onnx_path).read_text())
    sidecar["onnx_sha256"] = sha or sha256_file(dst)
    sidecar["tensorrt_parse"] = {"facts": graph_facts, "verdicts": verdicts(graph_facts)}
    sidecar_path(dst).write_text(json.dumps(sidecar))
    return dst, load_onnx_sidecar(dst)


def test_sidecar_facts_decide_when_the_hash_matches(tiny_classifier_onnx, tmp_path):
    # Facts without LayerNormalization pass 8.5 although the file has LayerNorm nodes: the
    # check read the sidecar, not the graph.
    path, sidecar = _with_sidecar(tiny_classifier_onnx, tmp_path, facts(BASIC))
    note = check_onnx_for_tensorrt(path, sidecar, "8.5.2.2")
    assert note.startswith("parse check: tiny_classifier.onnx ok for TensorRT 8.5.2.2")
    assert "sidecar facts" in note and "7583da4c" in note
    with_ln = facts({**BASIC, "LayerNormalization": ["FP32"]})
    path, sidecar = _with_sidecar(tiny_classifier_onnx, tmp_path, with_ln)
    with pytest.raises(ToolkitError, match=r"will not parse on TensorRT 8\.5\.2\.2: "
                                           r"LayerNormalization.*make onnx TRT=8\.5"):
        check_onnx_for_tensorrt(path, sidecar, "8.5.2.2")
    assert "ok for TensorRT 11.4.0.106" in check_onnx_for_tensorrt(path, sidecar, "11.4.0.106")
    assert "table 11.1 assumed for 11.4)" in check_onnx_for_tensorrt(path, sidecar, "11.4")


def test_stale_sidecar_without_onnx_is_skipped_not_passed(tiny_decoder_onnx, tmp_path,
                                                          monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # as on a bare JetPack: import onnx fails
    path, sidecar = _with_sidecar(tiny_decoder_onnx, tmp_path, facts(BASIC), sha="0" * 64)
    note = check_onnx_for_tensorrt(path, sidecar, "8.6.2.3")
    assert note.startswith("parse check: skipped: the sidecar's facts are for another file")
    sidecar.pop("tensorrt_parse")
    note = check_onnx_for_tensorrt(path, sidecar, "8.5.2.2")
    assert note.startswith("parse check: skipped: the sidecar has no tensorrt_parse facts")
    with pytest.raises(ToolkitError, match="no ONNX parser table"):
        check_onnx_for_tensorrt(path, sidecar, "8.4.3")


@pytest.mark.parametrize("name", ["tiny_classifier_onnx", "tiny_decoder_onnx",
                                  "tiny_decoder_long_onnx"])
def test_committed_fixtures_verdicts(name, request):
    path = request.getfixturevalue(name)
    sidecar = load_onnx_sidecar(path)
    if "tensorrt_parse" not in sidecar:
        pytest.skip("committed sidecar predates tensorrt_parse: regenerate with "
                    "python tests/fixtures/make_fixtures.py")
    stored = sidecar["tensorrt_parse"]
    assert verdicts(stored["facts"]) == stored["verdicts"]  # the table still agrees with export
    for version in ("8.6.2.3", "10.3.0.30", "10.16", "11.4.0.106"):
        assert "sidecar facts" in check_onnx_for_tensorrt(path, sidecar, version)
    target = (sidecar.get("tensorrt_target") or {}).get("min_tensorrt", "8.6")
    if target == "8.6":
        with pytest.raises(ToolkitError, match="LayerNormalization"):
            check_onnx_for_tensorrt(path, sidecar, "8.5.2.2")
    else:
        assert "sidecar facts" in check_onnx_for_tensorrt(path, sidecar, "8.5.2.2")


# --- the real parser's Python API, per version --------------------------------------------

def test_network_flags_by_version():
    enum = SimpleNamespace(EXPLICIT_BATCH=0, STRONGLY_TYPED=1)
    assert network_flags(SimpleNamespace(__version__="8.5.2.2",
                                         NetworkDefinitionCreationFlag=enum)) == 1
    assert network_flags(SimpleNamespace(__version__="10.3.0.30",
                                         NetworkDefinitionCreationFlag=enum)) == 0
    no_batch = SimpleNamespace(STRONGLY_TYPED=1)  # 11.x: EXPLICIT_BATCH removed
    assert network_flags(SimpleNamespace(__version__="11.1.0",
                                         NetworkDefinitionCreationFlag=no_batch)) == 0


def test_parser_error_lines_with_and_without_node_names():
    class Error85:  # IParserError at 8.5/8.6: desc, node, code (no node_name/node_operator)
        def desc(self):
            return "No importer registered for op: LayerNormalization.\n  Attempting plugin"

        def node(self):
            return 7

    class Error10(Error85):  # from 10.x: node_name and node_operator
        def node_name(self):
            return "/ln/LayerNormalization"

        def node_operator(self):
            return "LayerNormalization"

    assert describe_parser_error(Error85()) == (
        "(node 7): No importer registered for op: LayerNormalization. Attempting plugin")
    assert describe_parser_error(Error10()).startswith(
        "LayerNormalization /ln/LayerNormalization (node 7): No importer")


@pytest.mark.trt
@pytest.mark.parametrize("name", ["tiny_classifier_onnx", "tiny_decoder_onnx"])
def test_real_parser_agrees_with_the_table(name, request):
    trt = pytest.importorskip("tensorrt", reason="TensorRT is not installed: the real parser "
                              "runs on the device")
    from engines.parse_check import compare_with_table

    result = compare_with_table(request.getfixturevalue(name), trt.__version__)
    if result["table_ok"] is None:
        pytest.skip("the table cannot judge this fixture here (no facts, no onnx)")
    assert result["agree"], result
