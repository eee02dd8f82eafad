"""Host suite fixtures: tiny checkpoints trained-free in the test, and their live exports.

The ONNX fixtures here override the device suite's committed copies for host tests, so a
test that compares a checkpoint with its ONNX compares the export of that very checkpoint.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from make_fixtures import FIXTURES, export_tiny, tiny_checkpoint


def _checkpoint(tmp_path_factory, name: str) -> Path:
    kind, config, _ = FIXTURES[name]
    return tiny_checkpoint(tmp_path_factory.mktemp(name), kind, **config)


def _export(tmp_path_factory, checkpoint: Path, name: str) -> Path:
    _, _, options = FIXTURES[name]
    return export_tiny(checkpoint, tmp_path_factory.mktemp(f"{name}_onnx") / f"{name}.onnx",
                       **options)


@pytest.fixture(scope="session")
def tiny_classifier_checkpoint(tmp_path_factory) -> Path:
    """best.pt + tokenizer.json of a randomly initialised 2-layer, d=32 classifier."""
    return _checkpoint(tmp_path_factory, "tiny_classifier")


@pytest.fixture(scope="session")
def tiny_decoder_checkpoint(tmp_path_factory) -> Path:
    """best.pt + tokenizer.json of a randomly initialised 2-layer, d=32 decoder."""
    return _checkpoint(tmp_path_factory, "tiny_decoder")


@pytest.fixture(scope="session")
def tiny_classifier_onnx(tmp_path_factory, tiny_classifier_checkpoint) -> Path:
    """Exported from tiny_classifier_checkpoint: batch 1..8, seq 1..64, 2 labels."""
    return _export(tmp_path_factory, tiny_classifier_checkpoint, "tiny_classifier")


@pytest.fixture(scope="session")
def tiny_decoder_onnx(tmp_path_factory, tiny_decoder_checkpoint) -> Path:
    """Exported from tiny_decoder_checkpoint: batch 1..8, new 1..64, past 0..63, total 1..64,
    2 layers, kv_dim 32, topk 16, vocab 300."""
    return _export(tmp_path_factory, tiny_decoder_checkpoint, "tiny_decoder")
