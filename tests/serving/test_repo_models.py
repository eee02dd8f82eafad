"""The python-backend models' logic without a server, against the runtime on the tiny models:
the tokenizer is Classifier.encode plus bucket padding, the ORT classifier gives the runtime's
logits, the postprocess is the runtime's softmax, the generator streams what runtime.generate
returns; every bad request is a one-line ToolkitError; the adapters answer every request."""
from __future__ import annotations

import importlib
import json

import numpy as np
import pytest

pytest.importorskip("tritonclient.grpc.model_config_pb2")
pytest.importorskip("onnxruntime")

from repo_fixtures import (  # noqa: E402
    FakePbUtils,
    FakeRequest,
    FakeSender,
    classifier_onnx,  # noqa: F401  (fixture)
    decoder_onnx,  # noqa: F401  (fixture)
    load_adapter,
)

from common.errors import ToolkitError  # noqa: E402
from runtime.classify import open_classifier, softmax  # noqa: E402
from runtime.generate import Generator, open_decoder  # noqa: E402
from runtime.sampling import Sampler  # noqa: E402
from runtime.session import open_session  # noqa: E402
from triton_repo.build import build_repository  # noqa: E402
from triton_repo.configs import from_text  # noqa: E402
from triton_repo.models import requests  # noqa: E402
from triton_repo.models.imdb_classifier_ort import OrtClassifier, rows_from_padded  # noqa: E402
from triton_repo.models.imdb_postprocess import Postprocessor  # noqa: E402
from triton_repo.models.imdb_tokenizer import TextEncoder, length_buckets  # noqa: E402
from triton_repo.models.tinystories_generate import (  # noqa: E402
    StreamCancelled,
    StreamingGenerator,
)

TEXTS = [
    "A wonderful film.",
    "the cat sat on the mat<br /><br />and was sad",
    "Robert loved it, but Gotham City was awful and not good",
    " ".join(["the dog ran very happy and the film was great"] * 12),  # > 64 tokens: truncated
    "awful",
]


def text_tensor(values):
    array = np.empty((len(values), 1), dtype=object)
    for i, value in enumerate(values):
        array[i, 0] = value if isinstance(value, bytes) else value.encode("utf-8")
    return array


@pytest.fixture(scope="module")
def repo(tmp_path_factory, classifier_onnx, decoder_onnx):  # noqa: F811
    return build_repository("cpu", tmp_path_factory.mktemp("models") / "repo",
                            imdb=classifier_onnx, stories=decoder_onnx)


def params_of(repo, model):
    config = from_text((repo / model / "config.pbtxt").read_text())
    return {key: value.string_value for key, value in config.parameters.items()}


@pytest.fixture(scope="module")
def runtime_classifier(classifier_onnx):  # noqa: F811
    session, classifier = open_classifier(str(classifier_onnx))
    yield classifier
    classifier.close()
    session.close()


@pytest.fixture(scope="module")
def encoder(repo):
    config = from_text((repo / "imdb_tokenizer" / "config.pbtxt").read_text())
    return TextEncoder.from_parameters(params_of(repo, "imdb_tokenizer"),
                                       str(repo / "imdb_tokenizer" / "1"), config.max_batch_size)


# ---------------------------------------------------------------- tokenizer

def test_length_buckets():
    assert length_buckets(1, 512) == [16, 32, 64, 128, 256, 512]
    assert length_buckets(1, 64) == [16, 32, 64]
    assert length_buckets(20, 100) == [32, 64, 100]
    assert length_buckets(1, 8) == [8]
    with pytest.raises(ToolkitError, match="exceeds its longest"):
        length_buckets(65, 64)


def test_tokenizer_equals_the_runtime_encoding(encoder, runtime_classifier):
    assert encoder.encode(TEXTS) == runtime_classifier.encode(TEXTS)
    rows = runtime_classifier.encode(TEXTS)
    assert max(map(len, rows)) == 64  # the long text was truncated to the model's length
    out = encoder.encode_request({"TEXT": text_tensor(TEXTS)}, "{}")
    ids, mask = out["input_ids"], out["attention_mask"]
    assert ids.dtype == mask.dtype == np.int32 and ids.shape == (len(TEXTS), 64)
    for r, row in enumerate(rows):
        assert ids[r, :len(row)].tolist() == row and mask[r].sum() == len(row)
        assert (ids[r, len(row):] == encoder.pad_id).all()


