"""Every graph the project makes, judged by the TensorRT ONNX parser table (common/trt_onnx.py):
own classifier and decoder, their Q/DQ and FP16 variants, every Hugging Face family, each for
both export targets. Default target (8.6): parses on 8.6, 10.x and 11.x, and on 8.5 fails on
LayerNormalization only. ``--trt-target 8.5``: parses everywhere. Plus hand-made graphs that
break each condition, to show graph_facts finds the offenders in real ONNX."""
from __future__ import annotations

import inspect
import json

import pytest

pytest.importorskip("onnx")
import onnx  # noqa: E402
from onnx import TensorProto, helper  # noqa: E402

from common.trt_onnx import TABLE_KEYS, graph_facts, parse_problems, parse_report  # noqa: E402

TARGETS = ("8.6", "8.5")
HF_ARCHS = ("bert", "bert_bare", "distilbert", "roberta", "gpt2", "gpt_neo", "llama")
OWN = ("tiny_classifier", "tiny_decoder")


def _target_supported(fn) -> bool:
    return "trt_target" in inspect.signature(fn).parameters


def _require_target(fn, target: str) -> dict:
    """The keyword for ``target``; skip when the exporter does not take it yet."""
    if target == "8.6":
        return {"trt_target": "8.6"} if _target_supported(fn) else {}
    if not _target_supported(fn):
        pytest.skip(f"{fn.__module__}.{fn.__name__} has no trt_target yet")
    return {"trt_target": target}


@pytest.fixture(scope="module")
def graphs(tmp_path_factory, tiny_classifier_checkpoint, tiny_decoder_checkpoint):
    """(family, target, variant) -> ONNX path, each exported once for the module."""
    from make_fixtures import FIXTURES

    from export.onnx_model import export_checkpoint

    root = tmp_path_factory.mktemp("parse_graphs")
    checkpoints = {"tiny_classifier": tiny_classifier_checkpoint,
                   "tiny_decoder": tiny_decoder_checkpoint}
    cache = {}

    def get(family: str, target: str, variant: str = "fp32"):
        key = (family, target, variant)
        if key in cache:
            return cache[key]
        if variant == "fp16":
            from calibration.fp16 import convert_to_fp16

            src = get(family, target)
            cache[key] = convert_to_fp16(src, src.with_name(src.stem + ".fp16.onnx"))
        elif family in OWN:
            options = FIXTURES[family][2]
            cache[key] = export_checkpoint(
                checkpoints[family], root / target / f"{family}.onnx", topk=16,
                check_parity=False, **options, **_require_target(export_checkpoint, target))
        else:
            from hf_tiny import make_folder

            from export.hf import export_hf

            folder = make_folder(root / "folders", family)
            cache[key] = export_hf(folder, root / target / f"{family}.onnx", max_batch=2,
                                   check_parity=False, **_require_target(export_hf, target))
        return cache[key]

    return get


def _check(path, target: str):
    report = parse_report(path)
    facts, verdicts = report["facts"], report["verdicts"]
    assert len(json.dumps(report)) < 16_000  # small enough for every sidecar
    assert list(verdicts) == list(TABLE_KEYS)
    for key in TABLE_KEYS[1:]:
        assert verdicts[key] == {**verdicts[key], "ok": True, "problems": []}, (path, key)
    if target == "8.5" or "LayerNormalization" not in facts["ops"]:
        assert verdicts["8.5"]["ok"], (path, verdicts["8.5"]["problems"])
    else:
        assert verdicts["8.5"]["problems"] and all(
            p.startswith("LayerNormalization ") for p in verdicts["8.5"]["problems"]), path
    assert parse_problems(facts, "11.4.0.106") == []  # pip's 11.4: the newest 11 entry
    return report


def _sidecar_agrees(path, report):
    """Where export already writes ``tensorrt_parse``, it says what the table says now."""
    sidecar_file = path.with_name(path.name + ".json")
    if sidecar_file.is_file():
        stored = json.loads(sidecar_file.read_text()).get("tensorrt_parse")
        if stored is not None:
            assert stored["verdicts"] == report["verdicts"]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("family", OWN)
@pytest.mark.parametrize("variant", ["fp32", "fp16"])
def test_own_models(graphs, family, target, variant):
    path = graphs(family, target, variant)
    report = _check(path, target)
    if variant == "fp16":
        assert "FP16" in report["facts"]["ops"]["MatMul"]["types"]
    _sidecar_agrees(path, report)


@pytest.mark.parametrize("target", TARGETS)
def test_own_models_qdq(graphs, target, tmp_path, classifier_calib, decoder_calib):
    from calibration.qdq import quantize_to_qdq

    for family, calib in (("tiny_classifier", classifier_calib),
                          ("tiny_decoder", decoder_calib)):
        out = tmp_path / f"{family}.qdq.onnx"
        quantize_to_qdq(graphs(family, target), calib, out, method="minmax")
        report = _check(out, target)
        ops = report["facts"]["ops"]
        assert ops["DequantizeLinear"]["types"].keys() == {"INT8"}
        assert ops["QuantizeLinear"]["types"].keys() == {"FP32"}
        assert "QuantizeLinear" not in report["facts"]["offenders"]
        _sidecar_agrees(out, report)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("arch", HF_ARCHS)
