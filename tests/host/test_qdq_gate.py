"""Explicit INT8 (Q/DQ with onnxruntime.quantization), the accuracy gate and the FP16 estimate:
host side (onnx), on the tiny ONNX exports."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from tiny_data import WORDS

from calibration.loader import CalibrationSet
from common.artifacts import load_onnx_sidecar, sidecar_path
from common.errors import EXIT_USER_ERROR, ToolkitError
from common.fileio import sha256_file

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxruntime.quantization")

PROFILE_MAX = 64  # seq / new axis maximum of the tiny ONNX fixtures
KV_DIM, LAYERS = 32, 2


@pytest.fixture(scope="module")
def classifier_qdq(tiny_classifier_onnx, classifier_calib, tmp_path_factory):
    from calibration.qdq import quantize_to_qdq

    out = tmp_path_factory.mktemp("qdq") / "tiny_classifier.qdq.onnx"
    quantize_to_qdq(tiny_classifier_onnx, classifier_calib, out, method="entropy")
    return out


@pytest.fixture(scope="module")
def decoder_qdq(tiny_decoder_onnx, decoder_calib, tmp_path_factory):
    from calibration.qdq import quantize_to_qdq

    out = tmp_path_factory.mktemp("qdq") / "tiny_decoder.qdq.onnx"
    quantize_to_qdq(tiny_decoder_onnx, decoder_calib, out, method="minmax",
                    quantize_attention=True)
    return out


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_review_encoding_matches_training(tiny_classifier_onnx):
    from calibration.dataset import encode_reviews
    from train.batching import encode_texts
    from train.tokenizer import load_tokenizer

    tok = load_tokenizer(tiny_classifier_onnx.parent / "tiny_classifier.tokenizer.json")
    texts = [" ".join(WORDS * 3), "a short one"]
    for cls in (False, True):
        assert encode_reviews(tok, texts, 20, cls) == encode_texts(tok, texts, 20, cls)


# --- explicit INT8 (Q/DQ) ----------------------------------------------------------------------

def _initializers(model):
    return {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}


def _consumer_names(model, tensor):
    return [n.name for n in model.graph.node if tensor in n.input]


def _attention_matmuls(model):
    """MatMuls of two activations: inputs neither weights nor DequantizeLinear of weights."""
    inits = {t.name for t in model.graph.initializer}
    weight_dq = {n.output[0] for n in model.graph.node
                 if n.op_type == "DequantizeLinear" and n.input[0] in inits}
    return {n.name for n in model.graph.node if n.op_type == "MatMul"
            and not any(i in inits or i in weight_dq for i in n.input)}


def test_qdq_classifier_is_tensorrt_ready(classifier_qdq, tiny_classifier_onnx, classifier_calib):
    model = onnx.load(str(classifier_qdq))
    inits = _initializers(model)
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert len(qdq) > 10
    for node in qdq:
        zero_point = inits[node.input[2]]
        assert zero_point.dtype == np.int8 and not zero_point.any()
    consumers = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, set()).add(node.op_type)
    dq = [n for n in qdq if n.op_type == "DequantizeLinear"]
    assert all(consumers[n.output[0]] <= {"MatMul", "Gemm"} for n in dq)
    weights = [n for n in dq if n.input[0] in inits]
    assert len(weights) == 9  # 4 linear layers x 2 blocks + the head
    fed_by_dq = {c for n in dq for c in _consumer_names(model, n.output[0])}
    attention = _attention_matmuls(model)
    assert len(attention) == 4 and not attention & fed_by_dq  # Q.K^T, softmax.V stay float
    for node in weights:
        assert any(a.name == "axis" for a in node.attribute) and inits[node.input[1]].size > 1
    assert next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == 17
    assert {o.domain for o in model.opset_import} <= {"", "ai.onnx"}  # nothing TRT cannot parse

    feed = next(iter(CalibrationSet(classifier_calib)))
    fp32 = _session(tiny_classifier_onnx).run(None, feed)[0]
    int8 = _session(classifier_qdq).run(None, feed)[0]
    assert int8.shape == fp32.shape and np.isfinite(int8).all()
    assert np.abs(int8 - fp32).max() < 0.1 * np.abs(fp32).max() + 1e-3

    sc = load_onnx_sidecar(classifier_qdq, kind="classifier", check_hash=True)
    assert sc["precision"] == "int8-qdq"
    quant = sc["quantization"]
    assert quant["method"] == "entropy"
    assert quant["calibration_sha256"] == sha256_file(classifier_calib)
    assert quant["source_onnx_sha256"] == sha256_file(tiny_classifier_onnx)
    tokenizer = classifier_qdq.parent / sc["tokenizer"]  # copied: the artifact stands alone
    assert sha256_file(tokenizer) == sc["tokenizer_sha256"]


def test_qdq_decoder_keeps_kv_and_logits_float(decoder_qdq, tiny_decoder_onnx, decoder_calib):
    model = onnx.load(str(decoder_qdq))
    dq_outputs = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    attention = _attention_matmuls(model)
    assert len(attention) == 4
    for name in attention:  # --quantize-attention: both inputs through Q/DQ
        node = next(n for n in model.graph.node if n.name == name)
        assert set(node.input) <= dq_outputs
    producers = {out: n.op_type for n in model.graph.node for out in n.output}
    outputs = {o.name: o.type.tensor_type.elem_type for o in model.graph.output}
    for name in ["logits", "topk_values", "new_key_0", "new_value_1"]:
        assert outputs[name] == onnx.TensorProto.FLOAT
        assert producers[name] != "DequantizeLinear"
    feed = list(CalibrationSet(decoder_calib))[-1]
    names = [o.name for o in model.graph.output]
    got = dict(zip(names, _session(decoder_qdq).run(None, feed)))
    ref = dict(zip(names, _session(tiny_decoder_onnx).run(None, feed)))
    assert got["new_key_0"].shape == ref["new_key_0"].shape == (PROFILE_MAX, 3, KV_DIM)
    assert np.abs(got["logits"] - ref["logits"]).max() < 0.1 * np.abs(ref["logits"]).max()


def test_qdq_check_rejects_nonzero_zero_point(classifier_qdq):
    from calibration.qdq import check_qdq_for_tensorrt

    model = onnx.load(str(classifier_qdq))
    node = next(n for n in model.graph.node if n.op_type == "QuantizeLinear")
    zp = next(t for t in model.graph.initializer if t.name == node.input[2])
    zp.CopyFrom(onnx.numpy_helper.from_array(np.array(3, np.int8), zp.name))
    with pytest.raises(ToolkitError, match="zero point must be int8 and 0"):
        check_qdq_for_tensorrt(model)


def test_qdq_cli_errors(tiny_classifier_onnx, classifier_calib, tmp_path, copy_of):
    from calibration.qdq import main

    runner = CliRunner()
    result = runner.invoke(main, ["--onnx", str(tiny_classifier_onnx), "--calib",
                                  str(tmp_path / "none.calib.npz"), "--output",
                                  str(tmp_path / "x.qdq.onnx")])
    assert result.exit_code == EXIT_USER_ERROR
    assert "calibration set not found" in result.output
    assert not (tmp_path / "x.qdq.onnx").exists()

    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"\x08\x07garbage")
    shutil.copy(sidecar_path(tiny_classifier_onnx), sidecar_path(broken))
    result = runner.invoke(main, ["--onnx", str(broken), "--calib", str(classifier_calib),
                                  "--output", str(tmp_path / "y.qdq.onnx")])
    assert result.exit_code == EXIT_USER_ERROR
    assert "does not match its sidecar" in result.output


# --- the accuracy gate and the FP16 estimate ---------------------------------------------------

def test_gate_passes_generous_limit_and_fails_impossible_one(
        tiny_classifier_onnx, classifier_qdq, data_dir, tmp_path):
    from calibration.gate import main

    runner = CliRunner()
    args = ["--fp32", str(tiny_classifier_onnx), "--int8", str(classifier_qdq),
            "--data", str(data_dir), "--split", "test"]
    ok = runner.invoke(main, args + ["--report", str(tmp_path / "ok.json"), "--max-drop", "100",
                                     "--fp16"])
    assert ok.exit_code == 0, ok.output
    report = json.loads((tmp_path / "ok.json").read_text())
    assert report["passed"] is True and report["samples"] == 60 and report["split"] == "test"
    assert set(report["fp32"]["per_class"]) == {"negative", "positive"}
    assert 0.0 <= report["int8"]["accuracy"] <= 1.0
    diffs = report["int8_vs_fp32"]["largest_logit_differences"]
    assert diffs and all(0 <= d["index"] < 60 for d in diffs)
    assert diffs[0]["abs_diff"] >= diffs[-1]["abs_diff"]
    assert report["fp16"]["runs_on_cpu"] is True and report["fp16"]["nonfinite_outputs"] == {}

    # -101 points: even an INT8 model 100 points better than FP32 would not pass.
    bad = runner.invoke(main, args + ["--report", str(tmp_path / "bad.json"), "--max-drop",
                                      "-101", "--max-samples", "20"])
    assert bad.exit_code == EXIT_USER_ERROR
    assert "INT8 fails the gate" in bad.output and "FP32" in bad.output and "INT8" in bad.output
    assert json.loads((tmp_path / "bad.json").read_text())["passed"] is False


def test_gate_decoder_reports_loss_and_perplexity(tiny_decoder_onnx, decoder_qdq, data_dir,
                                                  tmp_path):
    from calibration.gate import run_gate

    report = run_gate(tiny_decoder_onnx, decoder_qdq, str(data_dir), tmp_path / "d.json",
                      max_drop=50.0, max_samples=4)
    assert report["split"] == "valid" and report["samples"] == 4
    assert report["fp32"]["tokens"] == 4 * PROFILE_MAX
    assert np.isclose(report["fp32"]["perplexity"], np.exp(report["fp32"]["loss"]))
    assert report["drop_unit"] == "percent of FP32 loss"
    assert abs(report["drop"]) < 50.0


def test_gate_rejects_unreadable_int8_onnx(tiny_classifier_onnx, classifier_qdq, data_dir,
                                           tmp_path):
    from calibration.gate import main

    broken = tmp_path / "broken.qdq.onnx"
    broken.write_bytes(b"this is not protobuf")
    shutil.copy(sidecar_path(classifier_qdq), sidecar_path(broken))
    result = CliRunner().invoke(main, ["--fp32", str(tiny_classifier_onnx), "--int8", str(broken),
                                       "--data", str(data_dir), "--report",
                                       str(tmp_path / "r.json")])
    assert result.exit_code == EXIT_USER_ERROR
    assert "cannot be loaded by ONNX Runtime" in result.output


def test_fp16_copy_runs_and_flags_constants_beyond_range(tiny_classifier_onnx, classifier_calib,
                                                         tmp_path):
    from calibration.fp16 import convert_to_fp16, nonfinite_counts, out_of_range_constants

    fp16 = convert_to_fp16(tiny_classifier_onnx, tmp_path / "m.fp16.onnx")
    feed = next(iter(CalibrationSet(classifier_calib)))
    ref = _session(tiny_classifier_onnx).run(None, feed)[0]
    got = _session(fp16).run(None, feed)[0]
    assert got.dtype == np.float32  # keep_io_types
    assert np.abs(got - ref).max() < 1e-2
    assert out_of_range_constants(tiny_classifier_onnx)["count"] == 0

    model = onnx.load(str(tiny_classifier_onnx))
    weight = next(t for t in model.graph.initializer
                  if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) == 2)
    big = onnx.numpy_helper.to_array(weight).copy()
    big.flat[0] = 1.0e6
    weight.CopyFrom(onnx.numpy_helper.from_array(big.astype(np.float32), weight.name))
    planted = tmp_path / "planted.onnx"
    onnx.save(model, str(planted))
    found = out_of_range_constants(planted)
    assert found["count"] == 1 and found["constants"][0]["name"] == weight.name
    assert nonfinite_counts({"x": np.array([1.0, np.inf, np.nan], np.float32)}) == {"x": 2}