def test_rows_pad_to_the_smallest_bucket_that_holds_them(encoder):
    assert encoder.buckets == [16, 32, 64]
    widths = set()
    for words in range(1, 40, 3):
        text = " ".join(["good film"] * words)
        length = len(encoder.encode([text])[0])
        width = encoder.encode_request({"TEXT": text_tensor([text])})["input_ids"].shape[1]
        assert width == min(b for b in encoder.buckets if b >= length)
        widths.add(width)
    assert widths == {16, 32, 64}


@pytest.mark.parametrize("inputs, parameters, message", [
    ({"TEXT": text_tensor([""])}, None, "row 0 .* is empty once cleaned"),
    ({"TEXT": text_tensor(["good", "  <br /> "])}, None, "row 1 .* is empty once cleaned"),
    ({"TEXT": text_tensor([b"ok \xff\xfe"])}, None, r"row 0: byte 3 \(0xff\) is not UTF-8"),
    ({"TEXT": np.array([[1]], np.int32)}, None, "dtype int32; expected TYPE_STRING"),
    ({"TEXT": text_tensor(["good"]).reshape(1)}, None, r"shape \[1\]; expected \[batch, 1\]"),
    ({}, None, "missing input 'TEXT'"),
    ({"TEXT": text_tensor(["good"]), "EXTRA": text_tensor(["x"])}, None,
     "unexpected input 'EXTRA'"),
    ({"TEXT": text_tensor(["good"])}, {"temperature": 1}, "unknown request parameter"),
    ({"TEXT": text_tensor(["good"] * 9)}, None, "9 texts in one request: .* at most 8"),
])
def test_tokenizer_refuses_bad_requests(encoder, inputs, parameters, message):
    with pytest.raises(ToolkitError, match=message):
        encoder.encode_request(inputs, json.dumps(parameters) if parameters else None)


# ---------------------------------------------------------------- classifier (cpu)

@pytest.fixture(scope="module")
def ort_classifier(repo):
    model = OrtClassifier.open(str(repo / "imdb_classifier" / "1" / "model.onnx"))
    yield model
    model.close()


def test_bucket_padding_does_not_change_the_logits(encoder, runtime_classifier):
    """The mask hides the padding: rows padded to 64 give the logits of rows padded to their
    own length (the runtime's way)."""
    session = runtime_classifier.session
    out = encoder.encode_request({"TEXT": text_tensor(["awful", "a wonderful film"])})
    padded = session.run_simple(out)["logits"]
    own = runtime_classifier.logits_for_rows(runtime_classifier.encode(["awful",
                                                                        "a wonderful film"]))
    assert out["input_ids"].shape[1] == 16
    wide = {k: np.pad(v, ((0, 0), (0, 48))) for k, v in out.items()}  # the 64 bucket
    np.testing.assert_allclose(session.run_simple(wide)["logits"], own, atol=1e-5)
    np.testing.assert_allclose(padded, own, atol=1e-5)


def test_ort_classifier_equals_the_runtime(encoder, ort_classifier, runtime_classifier):
    requests_in = [TEXTS[:2], TEXTS[2:3], TEXTS[3:]]
    rows = [ort_classifier.parse(encoder.encode_request({"TEXT": text_tensor(texts)}))
            for texts in requests_in]
    logits = ort_classifier.logits(rows)
    assert [len(x) for x in logits] == [2, 1, 2]
    expected = runtime_classifier.logits_for_rows(runtime_classifier.encode(TEXTS))
    np.testing.assert_allclose(np.concatenate(logits), expected, atol=1e-5)
    predictions = runtime_classifier.classify(TEXTS)
    probabilities = Postprocessor(["negative", "positive"])(np.concatenate(logits))
    for r, prediction in enumerate(predictions):
        assert probabilities["LABEL"][r, 0].decode() == prediction.label
        np.testing.assert_allclose(probabilities["PROBABILITIES"][r],
                                   [prediction.probabilities[k] for k in ("negative", "positive")],
                                   atol=1e-6)


