"""The export for TensorRT 8.5 (JetPack 5.1): LayerNorm decomposed into ops its parser imports,
the tensors kept FP32, Q/DQ and FP16 graphs of it, and Hugging Face families (issue 21)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from common.artifacts import load_onnx_sidecar, sidecar_path
from common.errors import ToolkitError
from common.fileio import sha256_file
from export.norm_graph import find_normalizations

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

LAYERNORMS = 5  # 2 blocks x 2 + the final one (own tiny models and the 2-layer HF encoders)
LN_OPS = {"ReduceMean", "Sub", "Mul", "Add", "Sqrt", "Div"}
TOLERANCE = {"classifier": 1e-4, "decoder": 5e-3}  # export/parity.py, unchanged for 8.5


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _checkpoint(root, kind):
    """A tiny checkpoint whose LayerNorms have random weight and bias (the default 1 and 0
    are removed by the simplifier, which would leave the affine ops of the pattern untested)."""
    from make_fixtures import tiny_checkpoint

    from train.checkpoint import load_checkpoint, save_checkpoint

    path = tiny_checkpoint(root / kind, kind)
    ckpt = load_checkpoint(path)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in ckpt.model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.copy_(1 + 0.3 * torch.randn(module.weight.shape, generator=gen))
                module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=gen))
    return save_checkpoint(path, ckpt.config, ckpt.model)


@pytest.fixture(scope="module")
def own(tmp_path_factory):
    """kind -> {"checkpoint", "8.6", "8.5"}: one checkpoint exported for both targets, parity
    checked by the export (it raises above tolerance)."""
    from export.onnx_model import export_checkpoint

    root = tmp_path_factory.mktemp("trt85")
    out = {}
    for kind in ("classifier", "decoder"):
        ckpt = _checkpoint(root, kind)
        out[kind] = {"checkpoint": ckpt}
        for target in ("8.6", "8.5"):
            out[kind][target] = export_checkpoint(
                ckpt, root / target / f"{kind}.onnx", max_batch=4, topk=16, greedy_tokens=24,
                trt_target=target)
    return out


def _ops(path):
    return [n.op_type for n in onnx.load(str(path)).graph.node]


def _feeds(path, seed=0):
    """Valid inputs for every graph input: classifier batch 2 x seq 9 with a padded row;
    decoder batch 2, past 3, new 2, kv_dim 32."""
    rng = np.random.default_rng(seed)
    names = [v.name for v in onnx.load(str(path)).graph.input]
    if "position_ids" not in names:
        mask = np.ones((2, 9), np.int32)
        mask[1, -2:] = 0
        return {"input_ids": rng.integers(0, 300, (2, 9), dtype=np.int32),
                "attention_mask": mask}
    feed = {"input_ids": rng.integers(0, 300, (2, 2), dtype=np.int32),
            "position_ids": np.tile(np.arange(3, 5, dtype=np.int32), (2, 1)),
            "attention_mask": np.ones((2, 5), np.int32)}
    feed.update({n: rng.standard_normal((3, 2, 32)).astype(np.float32)
                 for n in names if n.startswith("past_")})
    return feed


def _run(path, feed):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feed)))


# --- own models --------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["classifier", "decoder"])
def test_85_graph_has_no_layernormalization_and_records_target(own, kind):
    path = own[kind]["8.5"]
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    ops = [n.op_type for n in model.graph.node]
    assert "LayerNormalization" not in ops and "Pow" not in ops
    assert ops.count("Sqrt") == LAYERNORMS
    norms = find_normalizations(model.graph)
    assert [n["kind"] for n in norms] == ["layernorm"] * LAYERNORMS
    for node in model.graph.node:  # opset 17: axes an attribute, no second input to parse
        if node.op_type == "ReduceMean":
            assert len(node.input) == 1 and [a.name for a in node.attribute] == ["axes",
                                                                                 "keepdims"]
    sidecar = load_onnx_sidecar(path, kind=kind, check_hash=True)
    assert sidecar["tensorrt_target"] == {"min_tensorrt": "8.5", "layernorm": "decomposed"}
    assert sidecar["parity"]["max_abs_diff"] < TOLERANCE[kind]
    assert sidecar["parity"]["tolerance"] == TOLERANCE[kind]
    verdicts = sidecar["tensorrt_parse"]["verdicts"]
    assert verdicts["8.5"]["ok"] and all(v["ok"] for v in verdicts.values())
    old = load_onnx_sidecar(own[kind]["8.6"])
    assert old["tensorrt_target"] == {"min_tensorrt": "8.6", "layernorm": "LayerNormalization"}
    assert not old["tensorrt_parse"]["verdicts"]["8.5"]["ok"]  # what the 8.5 export is for
    assert _ops(own[kind]["8.6"]).count("LayerNormalization") == LAYERNORMS


@pytest.mark.parametrize("kind", ["classifier", "decoder"])
def test_85_and_86_exports_give_the_same_outputs(own, kind):
    feed = _feeds(own[kind]["8.6"])
    want, got = _run(own[kind]["8.6"], feed), _run(own[kind]["8.5"], feed)
    assert list(want) == list(got)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], atol=2e-5, err_msg=name)


@pytest.mark.parametrize("kind", ["classifier", "decoder"])
def test_keep_fp32_names_every_node_of_each_decomposed_layernorm(own, kind):
    model = onnx.load(str(own[kind]["8.5"]))
    keep = load_onnx_sidecar(own[kind]["8.5"])["keep_fp32"]
    producers = {out: n for n in model.graph.node for out in n.output}
    assert keep["why"] and keep["patterns"] == {"layernorm": LAYERNORMS, "rmsnorm": 0}
    assert all(t in producers for t in keep["tensors"])  # real tensors of this graph
    assert {producers[t].op_type for t in keep["tensors"]} == LN_OPS
    # each pattern: ReduceMean, Sub, Mul, ReduceMean, Add, Sqrt, Div + weight Mul + bias Add
    assert len(keep["tensors"]) == len(set(keep["tensors"])) == 9 * LAYERNORMS
    squares = [n for n in model.graph.node if n.op_type == "Mul" and n.input[0] == n.input[1]]
    sqrts = [n for n in model.graph.node if n.op_type == "Sqrt"]
    assert all(n.output[0] in keep["tensors"] for n in squares + sqrts)
    assert load_onnx_sidecar(own[kind]["8.6"])["keep_fp32"]["tensors"] == []


def test_decomposed_layernorm_swap_shares_parameters_and_is_undone():
    from export.layernorm import DecomposedLayerNorm, decomposed

    norm = torch.nn.LayerNorm((4, 6), eps=1e-3)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    model = torch.nn.Sequential(torch.nn.Linear(6, 6), norm)
    x = torch.randn(2, 3, 4, 6) * 50
    want = model(x)
    with decomposed(model, "8.5") as swapped:
        assert swapped == 1 and isinstance(model[1], DecomposedLayerNorm)
        assert model[1].weight is norm.weight and model[1].eps == 1e-3
        torch.testing.assert_close(model(x), want, atol=1e-5, rtol=1e-5)
    assert model[1] is norm
    with pytest.raises(RuntimeError), decomposed(model, "8.5"):
        raise RuntimeError("trace failed")
    assert model[1] is norm  # put back after an error too
    with decomposed(model, "8.6") as swapped:
        assert swapped == 0 and model[1] is norm


def test_check_graph_is_target_aware(own):
    from export.onnx_model import check_graph, io_spec
    from train.checkpoint import load_checkpoint

    cfg = load_checkpoint(own["classifier"]["checkpoint"]).config
    inputs, outputs = io_spec(cfg, 0)
    new, old = (onnx.load(str(own["classifier"][t])) for t in ("8.5", "8.6"))
    check_graph(new, inputs, outputs, LAYERNORMS, 17, "m.onnx", "8.5")
    check_graph(old, inputs, outputs, LAYERNORMS, 17, "m.onnx", "8.6")
    with pytest.raises(ToolkitError, match="5 LayerNormalization nodes in a graph for TensorRT"):
        check_graph(old, inputs, outputs, LAYERNORMS, 17, "m.onnx", "8.5")
    with pytest.raises(ToolkitError, match="LayerNorm decomposed"):
        check_graph(new, inputs, outputs, LAYERNORMS, 17, "m.onnx", "8.6")
    with pytest.raises(ToolkitError, match="5 decomposed LayerNorm patterns for 6 nn.LayerNorm"):
        check_graph(new, inputs, outputs, LAYERNORMS + 1, 17, "m.onnx", "8.5")


# --- Q/DQ and FP16 of the 8.5 graph -------------------------------------------------------------

@pytest.fixture(scope="module")
def qdq85(own, data_dir, tmp_path_factory):
    from calibration.dataset import build_calibration_set
    from calibration.qdq import quantize_to_qdq

    root = tmp_path_factory.mktemp("qdq85")
    fp32 = own["classifier"]["8.5"]
    calib = build_calibration_set(fp32, str(data_dir), root / "c.calib.npz", batches=3,
                                  batch_size=4)
    out = root / "classifier.qdq.onnx"
    return fp32, out, quantize_to_qdq(fp32, calib, out, method="minmax")


def test_qdq_of_85_graph_leaves_layernorm_float(qdq85):
    fp32, out, summary = qdq85
    model = onnx.load(str(out))
    dq_outputs = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    assert dq_outputs  # linear layers are quantized
    norms = find_normalizations(model.graph)
    assert [n["kind"] for n in norms] == ["layernorm"] * LAYERNORMS
    by_name = {n.name: n for n in model.graph.node}
    for norm in norms:
        for name in norm["nodes"]:
            assert not set(by_name[name].input) & dq_outputs, name
    assert "LayerNormalization" not in [n.op_type for n in model.graph.node]
    assert summary["float_normalization_nodes"] == 9 * LAYERNORMS  # passed to nodes_to_exclude
    sidecar, source = load_onnx_sidecar(out, check_hash=True), load_onnx_sidecar(fp32)
    assert sidecar["precision"] == "int8-qdq"
    assert sidecar["tensorrt_target"] == source["tensorrt_target"]
    assert sidecar["keep_fp32"]["tensors"] == source["keep_fp32"]["tensors"]
    producers = {o for n in model.graph.node for o in n.output}
    assert set(sidecar["keep_fp32"]["tensors"]) <= producers
    facts = sidecar["tensorrt_parse"]["facts"]
    assert "QuantizeLinear" in json.dumps(facts)  # the Q/DQ graph's own facts, not the FP32's
    assert sidecar["tensorrt_parse"]["verdicts"]["8.5"]["ok"]


def _float_tensors(model):
    inferred = onnx.shape_inference.infer_shapes(model)
    return {v.name for v in list(inferred.graph.value_info) + list(inferred.graph.output)
            if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}


@pytest.mark.parametrize("kind", ["classifier", "decoder"])
def test_fp16_graph_keeps_decomposed_layernorm_fp32(own, kind, tmp_path):
    from calibration.fp16 import write_fp16_onnx

    fp32 = own[kind]["8.5"]
    out = tmp_path / f"{kind}.fp16.onnx"
    sidecar = write_fp16_onnx(fp32, out)
    assert load_onnx_sidecar(out, kind=kind, check_hash=True) == sidecar
    assert sidecar["precision"] == "fp16" and sidecar["onnx_sha256"] == sha256_file(out)
    assert sidecar["tensorrt_parse"]["verdicts"]["8.5"]["ok"]
    model = onnx.load(str(out))
    onnx.checker.check_model(model)
    float32 = _float_tensors(model)
    keep = sidecar["keep_fp32"]
    assert set(keep["tensors"]) <= float32 and keep["patterns"]["layernorm"] == LAYERNORMS
    producers = {o: n for n in model.graph.node for o in n.output}
    norms = find_normalizations(model.graph)  # the islands are intact: no Cast inside them
    assert len(norms) == LAYERNORMS
    for norm in norms:
        assert set(norm["tensors"]) <= set(keep["tensors"])
        inside = set(norm["tensors"])
        for name in norm["nodes"][1:]:
            node = next(n for n in model.graph.node if n.name == name)
            for tensor in node.input:  # fed by the island, a constant or the one entry Cast
                src = producers.get(tensor)
                assert src is None or tensor in inside or src.op_type == "Constant" or \
                    (src.op_type == "Cast" and node.op_type == "Sub"), (name, tensor)
    fp32_model = onnx.load(str(fp32))
    for a, b in ((model.graph.input, fp32_model.graph.input),
                 (model.graph.output, fp32_model.graph.output)):
        assert [(v.name, v.type.tensor_type.elem_type) for v in a] == \
            [(v.name, v.type.tensor_type.elem_type) for v in b]
    feed = _feeds(fp32)
    want, got = _run(fp32, feed), _run(out, feed)
    for name in want:
        assert got[name].dtype == want[name].dtype
        if want[name].dtype == np.float32:
            np.testing.assert_allclose(got[name], want[name], atol=2e-2, err_msg=name)


def test_fp16_graph_of_86_export_keeps_layernormalization_fp32(own, tmp_path):
    from calibration.fp16 import fp16_graph

    model, keep = fp16_graph(onnx.load(str(own["classifier"]["8.6"])))
    float32 = _float_tensors(model)
    norms = [n for n in model.graph.node if n.op_type == "LayerNormalization"]
    assert len(norms) == LAYERNORMS
    for node in norms:
        assert node.output[0] in keep["tensors"] and node.output[0] in float32
        assert all(i in float32 or i in {t.name for t in model.graph.initializer}
                   for i in node.input)
    assert keep["patterns"] == {"layernorm": 0, "rmsnorm": 0}


def test_remove_fp16_round_trips_leaves_no_cast_pair_between_fp32_nodes(own):
    from calibration.fp16 import fp16_graph

    model, _ = fp16_graph(onnx.load(str(own["decoder"]["8.5"])))
    producers = {o: n for n in model.graph.node for o in n.output}

    def to(node):
        return next(a.i for a in node.attribute if a.name == "to")

    for node in model.graph.node:
        if node.op_type == "Cast" and to(node) == onnx.TensorProto.FLOAT:
            src = producers.get(node.input[0])
            assert not (src is not None and src.op_type == "Cast"
                        and to(src) == onnx.TensorProto.FLOAT16), node.name


# --- Hugging Face ------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["bert", "gpt2", "llama"])
def test_hf_export_for_85_has_parity(arch, tmp_path):
    pytest.importorskip("transformers")
    from hf_tiny import make_folder

    from export.hf import export_hf

    out = export_hf(make_folder(tmp_path, arch), tmp_path / f"{arch}.onnx", max_batch=2,
                    greedy_tokens=16, trt_target="8.5")
    sidecar = load_onnx_sidecar(out, check_hash=True)
    ops = _ops(out)
    assert "LayerNormalization" not in ops
    assert sidecar["tensorrt_target"]["min_tensorrt"] == "8.5"
    assert sidecar["tensorrt_parse"]["verdicts"]["8.5"]["ok"], \
        sidecar["tensorrt_parse"]["verdicts"]["8.5"]["problems"]
    assert sidecar["parity"]["max_abs_diff"] < sidecar["parity"]["tolerance"]
    kinds = [n["kind"] for n in find_normalizations(onnx.load(str(out)).graph)]
    if arch == "llama":  # RMSNorm: elementwise at every target, listed in keep_fp32 too
        assert kinds == ["rmsnorm"] * 5 and "Pow" in ops
        assert sidecar["keep_fp32"]["patterns"] == {"layernorm": 0, "rmsnorm": 5}
    else:
        assert kinds == ["layernorm"] * 5


# --- CLI and sidecar ---------------------------------------------------------------------------

def test_export_cli_trt_target(own, tmp_path):
    from export.hf import main as hf_main
    from export.onnx_model import main

    out = tmp_path / "m.onnx"
    result = CliRunner().invoke(main, ["--checkpoint", str(own["classifier"]["checkpoint"]),
                                       "--output", str(out), "--trt-target", "8.5"])
    assert result.exit_code == 0, result.output
    assert "TensorRT target: 8.5 and later (LayerNorm: decomposed)" in result.output
    assert "LayerNormalization" not in _ops(out)
    for command, args in ((main, ["--checkpoint", "x.pt"]), (hf_main, ["--model", "x"])):
        bad = CliRunner().invoke(command, args + ["--output", str(tmp_path / "b.onnx"),
                                                  "--trt-target", "8.4"])
        assert bad.exit_code == 2 and "Invalid value for '--trt-target'" in bad.output
    assert not (tmp_path / "b.onnx").exists()


def test_fp16_cli_writes_graph_and_sidecar(own, tmp_path):
    from calibration.fp16 import main

    out = tmp_path / "decoder.fp16.onnx"
    result = CliRunner().invoke(main, ["--onnx", str(own["decoder"]["8.5"]), "--output",
                                       str(out)])
    assert result.exit_code == 0, result.output
    assert "nodes kept FP32" in result.output and sidecar_path(out).is_file()
    assert (tmp_path / load_onnx_sidecar(out)["tokenizer"]).is_file()  # copied beside it


def test_sidecar_validator_takes_old_sidecars_and_refuses_bad_new_keys(own, tmp_path):
    from pathlib import Path

    from common.artifacts import validate_onnx_sidecar

    fixtures = Path(__file__).resolve().parents[1] / "fixtures"
    for onnx_file in sorted(fixtures.glob("*.onnx")):
        load_onnx_sidecar(onnx_file)  # committed sidecars, some from before these keys
    good = load_onnx_sidecar(own["classifier"]["8.5"])
    for key, value, message in (
            ("tensorrt_target", {"min_tensorrt": "8.5", "layernorm": "LayerNormalization"},
             "tensorrt_target"),
            ("keep_fp32", {"tensors": "x"}, "keep_fp32"),
            ("tensorrt_parse", {"facts": {}}, "tensorrt_parse")):
        with pytest.raises(ToolkitError, match=message):
            validate_onnx_sidecar({**good, key: value}, "m.onnx.json")