def test_hugging_face_families(graphs, arch, target):
    for variant in ("fp32", "fp16"):
        path = graphs(arch, target, variant)
        _sidecar_agrees(path, _check(path, target))


# --- hand-made graphs: each condition found in real ONNX ------------------------------------

def _model(nodes, inits, inputs, outputs, opset=17):
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _f(name, *shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def test_graph_facts_find_each_offender(tmp_path):
    i64 = TensorProto.INT64
    inits = [helper.make_tensor("axes", i64, [1], [1]), helper.make_tensor("k", i64, [1], [5000]),
             helper.make_tensor("s", TensorProto.FLOAT, [1], [0.0]),
             helper.make_tensor("z", TensorProto.UINT8, [1], [3])]
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"], name="shape"),
        helper.make_node("Slice", ["shape", "one", "two"], ["dyn"], name="dyn_axes_from"),
        helper.make_node("Constant", [], ["one"], value=helper.make_tensor("c1", i64, [1], [1])),
        helper.make_node("Constant", [], ["two"], value=helper.make_tensor("c2", i64, [1], [2])),
        helper.make_node("ReduceSum", ["x", "dyn"], ["r"], name="reduce_dyn", keepdims=1),
        helper.make_node("ReduceSum", ["x", "axes"], ["r2"], name="reduce_ok", keepdims=1),
        helper.make_node("TopK", ["x", "dyn"], ["v", "i"], name="topk_dyn"),
        helper.make_node("TopK", ["x", "k"], ["v2", "i2"], name="topk_big", sorted=0),
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="q_bad"),
        helper.make_node("LayerNormalization", ["x", "gamma"], ["y", "mean"], name="ln3"),
        helper.make_node("Constant", [], ["gamma"],
                         value=helper.make_tensor("g", TensorProto.FLOAT, [4], [1.0] * 4)),
    ]
    path = tmp_path / "bad.onnx"
    onnx.save(_model(nodes, inits, [_f("x", 2, 4)], [_f("r", 2, 4), _f("y", 2, 4)]), str(path))
    facts = graph_facts(path)
    off = facts["offenders"]
    assert off["ReduceSum"] == {"reduce_axes_constant": {"count": 1, "nodes": ["reduce_dyn"]}}
    assert off["TopK"]["topk_k_constant"]["nodes"] == ["topk_dyn"]
    assert off["TopK"]["topk_k_at_most_3840"]["nodes"] == ["topk_big"]
    assert off["TopK"]["topk_sorted"]["nodes"] == ["topk_big"]
    assert set(off["QuantizeLinear"]) == {"qdq_zero_point_zero", "qdq_scale_positive",
                                          "qdq_not_uint8"}
    assert off["LayerNormalization"] == {"layernorm_single_output": {"count": 1,
                                                                     "nodes": ["ln3"]}}
    p85 = " | ".join(parse_problems(facts, "8.5.2.2"))
    assert "topk_dyn" in p85 and "reduce_dyn" in p85 and "UINT8" in p85
    p10 = " | ".join(parse_problems(facts, "10.3.0.30"))
    assert "topk_dyn" not in p10 and "sorted" in p10 and "ln3" in p10 and "UINT8" not in p10


def test_opset_ceiling_and_unknown_domain(tmp_path):
    path = tmp_path / "opset20.onnx"
    node = helper.make_node("Relu", ["x"], ["y"], name="relu")
    onnx.save(_model([node], [], [_f("x", 2)], [_f("y", 2)], opset=20), str(path))
    facts = graph_facts(path)
    assert [k for k in TABLE_KEYS if parse_problems(facts, k)] == ["8.5", "8.6"]
    path = tmp_path / "custom.onnx"
    custom = helper.make_node("FusedGelu", ["x"], ["y"], name="fg", domain="com.microsoft")
    model = _model([custom], [], [_f("x", 2)], [_f("y", 2)])
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    onnx.save(model, str(path))
    assert all("com.microsoft:FusedGelu" in parse_problems(graph_facts(path), k)[0]
               for k in TABLE_KEYS)


def test_preflight_reports_each_version_and_refuses(graphs, tmp_path):
    from click.testing import CliRunner

    from export.preflight import format_preflight, main, preflight_report

    path = graphs("tiny_classifier", "8.6")
    report = preflight_report(path)
    assert report["opset_ceilings"] == {"8.5": 17, "8.6": 17, "10.3": 20, "10.16": 24,
                                        "11.1": 24}
    assert not report["tensorrt_verdicts"]["8.5"]["ok"]
    text = format_preflight(report)
    assert "will NOT parse: LayerNormalization" in text and text.count(": parses") == 4
    bad = CliRunner().invoke(main, [str(path), "--trt", "8.5.2.2"])
    assert bad.exit_code == 2 and "make onnx TRT=8.5" in bad.output
    ok = CliRunner().invoke(main, [str(path), "--trt", "10.3.0.30"])
    assert ok.exit_code == 0 and "ok for TensorRT 10.3.0.30" in ok.output
    old = CliRunner().invoke(main, [str(path), "--trt", "8.4.1"])
    assert old.exit_code == 2 and "no ONNX parser table" in old.output