def test_padded_rows_are_checked():
    ids = np.array([[5, 6, 0, 0]], np.int32)
    mask = np.array([[1, 1, 0, 0]], np.int32)
    assert rows_from_padded(ids, mask, 64, 300) == [[5, 6]]
    with pytest.raises(ToolkitError, match="not right-padded"):
        rows_from_padded(ids, np.array([[1, 0, 1, 0]], np.int32), 64, 300)
    with pytest.raises(ToolkitError, match="other than 0 and 1"):
        rows_from_padded(ids, np.array([[2, 1, 0, 0]], np.int32), 64, 300)
    with pytest.raises(ToolkitError, match=r"outside the vocabulary \[0, 300\)"):
        rows_from_padded(np.array([[5, 300, 0, 0]], np.int32), mask, 64, 300)
    with pytest.raises(ToolkitError, match="sequence length 4: the classifier takes 1..3"):
        rows_from_padded(ids, mask, 3, 300)
    with pytest.raises(ToolkitError, match="dtype int64; expected int32"):
        rows_from_padded(ids.astype(np.int64), mask, 64, 300)
    with pytest.raises(ToolkitError, match="batch of 3 rows: .* at most 2"):
        rows_from_padded(np.repeat(ids, 3, 0), np.repeat(mask, 3, 0), 64, 300, max_batch=2)


# ---------------------------------------------------------------- postprocess

def test_postprocess_is_the_runtime_softmax(repo):
    post = Postprocessor.from_parameters(params_of(repo, "imdb_postprocess"))
    logits = np.array([[0.5, -1.0], [3.0, 3.5], [-20.0, 20.0]], np.float32)
    out = post.postprocess_request({"logits": logits})
    np.testing.assert_array_equal(out["PROBABILITIES"], softmax(logits).astype(np.float32))
    assert [v.decode() for v in out["LABEL"][:, 0]] == ["negative", "positive", "positive"]
    half = post(logits.astype(np.float16))  # an fp16-output engine's logits
    np.testing.assert_allclose(half["PROBABILITIES"], out["PROBABILITIES"], atol=2e-3)
    for bad, message in ((logits[:, :1], r"shape \[3, 1\]; expected \[batch, 2\]"),
                         (np.array([[np.nan, 1]], np.float32), "NaN or infinite"),
                         (logits.astype(np.float64), "dtype float64")):
        with pytest.raises(ToolkitError, match=message):
            post(bad)


def test_postprocess_heads_are_the_runtime_predictions():
    """Multi-label and regression heads: LABEL and PROBABILITIES are runtime.classify's
    predictions (sigmoid over the threshold, all labels; the raw score)."""
    from runtime.classify import predictions

    logits = np.array([[0.5, -1.0, 2.0], [-3.0, -0.2, 0.1]], np.float32)
    labels = ["a", "b", "c"]
    head = {"problem_type": "multi_label_classification", "threshold": 0.5}
    out = Postprocessor(labels, head)(logits)
    want = predictions(logits, labels, head)
    assert [v.decode() for v in out["LABEL"][:, 0]] == [p.label for p in want] == ["a,c", "c"]
    np.testing.assert_array_equal(out["PROBABILITIES"], np.array(
        [list(p.probabilities.values()) for p in want], np.float32))
    score = Postprocessor(["score"], {"problem_type": "regression"})(logits[:, :1])
    assert score["PROBABILITIES"].tolist() == [[0.5], [-3.0]]
    with pytest.raises(ToolkitError, match="needs one"):
        Postprocessor(["x", "y"], {"problem_type": "regression"})


# ---------------------------------------------------------------- generator

@pytest.fixture(scope="module")
def streaming(repo):
    folder = repo / "tinystories_generate" / "1"
    params = params_of(repo, "tinystories_generate")
    model = StreamingGenerator.open(str(folder / params["model"]),
                                    str(folder / params["tokenizer"]))
    yield model
    model.close()


@pytest.fixture(scope="module")
def runtime_generator(decoder_onnx):  # noqa: F811
    info, tokenizer = open_decoder(str(decoder_onnx))
    with open_session(str(decoder_onnx)) as session:
        generator = Generator(session, tokenizer, info, max_batch=1)
        yield generator
        generator.close()


def generate_inputs(prompt="the cat sat", **values):
    dtypes = {"MAX_NEW_TOKENS": np.int32, "TEMPERATURE": np.float32, "TOP_K": np.int32,
              "TOP_P": np.float32, "SEED": np.int64}
    inputs = {"PROMPT": np.array([prompt.encode() if isinstance(prompt, str) else prompt],
                                 dtype=object)}
    for name, value in values.items():
        inputs[name] = np.array([value], dtypes[name])
    return inputs


