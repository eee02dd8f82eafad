"""Shared fixtures: tiny models and tokenizers made in the test, never downloaded data."""
from __future__ import annotations

import os
import random
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("WANDB_DISABLED", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

WORDS = ("the cat dog ran sat on mat happy sad good bad film story was very not a and "
         "great awful loved hated little girl boy tree sun played").split()


def tiny_texts(n: int = 200, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 30))) for _ in range(n)]


def _tiny_checkpoint(directory: Path, kind: str) -> Path:
    import torch

    from train.checkpoint import TOKENIZER_FILE, save_checkpoint
    from train.model import ClassifierConfig, DecoderConfig, build_model
    from train.tokenizer import save_tokenizer, train_bpe

    tok = train_bpe(tiny_texts(), vocab_size=300)
    torch.manual_seed(0)
    if kind == "classifier":
        cfg = ClassifierConfig(vocab_size=tok.get_vocab_size(), max_seq_len=64, d_model=32,
                               n_layers=2, n_heads=4, d_ff=64, dropout=0.0)
    else:
        cfg = DecoderConfig(vocab_size=tok.get_vocab_size(), max_seq_len=64, d_model=32,
                            n_layers=2, n_heads=4, d_ff=64)
    model = build_model(cfg)
    directory.mkdir(parents=True, exist_ok=True)
    save_tokenizer(tok, directory / TOKENIZER_FILE)
    return save_checkpoint(directory / "best.pt", cfg, model)


@pytest.fixture(scope="session")
def tiny_classifier_checkpoint(tmp_path_factory) -> Path:
    """best.pt + tokenizer.json of a randomly initialised 2-layer, d=32 classifier."""
    return _tiny_checkpoint(tmp_path_factory.mktemp("tiny_classifier"), "classifier")


@pytest.fixture(scope="session")
def tiny_decoder_checkpoint(tmp_path_factory) -> Path:
    """best.pt + tokenizer.json of a randomly initialised 2-layer, d=32 decoder."""
    return _tiny_checkpoint(tmp_path_factory.mktemp("tiny_decoder"), "decoder")


@pytest.fixture
def copy_of(tmp_path):
    """Copy a file into this test's tmp dir (to corrupt it without touching the fixture)."""

    def _copy(path: Path) -> Path:
        dst = tmp_path / Path(path).name
        shutil.copy(path, dst)
        return dst

    return _copy


def _tiny_onnx(directory: Path, checkpoint: Path, name: str) -> Path:
    import torch

    from export.onnx_model import export_checkpoint

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny graphs: threads only add contention on a shared 2-core box
    try:
        # Parity is checked in tests/test_export.py; these fixtures only need the artifacts.
        return export_checkpoint(checkpoint, directory / f"{name}.onnx", max_batch=8, topk=16,
                                 check_parity=False)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_classifier_onnx(tmp_path_factory, tiny_classifier_checkpoint) -> Path:
    """tiny_classifier.onnx (+ .onnx.json sidecar, tiny_classifier.tokenizer.json) exported from
    tiny_classifier_checkpoint: batch 1..8, seq 1..64, 2 labels."""
    return _tiny_onnx(tmp_path_factory.mktemp("tiny_classifier_onnx"), tiny_classifier_checkpoint,
                      "tiny_classifier")


@pytest.fixture(scope="session")
def tiny_decoder_onnx(tmp_path_factory, tiny_decoder_checkpoint) -> Path:
    """tiny_decoder.onnx (+ sidecar, tokenizer) exported from tiny_decoder_checkpoint: batch
    1..8, new 1..64, past 0..63, total 1..64, 2 layers, kv_dim 32, topk 16, vocab 300."""
    return _tiny_onnx(tmp_path_factory.mktemp("tiny_decoder_onnx"), tiny_decoder_checkpoint,
                      "tiny_decoder")
