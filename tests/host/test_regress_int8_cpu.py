"""The accuracy half of the CPU regression check: INT8 Q/DQ against FP32 on the committed tiny
models, quantized exactly as ``make calibrate`` does (calibration.qdq defaults: entropy ranges,
the attention products Q.K^T and softmax.V kept float), measured by benchmarks.ratios.

Host suite: quantization needs onnx. The figures are deterministic (5 runs each gave the same
values to 5 digits), so the bounds only allow for other CPUs' kernels:

| model | figure | measured (default) | attention quantized too | bound |
|---|---|---|---|---|
| tiny_classifier | prediction agreement (60 reviews) | 0.983 | 1.000 | >= 0.95 |
| tiny_classifier | logit RMS error / FP32 logit std | 0.052 | 0.047 | <= 0.08 |
| tiny_decoder_long | loss drop, % of FP32 loss (the gate's unit) | -0.0005 | +0.001 | <= 0.5 |
| tiny_decoder_long | top-1 agreement | 0.998 | 0.991 | >= 0.99 |
| tiny_decoder_long | logit RMS error / FP32 logit std | 0.020 | 0.048 | <= 0.03 |

The models are untrained, so accuracy itself barely moves; the logit error is the figure that
shows a quantization change such as the attention products going INT8 (2.4x the error).
"""
from __future__ import annotations

import pytest

pytest.importorskip("onnx", reason="quantizing needs onnx (host side)")

from tiny_data import copy_committed_model, write_data_dir  # noqa: E402

from benchmarks import ratios  # noqa: E402
from benchmarks.accuracy import load_eval  # noqa: E402

BOUNDS = {
    "tiny_classifier": {"agreement": 0.95, "logit_relative_rmse": 0.08},
    "tiny_decoder_long": {"drop": 0.5, "agreement": 0.99, "logit_relative_rmse": 0.03},
}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_data_dir(tmp_path_factory.mktemp("data"))


@pytest.mark.parametrize("name", sorted(BOUNDS))
def test_int8_stays_close_to_fp32(name, data_dir, tmp_path):
    from calibration.dataset import build_calibration_set
    from calibration.qdq import quantize_to_qdq

    onnx = copy_committed_model(name, tmp_path)
    calib = build_calibration_set(onnx, str(data_dir), tmp_path / "calib.npz", batches=6,
                                  batch_size=2)
    qdq = tmp_path / f"{name}.qdq.onnx"
    quantize_to_qdq(onnx, calib, qdq)  # the defaults of make calibrate
    result = ratios.int8_vs_fp32(onnx, qdq, load_eval(onnx, str(data_dir)))
    bounds = BOUNDS[name]
    moved = []
    if result["agreement"] < bounds["agreement"]:
        moved.append(f"agreement {result['agreement']:.4f} < {bounds['agreement']}")
    if result["logit_relative_rmse"] > bounds["logit_relative_rmse"]:
        moved.append(f"logit relative RMSE {result['logit_relative_rmse']:.4f} > "
                     f"{bounds['logit_relative_rmse']}")
    if "drop" in bounds and result["drop"] > bounds["drop"]:
        moved.append(f"drop {result['drop']:.4f} {result['drop_unit']} > {bounds['drop']}")
    assert not moved, f"INT8 of {name} moved away from FP32: " + "; ".join(moved)
    assert 0 < result["logit_relative_rmse"]  # the Q/DQ graph really is quantized