def stream_all(model, inputs, **kwargs):
    tokens, pieces = [], []
    reason = model.stream(model.parse(inputs),
                          lambda token, piece: (tokens.append(token), pieces.append(piece)),
                          **kwargs)
    return tokens, "".join(pieces), reason


@pytest.mark.parametrize("settings", [
    {"MAX_NEW_TOKENS": 30},
    {"MAX_NEW_TOKENS": 25, "TEMPERATURE": 0.9, "TOP_K": 8, "SEED": 7},
    {"MAX_NEW_TOKENS": 25, "TEMPERATURE": 1.1, "TOP_P": 0.8, "SEED": 3},  # full-logits path
])
def test_stream_equals_runtime_generate(streaming, runtime_generator, settings):
    tokens, text, reason = stream_all(streaming, generate_inputs(**settings))
    sampler = Sampler(settings.get("TEMPERATURE", 0.0), settings.get("TOP_K", 0),
                      settings.get("TOP_P", 1.0), settings.get("SEED", 0))
    expected = runtime_generator.generate(["the cat sat"], settings["MAX_NEW_TOKENS"], sampler)
    assert tokens == expected.tokens[0] and reason == expected.stop_reasons[0]
    assert text == runtime_generator.tokenizer.decode(expected.tokens[0])


def test_stream_stops_at_the_context_and_at_zero_tokens(streaming):
    tokens, _, reason = stream_all(streaming, generate_inputs(MAX_NEW_TOKENS=64))
    prompt = len(streaming.parse(generate_inputs()).prompt_ids)
    assert reason in ("context", "eos")
    if reason == "context":
        assert prompt + len(tokens) == streaming.context_limit == 64
    assert stream_all(streaming, generate_inputs(MAX_NEW_TOKENS=0)) == ([], "", "max_new_tokens")
    assert streaming.parse(generate_inputs()).max_new_tokens == 64  # the default


def test_a_cancelled_stream_stops_and_the_next_one_is_whole(streaming, runtime_generator,
                                                            monkeypatch):
    monkeypatch.setattr(streaming, "cancel_check_tokens", 4)
    monkeypatch.setattr(streaming, "cancel_check_s", float("inf"))
    seen, checks = [], []

    def cancelled():
        checks.append(len(seen))
        return len(seen) >= 3

    with pytest.raises(StreamCancelled):
        streaming.stream(streaming.parse(generate_inputs(MAX_NEW_TOKENS=30)),
                         lambda token, piece: seen.append(token), cancelled)
    # asked before the prefill, then at the 4th token (before sending it)
    assert checks == [0, 3] and len(seen) == 3
    tokens, _, _ = stream_all(streaming, generate_inputs("once upon", MAX_NEW_TOKENS=20))
    expected = runtime_generator.generate(["once upon"], 20, Sampler())
    assert tokens == expected.tokens[0]
    with pytest.raises(StreamCancelled):  # cancelled while queued: no prefill, no token
        streaming.stream(streaming.parse(generate_inputs()), seen.append, lambda: True)
    assert len(seen) == 3


def test_cancellation_is_asked_every_16_tokens_or_20_ms(streaming):
    """is_cancelled() is a round trip to the server: not once per token."""
    assert (streaming.cancel_check_tokens, streaming.cancel_check_s) == (16, 0.020)
    checks = []
    tokens, _, reason = stream_all(streaming, generate_inputs(MAX_NEW_TOKENS=40),
                                   cancelled=lambda: checks.append(1) or False)
    assert 2 <= len(checks) <= 1 + len(tokens) // 2, (len(checks), len(tokens))


def test_a_slow_stream_is_checked_by_time(streaming, monkeypatch):
    ticks = iter(range(0, 10**6, 10))  # each clock reading: 10 s after the last
    monkeypatch.setattr(streaming, "clock", lambda: float(next(ticks)))
    checks = []
    tokens, _, _ = stream_all(streaming, generate_inputs(MAX_NEW_TOKENS=5),
                              cancelled=lambda: checks.append(1) or False)
    assert len(tokens) == 5 and len(checks) == 1 + 5  # each token is 20 ms past the last check


