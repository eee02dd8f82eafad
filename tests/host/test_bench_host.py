"""Host side of the benchmarks: the PyTorch eager row of the suite (same weights as the ONNX
row, so the same accuracy), and benchmarks.decode_vs_torch's interleaved rounds."""
from __future__ import annotations

import pytest
from tiny_data import write_data_dir

from benchmarks import suite


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_data_dir(tmp_path_factory.mktemp("data"))


def _row(report, name):
    return next(r for r in report["results"] if r["backend"] == name)


def test_pytorch_row_matches_onnx_runtime_accuracy(tiny_classifier_checkpoint,
                                                   tiny_classifier_onnx, data_dir, tmp_path):
    report = suite.run_suite("tiny_classifier", tiny_classifier_onnx.parent, tmp_path,
                             data=str(data_dir), checkpoint=tiny_classifier_checkpoint,
                             batch=(1, 2), seq=(8,), warmup=1, iterations=3,
                             only=["pytorch-eager", "ort-cpu-fp32"], progress=False)
    torch_row, ort_row = _row(report, "pytorch-eager"), _row(report, "ort-cpu-fp32")
    assert torch_row["status"] == ort_row["status"] == "ran", report["results"]
    assert torch_row["accuracy"]["samples"] == ort_row["accuracy"]["samples"] == 60
    assert torch_row["accuracy"]["accuracy"] == ort_row["accuracy"]["accuracy"]
    assert [(p["batch"], p["seq"]) for p in torch_row["latency"]] == [(1, 8), (2, 8)]
    assert torch_row["size_bytes"] == tiny_classifier_checkpoint.stat().st_size


def test_pytorch_decoder_row_has_loss_and_per_token_curve(tiny_decoder_checkpoint,
                                                          tiny_decoder_onnx, data_dir, tmp_path):
    report = suite.run_suite("tiny_decoder", tiny_decoder_onnx.parent, tmp_path,
                             data=str(data_dir), checkpoint=tiny_decoder_checkpoint,
                             batch=(1,), seq=(8,), new_tokens=8, warmup=1, iterations=2,
                             max_samples=4, only=["pytorch-eager", "ort-cpu-fp32"],
                             progress=False)
    torch_row, ort_row = _row(report, "pytorch-eager"), _row(report, "ort-cpu-fp32")
    assert torch_row["status"] == "ran", torch_row
    assert torch_row["accuracy"]["loss"] == pytest.approx(ort_row["accuracy"]["loss"], rel=1e-4)
    assert torch_row["accuracy"]["bits_per_byte"] == pytest.approx(
        ort_row["accuracy"]["bits_per_byte"], rel=1e-4)
    assert torch_row["per_token"]["curve"] and torch_row["latency"][0]["decode_tokens_per_s"] > 0


def test_decode_vs_torch_interleaves_and_reports_spread(tiny_decoder_checkpoint,
                                                        tiny_decoder_onnx):
    from benchmarks.decode_vs_torch import compare

    report = compare(str(tiny_decoder_checkpoint), str(tiny_decoder_onnx), "the cat",
                     new_tokens=50, repeats=3, positions=[8, 50])
    spread = report["speedup_spread"]
    assert spread["n"] == 3 and spread["min"] <= report["speedup"] <= spread["max"]
    for row in report["results"]:
        assert row["tokens_per_s_spread"]["n"] == 3
        ratio = row["ratio_50_8"]
        assert ratio["min"] <= ratio["median"] <= ratio["max"] and ratio["n"] == 3
    assert report["greedy"]["all_equal"]
