"""Classifier tokenization parity with training and the PyTorch decode comparison (host)."""
from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

LONG_REVIEW = " ".join(["the film was very good<br />and the story loved it"] * 20)
TEXTS = ["great film", "awful<br /><br/>bad story", LONG_REVIEW, "", "the cat sat on the mat",
         "a " * 200, "not good not bad"]


@pytest.fixture(scope="module")
def tokenizer(tiny_classifier_checkpoint):
    from train.tokenizer import load_tokenizer

    return load_tokenizer(tiny_classifier_checkpoint.parent / "tokenizer.json")


@pytest.mark.parametrize("prepend_cls", [False, True])
def test_classifier_encoding_agrees_with_training(tokenizer, prepend_cls):
    from runtime.tokenization import clean_imdb_text, encode_classifier_texts
    from train.batching import encode_texts
    from train.data import clean_imdb_text as train_clean

    assert [clean_imdb_text(t) for t in TEXTS] == [train_clean(t) for t in TEXTS]
    expected = encode_texts(tokenizer, [train_clean(t) for t in TEXTS], 64, prepend_cls)
    cls_id = tokenizer.token_to_id("<cls>") if prepend_cls else None
    ours = encode_classifier_texts(tokenizer, TEXTS, 64, cls_id)
    assert ours == expected
    assert max(len(r) for r in ours) == 64  # the long review was truncated


def test_decode_vs_torch_report(tiny_decoder_checkpoint, tiny_decoder_onnx):
    from benchmarks.decode_vs_torch import compare

    report = compare(str(tiny_decoder_checkpoint), str(tiny_decoder_onnx), "the cat",
                     new_tokens=20, repeats=1, positions=[10, 400])
    runtime_row, torch_row = report["results"]
    assert runtime_row["tokens"] == torch_row["tokens"] == 20
    assert report["greedy"]["all_equal"] and report["greedy"]["equal_prefix_tokens"] == 20
    assert runtime_row["ms_at_10"] > 0 and runtime_row["ms_at_400"] is None  # context is 64
    assert report["speedup"] > 0