@pytest.mark.parametrize("inputs, message", [
    (generate_inputs(""), "'PROMPT' is empty"),
    (generate_inputs("   "), "'PROMPT' is empty"),
    (generate_inputs(b"the \xc3"), r"byte 4 \(0xc3\) is not UTF-8"),
    (generate_inputs(" ".join(["the cat"] * 40)), r"the prompt is \d+ tokens; this model takes "
                                                  r"at most 63 \(context 64\)"),
    (generate_inputs(MAX_NEW_TOKENS=-1), r"MAX_NEW_TOKENS=-1: expected 0..64"),
    (generate_inputs(MAX_NEW_TOKENS=10**6), r"MAX_NEW_TOKENS=1000000: expected 0..64"),
    (generate_inputs(TEMPERATURE=-0.5), "TEMPERATURE=-0.5"),
    (generate_inputs(TEMPERATURE=float("nan")), "TEMPERATURE=nan"),
    (generate_inputs(TOP_K=-2), "TOP_K=-2"),
    (generate_inputs(TOP_P=0.0), r"TOP_P=0.0: expected a value in \(0, 1\]"),
    (generate_inputs(TOP_P=1.5), "TOP_P=1.5"),
    (generate_inputs(SEED=-1), "SEED=-1: expected >= 0"),
    ({**generate_inputs(), "MAX_NEW_TOKENS": np.array([5], np.int64)},
     "'MAX_NEW_TOKENS' has dtype int64; expected int32"),
    ({**generate_inputs(), "MAX_NEW_TOKENS": np.array([5, 6], np.int32)}, r"shape \[2\]"),
    ({**generate_inputs(), "BEAMS": np.array([2], np.int32)}, "unexpected input 'BEAMS'"),
    ({"MAX_NEW_TOKENS": np.array([5], np.int32)}, "missing input 'PROMPT'"),
    ({"PROMPT": np.array([b"a", b"b"], dtype=object)}, "holds 2 prompts"),
])
def test_generator_refuses_bad_requests(streaming, inputs, message):
    with pytest.raises(ToolkitError, match=message):
        streaming.parse(inputs)


def test_generator_refuses_request_parameters(streaming):
    with pytest.raises(ToolkitError, match="unknown request parameter 'top_k'"):
        streaming.parse(generate_inputs(), json.dumps({"top_k": 5}))
    with pytest.raises(ToolkitError, match="are not JSON"):
        requests.check_parameters("{oops")


# ---------------------------------------------------------------- adapters

def model_module(name):
    return importlib.import_module(f"triton_repo.models.{name}")


def test_generator_adapter_streams_then_ends_every_request(monkeypatch, repo, runtime_generator):
    module = model_module("tinystories_generate")
    adapter = load_adapter(monkeypatch, module,
                           (repo / "tinystories_generate" / "config.pbtxt").read_text(),
                           repo / "tinystories_generate" / "1")
    final = FakePbUtils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
    good = FakeRequest(generate_inputs(MAX_NEW_TOKENS=12))
    bad = FakeRequest(generate_inputs(MAX_NEW_TOKENS=-3))
    unknown = FakeRequest(generate_inputs(), parameters={"stream": True})
    cancelled = FakeRequest(generate_inputs(MAX_NEW_TOKENS=12), sender=FakeSender(cancel_after=2))
    adapter.model.cancel_check_tokens = 1  # ask at every token, so it stops after two
    assert adapter.execute([good, bad, unknown, cancelled]) is None
    *tokens, (end, flags) = good.sender.sent
    assert flags == final and all(f == 0 for _, f in tokens)
    expected = runtime_generator.generate(["the cat sat"], 12, Sampler())
    assert [int(r.outputs["TOKEN_ID"][0]) for r, _ in tokens] == expected.tokens[0]
    assert all(r.outputs["STOP_REASON"][0] == b"" for r, _ in tokens)
    assert end.outputs["TOKEN_ID"].shape == (0,) and end.outputs["TEXT"][0] == b""
    assert end.outputs["STOP_REASON"][0].decode() == expected.stop_reasons[0]
    for request, message in ((bad, "MAX_NEW_TOKENS=-3"), (unknown, "parameter 'stream'")):
        ((response, flags),) = request.sender.sent  # one error, and it ends the stream
        assert flags == final and message in response.error.message
        assert response.error.code == "INVALID_ARG"
    assert len(cancelled.sender.sent) == 3 and cancelled.sender.sent[-1] == (None, final)


