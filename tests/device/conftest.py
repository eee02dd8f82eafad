"""Device suite fixtures: the committed tiny models (tests/fixtures), copied per session.

Nothing here imports torch, onnx, train/ or export/: this suite runs on a Jetson and on
Python 3.8/3.10 venvs made from requirements/device.txt + requirements/device-test.txt.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from tiny_data import copy_committed_model


def _model(tmp_path_factory, name: str) -> Path:
    return copy_committed_model(name, tmp_path_factory.mktemp(name))


@pytest.fixture(scope="session")
def tiny_classifier_onnx(tmp_path_factory) -> Path:
    """tiny_classifier.onnx (+ .onnx.json sidecar, .tokenizer.json): batch 1..8, seq 1..64,
    2 labels, vocab 300, d_model 32."""
    return _model(tmp_path_factory, "tiny_classifier")


@pytest.fixture(scope="session")
def tiny_decoder_onnx(tmp_path_factory) -> Path:
    """tiny_decoder.onnx (+ sidecar, tokenizer): batch 1..8, new 1..64, past 0..63, total
    1..64, 2 layers, kv_dim 32, topk 16, vocab 300."""
    return _model(tmp_path_factory, "tiny_decoder")


@pytest.fixture(scope="session")
def tiny_decoder_long_onnx(tmp_path_factory) -> Path:
    """tiny_decoder_long.onnx: batch 1..2, context 192, 2 layers, kv_dim 64 (a KV slot is 256
    bytes at batch 1, TensorRT's address alignment), topk 16, vocab 300."""
    return _model(tmp_path_factory, "tiny_decoder_long")
