"""The sidecar's text, prompt, eos and head keys (issue 23) on the device side, without torch:
their validation and old-sidecar defaults, ``encode_for_model`` against the tokenizer's own
pair encoding and truncation, the heads of ``runtime.classify`` and the Triton postprocess, and
the accuracy benchmark's refusal of a regression head."""
from __future__ import annotations

import numpy as np
import pytest

from common.artifacts import (
    OWN_TEXT,
    head_rules,
    prompt_rules,
    stop_ids,
    text_rules,
    validate_onnx_sidecar,
)
from common.errors import ToolkitError
from common.text import encode_for_model

HF_TEXT = {"cleaning": "none", "truncation": "right", "special_tokens": "tokenizer"}


@pytest.fixture(scope="module")
def pair_tokenizer():
    """A WordPiece tokenizer with BERT's templates: [CLS] A [SEP] (B [SEP], type 1)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "my", "new", "samsung", "phone", "someone",
             "the", "cat", "sat", "on", "mat", "a", "dog"]
    tok = Tokenizer(models.WordPiece({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return tok


def test_old_sidecars_read_as_our_own_models():
    old = {"special_tokens": {"eos_id": 1, "pad_id": 0}}
    assert text_rules(old) == OWN_TEXT
    assert prompt_rules(old) == {"prefix_ids": [1], "add_special_tokens": False}
    assert stop_ids(old) == [1]
    assert head_rules(old) == {"problem_type": "single_label_classification", "threshold": 0.5}
    assert stop_ids({**old, "eos_ids": [128001, 128009]}) == [128001, 128009]


@pytest.mark.parametrize("key, value", [
    ("text", {"cleaning": "imdb", "truncation": "middle", "special_tokens": "tokenizer"}),
    ("text", "imdb"),
    ("prompt", {"prefix_ids": [-1], "add_special_tokens": True}),
    ("prompt", {"prefix_ids": []}),
    ("eos_ids", 2),
    ("head", {"problem_type": "ranking"}),
    ("prompt", {"prefix_ids": [True], "add_special_tokens": True}),  # JSON true is no id
    ("eos_ids", [2, False]),
    ("head", {"problem_type": "multi_label_classification", "threshold": True}),
])
def test_bad_text_keys_are_refused_in_one_line(key, value):
    good = {"format": "jetson-toolkit/onnx-sidecar", "version": 1, "kind": "classifier",
            "opset": 17, "inputs": [{"name": "input_ids", "dtype": "int32", "shape": [1]}],
            "outputs": [{"name": "logits", "dtype": "float32", "shape": [1]}],
            "dynamic_axes": {"batch": {"min": 1, "max": 2}, "seq": {"min": 1, "max": 8}},
            "vocab_size": 10, "max_seq_len": 8, "special_tokens": {}, "tokenizer": "t.json",
            "model_config": {}, "checkpoint_sha256": "", "tokenizer_sha256": "",
            "onnx_sha256": "", "labels": ["a", "b"]}
    validate_onnx_sidecar(good, "m.onnx.json")
    with pytest.raises(ToolkitError, match=f"m.onnx.json: {key}") as err:
        validate_onnx_sidecar({**good, key: value}, "m.onnx.json")
    assert "\n" not in str(err.value)


def test_hf_rules_keep_the_text_and_the_tokenizer_specials(pair_tokenizer):
    text = "my new Samsung phone"
    rows, types = encode_for_model(pair_tokenizer, [text], 16, HF_TEXT)
    assert rows == [pair_tokenizer.encode(text).ids] and rows[0][0] == 2 and rows[0][-1] == 3
    own, _ = encode_for_model(pair_tokenizer, [text], 16, OWN_TEXT)
    assert own == [pair_tokenizer.encode("my new someone phone").ids]


@pytest.mark.parametrize("side", ["right", "left"])
def test_truncation_keeps_the_special_tokens_on_the_tokenizer_side(pair_tokenizer, side):
    text = "the cat sat on the mat a dog"
    rows, _ = encode_for_model(pair_tokenizer, [text], 6, {**HF_TEXT, "truncation": side})
    words = pair_tokenizer.encode(text, add_special_tokens=False).ids
    kept = words[:4] if side == "right" else words[-4:]
    assert rows == [[2] + kept + [3]]
    assert pair_tokenizer.truncation is None  # the tokenizer is left as it was


def test_pairs_get_the_tokenizers_separator_and_types(pair_tokenizer):
    rows, types = encode_for_model(pair_tokenizer, ["the cat", "a dog"], 32, HF_TEXT,
                                   pairs=["sat on the mat", "the cat"])
    want = pair_tokenizer.encode("the cat", "sat on the mat")
    assert rows[0] == want.ids and types[0] == want.type_ids
    assert types[0] == [0, 0, 0, 0, 1, 1, 1, 1, 1]
    long_pair, _ = encode_for_model(pair_tokenizer, ["the cat sat on the mat"], 8, HF_TEXT,
                                    pairs=["a dog sat on the mat"])
    assert len(long_pair[0]) == 8 and long_pair[0].count(3) == 2  # longest_first, both [SEP]
    with pytest.raises(ToolkitError, match="single texts, not sentence pairs"):
        encode_for_model(pair_tokenizer, ["a"], 8, OWN_TEXT, pairs=["b"])


def test_stop_conditions_take_a_list():
    from runtime.sampling import StopConditions

    stop = StopConditions([5, 9], max_new_tokens=10, context_limit=20)
    assert stop.reason(9, 1, 2) == "eos" and stop.reason(5, 1, 2) == "eos"
    assert stop.reason(np.int32(9), 1, 2) == "eos" and stop.reason(7, 1, 2) is None
    assert StopConditions(None, 10, 20).reason(5, 1, 2) is None
    assert StopConditions(np.int64(5), 10, 20).reason(5, 1, 2) == "eos"


def test_decoder_info_reads_the_prompt_and_eos_keys():
    from runtime.generate import DecoderInfo

    old = {"kind": "decoder", "kv_cache": {"layers": 1, "kv_dim": 4}, "vocab_size": 10,
           "max_seq_len": 8, "topk": 2, "special_tokens": {"eos_id": 1, "pad_id": 0}}
    info = DecoderInfo.from_sidecar(old)
    assert (info.eos_id, info.stop_ids, info.prompt_prefix, info.prompt_special) == \
        (1, (1,), (1,), False)
    hf = DecoderInfo.from_sidecar({**old, "eos_ids": [7, 9], "prompt": {
        "prefix_ids": [], "add_special_tokens": True}})
    assert (hf.eos_id, hf.stop_ids, hf.prompt_prefix, hf.prompt_special) == \
        (7, (7, 9), (), True)
    import dataclasses

    assert dataclasses.replace(hf, eos_id=None).stop_ids == ()
    assert dataclasses.replace(hf, eos_id=3).stop_ids == (3,)


def test_runtime_heads():
    from runtime.classify import predictions, sigmoid

    logits = np.array([[0.0, 2.0, -2.0], [3.0, 1.0, 0.5]], np.float32)  # (2, 3)
    multi = predictions(logits, ["a", "b", "c"],
                        {"problem_type": "multi_label_classification", "threshold": 0.5})
    assert multi[0].labels == ["b"] and multi[1].labels == ["a", "b", "c"]
    assert multi[0].probabilities["a"] == pytest.approx(0.5)
    assert list(multi[0].probabilities.values()) == pytest.approx(1 / (1 + np.exp(-logits[0])))
    assert sigmoid(np.array([[-1000.0, 1000.0]]))[0].tolist() == [0.0, 1.0]  # no overflow
    single = predictions(logits, ["a", "b", "c"], head_rules({}))
    assert single[1].label == "a" and sum(single[1].probabilities.values()) == pytest.approx(1)
    score = predictions(np.array([[1.25], [-3.5]], np.float32), ["LABEL_0"],
                        {"problem_type": "regression", "threshold": 0.5})
    assert [p.score for p in score] == [1.25, -3.5]


def test_triton_postprocess_heads():
    from triton_repo.models.imdb_postprocess import Postprocessor

    logits = np.array([[0.0, 2.0, -2.0]], np.float32)  # (1, 3)
    multi = Postprocessor.from_parameters({"labels": '["a", "b", "c"]', "head": (
        '{"problem_type": "multi_label_classification", "threshold": 0.5}')})(logits)
    assert multi["LABEL"].tolist() == [[b"b"]]
    assert multi["PROBABILITIES"][0] == pytest.approx(1 / (1 + np.exp(-logits[0])), abs=1e-6)
    regression = Postprocessor(["score"], {"problem_type": "regression"})
    out = regression(np.array([[1.5], [-2.0]], np.float32))
    assert out["PROBABILITIES"].ravel().tolist() == [1.5, -2.0]
    with pytest.raises(ToolkitError, match="regression head needs one"):
        Postprocessor(["a", "b"], {"problem_type": "regression"})
    assert Postprocessor(["neg", "pos"])(np.array([[0.0, 1.0]], np.float32))["LABEL"].tolist() \
        == [[b"pos"]]


def test_triton_tokenizer_follows_the_text_rules(pair_tokenizer, tmp_path):
    from triton_repo.models.imdb_tokenizer import TextEncoder

    pair_tokenizer.save(str(tmp_path / "tok.json"))
    params = {"tokenizer": "tok.json", "max_len": "16", "pad_id": "0", "length_buckets": "16"}
    own = TextEncoder.from_parameters(params, str(tmp_path))
    hf = TextEncoder.from_parameters({**params, "text": '{"cleaning": "none", "truncation": '
                                      '"right", "special_tokens": "tokenizer"}'}, str(tmp_path))
    text = "my new Samsung phone"
    assert hf.encode([text]) == [pair_tokenizer.encode(text).ids]
    assert own.encode([text]) == [pair_tokenizer.encode("my new someone phone").ids]
    with pytest.raises(ToolkitError, match="text rules"):
        TextEncoder.from_parameters({**params, "text": '{"cleaning": "some"}'}, str(tmp_path))


def test_accuracy_refuses_a_regression_head():
    """One check (common.artifacts) for the gate and the benchmarks' accuracy."""
    from common.artifacts import check_class_head

    check_class_head({})
    check_class_head({"head": {"problem_type": "multi_label_classification"}})
    with pytest.raises(ToolkitError, match="regression head"):
        check_class_head({"head": {"problem_type": "regression", "threshold": 0.5}})


def test_single_text_data_refuses_a_pair_model():
    from common.artifacts import check_single_text_inputs

    names = ["input_ids", "attention_mask"]
    check_single_text_inputs({"inputs": [{"name": n} for n in names]}, "calibration")
    with pytest.raises(ToolkitError, match="calibration: the model reads sentence pairs"):
        check_single_text_inputs({"inputs": [{"name": n} for n in names + ["token_type_ids"]]},
                                 "calibration")