@pytest.mark.parametrize("key, value", [("cancel_check_tokens", "0"),
                                        ("cancel_check_ms", "-5"), ("cancel_check_tokens", "x")])
def test_the_cancel_check_parameters_are_positive_whole_numbers(monkeypatch, repo, key, value):
    module = model_module("tinystories_generate")
    config = (repo / "tinystories_generate" / "config.pbtxt").read_text()
    config += f'parameters {{ key: "{key}" value {{ string_value: "{value}" }} }}\n'
    with pytest.raises(FakePbUtils.TritonModelException) as refused:
        load_adapter(monkeypatch, module, config, repo / "tinystories_generate" / "1")
    assert str(refused.value) == (f"model tinystories_generate: config parameter {key!r} is "
                                  f"{value!r}; expected a whole number > 0")
    adapter = load_adapter(monkeypatch, module, config.replace(f'"{value}"', '"7"'),
                           repo / "tinystories_generate" / "1")
    every = (adapter.model.cancel_check_tokens, adapter.model.cancel_check_s)
    assert every == ((7, 0.020) if key == "cancel_check_tokens" else (16, 0.007))

def test_batched_adapters_answer_each_request(monkeypatch, repo):
    tokenizer = load_adapter(monkeypatch, model_module("imdb_tokenizer"),
                             (repo / "imdb_tokenizer" / "config.pbtxt").read_text(),
                             repo / "imdb_tokenizer" / "1")
    good = FakeRequest({"TEXT": text_tensor(["a good film"])})
    bad = FakeRequest({"TEXT": text_tensor([b"\xff"])})
    out_good, out_bad = tokenizer.execute([good, bad])
    assert out_good.error is None and out_good.outputs["input_ids"].shape == (1, 16)
    assert "not UTF-8" in out_bad.error.message and out_bad.error.code == "INVALID_ARG"

    classifier = load_adapter(monkeypatch, model_module("imdb_classifier_ort"),
                              (repo / "imdb_classifier" / "config.pbtxt").read_text(),
                              repo / "imdb_classifier" / "1")
    ids = out_good.outputs
    bad_mask = {"input_ids": ids["input_ids"], "attention_mask": ids["attention_mask"] * 2}
    first, second, third = classifier.execute([FakeRequest(ids), FakeRequest(bad_mask),
                                               FakeRequest(ids)])
    assert first.error is None and first.outputs["logits"].shape == (1, 2)
    np.testing.assert_array_equal(first.outputs["logits"], third.outputs["logits"])
    assert "other than 0 and 1" in second.error.message
    classifier.finalize()

    post = load_adapter(monkeypatch, model_module("imdb_postprocess"),
                        (repo / "imdb_postprocess" / "config.pbtxt").read_text(),
                        repo / "imdb_postprocess" / "1")
    (response,) = post.execute([FakeRequest({"logits": first.outputs["logits"]})])
    assert response.outputs["LABEL"].shape == (1, 1)
    np.testing.assert_allclose(response.outputs["PROBABILITIES"].sum(), 1.0, rtol=1e-6)


def test_a_server_without_is_cancelled_streams_to_the_end(monkeypatch, repo, runtime_generator):
    """Triton < 2.39: the response sender has no is_cancelled(); the stream runs to its end."""
    module = model_module("tinystories_generate")
    adapter = load_adapter(monkeypatch, module,
                           (repo / "tinystories_generate" / "config.pbtxt").read_text(),
                           repo / "tinystories_generate" / "1")

    class OldSender(FakeSender):
        is_cancelled = None  # (as if absent: the adapter looks it up with getattr)

    old = FakeRequest(generate_inputs(MAX_NEW_TOKENS=12), sender=OldSender())
    adapter.model.cancel_check_tokens = 1
    assert adapter.execute([old]) is None
    *tokens, (end, flags) = old.sender.sent
    expected = runtime_generator.generate(["the cat sat"], 12, Sampler())
    assert [int(r.outputs["TOKEN_ID"][0]) for r, _ in tokens] == expected.tokens[0]
    assert flags == FakePbUtils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
