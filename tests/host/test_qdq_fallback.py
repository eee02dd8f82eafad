"""Per-layer float fallback (calibration.sensitivity via calibration.qdq --float-fallback) on
the tiny classifier: the ranking covers every quantized linear layer, putting one layer back in
float really removes its Q/DQ inputs, and the chosen layers end up float in the written graph
with a smaller output error than all-INT8."""
from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from calibration.loader import CalibrationSet
from common.artifacts import load_onnx_sidecar
from common.errors import EXIT_USER_ERROR

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxruntime.quantization")


@pytest.fixture(scope="module")
def qdq_pair(tiny_classifier_onnx, classifier_calib, tmp_path_factory):
    from calibration.qdq import quantize_to_qdq

    out = tmp_path_factory.mktemp("fallback")
    full = out / "all_int8.qdq.onnx"
    quantize_to_qdq(tiny_classifier_onnx, classifier_calib, full, method="minmax")
    partial = out / "fallback.qdq.onnx"
    summary = quantize_to_qdq(tiny_classifier_onnx, classifier_calib, partial, method="minmax",
                              float_fallback=2, sensitivity_batches=3)
    return full, partial, summary


def _dq_fed(model):
    dq = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return {n.name for n in model.graph.node
            if n.op_type in ("MatMul", "Gemm") and any(i in dq for i in n.input)}


def _logit_mse(path, reference_path, feeds):
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    want = ort.InferenceSession(str(reference_path), providers=["CPUExecutionProvider"])
    diffs = [got.run(["logits"], f)[0] - want.run(["logits"], f)[0] for f in feeds]
    return float(np.mean(np.concatenate([d.ravel() for d in diffs]) ** 2))


def test_ranking_covers_every_quantized_layer(qdq_pair):
    full, _, summary = qdq_pair
    ranking = summary["float_fallback"]["ranking"]
    assert {row["node"] for row in ranking} == _dq_fed(onnx.load(str(full)))
    gains = [row["gain"] for row in ranking]
    assert gains == sorted(gains, reverse=True)
    assert summary["float_fallback"]["int8_error"] > 0
    assert all(row["layer"].startswith(row["node"] + " [") for row in ranking)


def test_layer_labels_give_weight_shape_and_bias(tiny_classifier_onnx):
    from calibration.sensitivity import layer_labels

    model = onnx.load(str(tiny_classifier_onnx))
    dims = {t.name: list(t.dims) for t in model.graph.initializer}
    labels = layer_labels(model)
    for node in model.graph.node:
        if node.op_type == "Gemm":
            w = dims[node.input[1]]
            assert labels[node.name] == f"{node.name} [{w[0]}x{w[1]}] bias {node.input[2]}"
    attention = [n.name for n in model.graph.node if n.op_type == "MatMul"
                 and n.input[1] not in dims]
    assert attention and all(labels[n].endswith("[activation]") for n in attention)


def test_one_node_in_float_reads_float_tensors(qdq_pair, tiny_classifier_onnx):
    from calibration.sensitivity import quantized_linear_nodes, with_nodes_in_float

    full, _, _ = qdq_pair
    q_model = onnx.load(str(full))
    name = quantized_linear_nodes(q_model)[0]
    variant = with_nodes_in_float(q_model, onnx.load(str(tiny_classifier_onnx)), [name])
    assert name not in _dq_fed(variant)
    assert _dq_fed(variant) == _dq_fed(q_model) - {name}
    onnx.checker.check_model(variant)


def test_chosen_layers_are_float_and_lower_the_error(qdq_pair, tiny_classifier_onnx,
                                                     classifier_calib):
    full, partial, summary = qdq_pair
    chosen = summary["float_fallback"]["float_nodes"]
    assert len(chosen) == 2
    assert chosen == [row["node"] for row in summary["float_fallback"]["ranking"][:2]]
    assert _dq_fed(onnx.load(str(partial))) == _dq_fed(onnx.load(str(full))) - set(chosen)
    assert load_onnx_sidecar(partial)["quantization"]["float_nodes"] == chosen
    feeds = list(CalibrationSet(classifier_calib))
    assert _logit_mse(partial, tiny_classifier_onnx, feeds) < \
        _logit_mse(full, tiny_classifier_onnx, feeds)


def test_fallback_count_beyond_the_graph_is_refused(tiny_classifier_onnx, classifier_calib,
                                                    tmp_path):
    from calibration.qdq import main

    result = CliRunner().invoke(main, ["--onnx", str(tiny_classifier_onnx), "--calib",
                                       str(classifier_calib), "--output",
                                       str(tmp_path / "x.qdq.onnx"), "--float-fallback", "99"])
    assert result.exit_code == EXIT_USER_ERROR
    assert "--float-fallback 99: expected 0.." in result.output
    assert not (tmp_path / "x.qdq.onnx").exists()
