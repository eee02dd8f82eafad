"""The calibration set: the .calib.npz format, its loader (Polygraphy's calibrator reads it on the
device) and building it from data. Device side: numpy, tokenizers, polygraphy; no onnx."""
from __future__ import annotations

import json

import numpy as np
import pytest

from calibration.loader import CalibrationSet, save_calibration_set
from common.errors import ToolkitError
from common.fileio import sha256_file

PROFILE_MAX = 64  # seq / new axis maximum of the tiny ONNX fixtures
KV_DIM, LAYERS = 32, 2


# --- the calibration set and its loader --------------------------------------------------------

def _decoder_tokens(batch: int, seq: int) -> dict:
    mask = np.ones((batch, seq), np.int32)  # (batch, seq)
    mask[1:, :2] = 0  # left padding
    return {"input_ids": np.arange(batch * seq, dtype=np.int32).reshape(batch, seq) % 50 + 3,
            "position_ids": np.maximum(np.cumsum(mask, 1) - 1, 0).astype(np.int32),
            "attention_mask": mask}


def test_calibration_set_round_trip(tmp_path):
    names = ["input_ids", "position_ids", "attention_mask"] + [
        f"past_{kv}_{layer}" for layer in range(LAYERS) for kv in ("key", "value")]
    meta = {"kind": "decoder", "input_names": names, "kv_layers": LAYERS, "kv_dim": KV_DIM,
            "pad_id": 0, "split": "train"}
    batches = [_decoder_tokens(2, 5), _decoder_tokens(3, 9)]
    path = save_calibration_set(tmp_path / "d.calib.npz", batches, meta)

    calib = CalibrationSet(path)
    assert len(calib) == 2 and calib.kind == "decoder"
    assert calib.input_names == names
    assert calib.shapes == [(2, 5), (3, 9)]
    assert calib.meta["split"] == "train" and calib.meta["batch_shapes"] == [[2, 5], [3, 9]]
    feeds = list(calib)
    assert [list(f) for f in feeds] == [names, names]  # every input, in graph order
    np.testing.assert_array_equal(feeds[1]["input_ids"], batches[1]["input_ids"])
    assert feeds[1]["attention_mask"].dtype == np.int32
    assert feeds[1]["past_key_1"].shape == (0, 3, KV_DIM)
    assert feeds[1]["past_key_1"].dtype == np.float32
    assert len(list(calib)) == 2  # rewindable: Polygraphy iterates it again on reset()


def test_calibration_set_errors(tmp_path):
    with pytest.raises(ToolkitError, match="calibration set not found"):
        CalibrationSet(tmp_path / "missing.calib.npz")
    garbage = tmp_path / "garbage.calib.npz"
    garbage.write_bytes(b"not a zip file at all")
    with pytest.raises(ToolkitError, match="not a readable .npz"):
        CalibrationSet(garbage)
    no_meta = tmp_path / "plain.npz"
    np.savez(no_meta, input_ids=np.zeros((2, 3), np.int32))
    with pytest.raises(ToolkitError, match="no 'meta' entry"):
        CalibrationSet(no_meta)
    meta = {"kind": "classifier", "input_names": ["input_ids", "attention_mask"]}
    good = save_calibration_set(tmp_path / "c.npz", [
        {"input_ids": np.ones((2, 4), np.int32), "attention_mask": np.ones((2, 4), np.int32)}],
        meta)
    with np.load(good) as npz:
        arrays = dict(npz)
    arrays["b0000.input_ids"] = arrays["b0000.input_ids"].astype(np.float32)
    np.savez(tmp_path / "float_ids.npz", **arrays)
    with pytest.raises(ToolkitError, match="expected a non-empty .batch, seq. int32"):
        CalibrationSet(tmp_path / "float_ids.npz")


def test_fixed_shapes_for_polygraphy_calibrator(decoder_calib):
    """TensorRT calibrates at the calibration profile's OPT shapes only: Polygraphy hands those
    to the loader as input_metadata and checks every batch against them."""
    pytest.importorskip("polygraphy")
    from polygraphy.backend.base.util import check_inputs
    from polygraphy.common import TensorMetadata
    from polygraphy.datatype import DataType

    calib = CalibrationSet(decoder_calib)
    stored_rows = sum(shape[0] for shape in calib.shapes)
    metadata = TensorMetadata()
    metadata.add("input_ids", DataType.INT32, (2, 16))
    metadata.add("position_ids", DataType.INT32, (2, 16))
    metadata.add("attention_mask", DataType.INT32, (2, 16))
    for name in calib.input_names[3:]:
        metadata.add(name, DataType.FLOAT32, (0, 2, KV_DIM))
    iterator = iter(calib)  # Polygraphy's calibrator calls iter() before it sets the metadata
    calib.input_metadata = metadata
    feeds = list(iterator)
    assert len(feeds) == len(calib) == -(-stored_rows // 2)
    for feed in feeds:
        check_inputs(feed, metadata)  # raises on a dtype or shape mismatch
        assert feed["input_ids"].shape == (2, 16)
        assert feed["attention_mask"][:, -1].all()  # left padding: the last position is real
    metadata.add("past_key_0", DataType.FLOAT32, (4, 2, KV_DIM))
    with pytest.raises(ToolkitError, match="OPT past is 0"):
        calib.input_metadata = metadata


# --- building the set from data ----------------------------------------------------------------

def test_classifier_calibration_set_covers_profile_from_train_split(
        classifier_calib, tiny_classifier_onnx, data_dir):
    from tokenizers import Tokenizer

    calib = CalibrationSet(classifier_calib)
    lengths = [seq for _batch, seq in calib.shapes]
    assert len(set(lengths)) >= 4 and min(lengths) <= 8 and max(lengths) == PROFILE_MAX
    assert calib.meta["split"] == "train" and calib.meta["source"] == str(data_dir)
    assert calib.input_names == ["input_ids", "attention_mask"]
    assert calib.meta["onnx_sha256"] == sha256_file(tiny_classifier_onnx)

    tok = Tokenizer.from_file(str(tiny_classifier_onnx.parent / "tiny_classifier.tokenizer.json"))
    train_ids = {i for line in (data_dir / "imdb" / "train.jsonl").read_text().splitlines()
                 for i in tok.encode(json.loads(line)["text"]).ids}
    test_ids = {i for line in (data_dir / "imdb" / "test.jsonl").read_text().splitlines()
                for i in tok.encode(json.loads(line)["text"]).ids}
    assert test_ids - train_ids  # else this test could not tell the splits apart
    used = {int(i) for feed in calib for i in feed["input_ids"][feed["attention_mask"] == 1]}
    assert used <= train_ids
    longest = next(feed for feed in calib if feed["input_ids"].shape[1] == PROFILE_MAX)
    assert longest["attention_mask"].all(axis=1).any()  # real tokens fill the maximum length


def test_decoder_calibration_set_is_left_padded_prefill(decoder_calib):
    calib = CalibrationSet(decoder_calib)
    assert max(seq for _b, seq in calib.shapes) == PROFILE_MAX
    for feed in calib:
        mask = feed["attention_mask"]
        assert mask[:, -1].all() and mask[0].all()  # first row fills the length
        assert (np.diff(mask, axis=1) >= 0).all()  # zeros only on the left
        first_real = feed["position_ids"][mask == 1].min()
        assert first_real == 0 and feed["past_value_0"].shape[0] == 0
