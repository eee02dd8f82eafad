"""Every bad request gets an error response from the real server, which stays healthy after.

After each refusal the server must answer a health check and serve a good request through the
same model (so the stub neither died nor hung); a stream must end with the error, never hang.
"""
from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.triton

GOOD_TEXT = "a great film"
# longer than any context here, in any of our tokenizers (4,400 words)
LONG_PROMPT = " ".join(["the little girl played in the sun with the happy dog"] * 400)


def strings(values, shape=None):
    array = np.array(values, dtype=np.object_)
    return array.reshape(shape) if shape else array


# name -> list of (input name, array, Triton datatype), parameters
CLASSIFY_BAD = {
    "missing input": ([], None),
    "extra input": ([("TEXT", strings([[b"good"]]), "BYTES"),
                     ("EXTRA", strings([[b"x"]]), "BYTES")], None),
    "wrong input name": ([("REVIEW", strings([[b"good"]]), "BYTES")], None),
    "wrong dtype": ([("TEXT", np.array([[1]], np.int32), "INT32")], None),
    "wrong shape": ([("TEXT", strings([[b"a", b"b"]]), "BYTES")], None),
    "empty text": ([("TEXT", strings([[b""]]), "BYTES")], None),
    "blank text in a batch": ([("TEXT", strings([[b"good"], [b"   "]]), "BYTES")], None),
    "invalid utf-8": ([("TEXT", strings([[b"caf\xe9 \xff\xfe"]]), "BYTES")], None),
    "batch above the profile": ([("TEXT", strings([[b"good"]] * 9), "BYTES")], None),
    "unknown parameter": ([("TEXT", strings([[b"good"]]), "BYTES")], {"temperature": 2}),
}

GENERATE_BAD = {
    "missing prompt": ([("MAX_NEW_TOKENS", np.array([5], np.int32), "INT32")], None),
    "extra input": ([("PROMPT", strings([b"once"]), "BYTES"),
                     ("EXTRA", np.array([1], np.int32), "INT32")], None),
    "wrong prompt dtype": ([("PROMPT", np.array([1], np.int32), "INT32")], None),
    "wrong max_new_tokens dtype": ([("PROMPT", strings([b"once"]), "BYTES"),
                                    ("MAX_NEW_TOKENS", np.array([5.0], np.float32), "FP32")],
                                   None),
    "two prompts": ([("PROMPT", strings([b"once", b"twice"]), "BYTES")], None),
    "empty prompt": ([("PROMPT", strings([b""]), "BYTES")], None),
    "blank prompt": ([("PROMPT", strings([b"  \n "]), "BYTES")], None),
    "invalid utf-8": ([("PROMPT", strings([b"\xc3\x28 once"]), "BYTES")], None),
    "prompt longer than the context": ([("PROMPT", strings([LONG_PROMPT.encode()]), "BYTES")],
                                       None),
    "negative max_new_tokens": ([("PROMPT", strings([b"once"]), "BYTES"),
                                 ("MAX_NEW_TOKENS", np.array([-1], np.int32), "INT32")], None),
    "huge max_new_tokens": ([("PROMPT", strings([b"once"]), "BYTES"),
                             ("MAX_NEW_TOKENS", np.array([2**31 - 1], np.int32), "INT32")],
                            None),
    "negative temperature": ([("PROMPT", strings([b"once"]), "BYTES"),
                              ("TEMPERATURE", np.array([-0.5], np.float32), "FP32")], None),
    "nan temperature": ([("PROMPT", strings([b"once"]), "BYTES"),
                         ("TEMPERATURE", np.array([np.nan], np.float32), "FP32")], None),
    "negative top_k": ([("PROMPT", strings([b"once"]), "BYTES"),
                        ("TOP_K", np.array([-3], np.int32), "INT32")], None),
    "top_p above 1": ([("PROMPT", strings([b"once"]), "BYTES"),
                       ("TOP_P", np.array([1.5], np.float32), "FP32")], None),
    "negative seed": ([("PROMPT", strings([b"once"]), "BYTES"),
                       ("SEED", np.array([-1], np.int64), "INT64")], None),
    "unknown parameter": ([("PROMPT", strings([b"once"]), "BYTES")], {"max_tokens": 5}),
}


def make_inputs(protocol, spec):
    from triton_repo.client import make_input

    return [make_input(protocol, name, array, datatype) for name, array, datatype in spec]


def assert_classifier_healthy(triton_server, protocol):
    from triton_repo.client import classify, connect

    url = triton_server.http_url if protocol == "http" else triton_server.grpc_url
    client = connect(url, protocol)
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("imdb")
    finally:
        client.close()
    (prediction,) = classify(url, [GOOD_TEXT], protocol)
    assert prediction.probabilities.shape == (2,)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("case", sorted(CLASSIFY_BAD))
def test_bad_classify_request_gets_an_error(triton_server, protocol, case):
    from tritonclient.utils import InferenceServerException

    from triton_repo.client import connect

    spec, parameters = CLASSIFY_BAD[case]
    url = triton_server.http_url if protocol == "http" else triton_server.grpc_url
    client = connect(url, protocol)
    try:
        with pytest.raises(InferenceServerException) as caught:
            client.infer("imdb", make_inputs(protocol, spec), parameters=parameters)
    finally:
        client.close()
    message = caught.value.message()
    assert message and "\n" not in message.strip(), message
    assert "Traceback" not in message
    assert_classifier_healthy(triton_server, protocol)


def test_classify_errors_name_the_problem(triton_server):
    """The model's own refusals say what was wrong (Triton's core ones are tested above)."""
    from tritonclient.utils import InferenceServerException

    from triton_repo.client import connect

    expectations = {"empty text": "empty", "invalid utf-8": "UTF-8",
                    "batch above the profile": "batch", "unknown parameter": "temperature"}
    client = connect(triton_server.http_url, "http")
    try:
        for case, needle in expectations.items():
            spec, parameters = CLASSIFY_BAD[case]
            with pytest.raises(InferenceServerException) as caught:
                client.infer("imdb", make_inputs("http", spec), parameters=parameters)
            assert needle.lower() in caught.value.message().lower(), (case, caught.value)
    finally:
        client.close()


def assert_generator_healthy(triton_server):
    from triton_repo.client import connect, generate

    client = connect(triton_server.grpc_url, "grpc")
    try:
        assert client.is_server_ready() and client.is_model_ready("tinystories_generate")
    finally:
        client.close()
    events = list(generate(triton_server.grpc_url, "once upon a time", max_new_tokens=3))
    assert [e.token_id is not None for e in events] == [True, True, True, False]
    assert events[-1].stop_reason == "max_new_tokens"


@pytest.mark.parametrize("case", sorted(GENERATE_BAD))
def test_bad_generate_request_ends_the_stream_with_an_error(triton_server, case):
    from common.errors import ToolkitError
    from triton_repo.client import stream_request

    spec, parameters = GENERATE_BAD[case]
    events = []
    with pytest.raises(ToolkitError) as caught:
        for event in stream_request(triton_server.grpc_url, make_inputs("grpc", spec),
                                    parameters=parameters, timeout_s=30):
            events.append(event)
    assert "no response for" not in str(caught.value), "the stream hung"
    assert events == [], "no token may be streamed for a refused request"
    assert "Traceback" not in str(caught.value)
    assert_generator_healthy(triton_server)


def test_generate_errors_name_the_problem(triton_server):
    from common.errors import ToolkitError
    from triton_repo.client import stream_request

    expectations = {"negative max_new_tokens": "MAX_NEW_TOKENS=-1",
                    "huge max_new_tokens": "MAX_NEW_TOKENS=2147483647",
                    "prompt longer than the context": "tokens", "empty prompt": "empty",
                    "invalid utf-8": "UTF-8", "unknown parameter": "max_tokens",
                    "top_p above 1": "TOP_P"}
    for case, needle in expectations.items():
        spec, parameters = GENERATE_BAD[case]
        with pytest.raises(ToolkitError) as caught:
            list(stream_request(triton_server.grpc_url, make_inputs("grpc", spec),
                                parameters=parameters, timeout_s=30))
        assert needle.lower() in str(caught.value).lower(), (case, str(caught.value))


def test_missing_model_and_down_server_are_one_line_errors(triton_server):
    from triton_harness import free_ports

    from common.errors import ToolkitError
    from triton_repo.client import ClassifierClient, generate, wait_until_ready

    with pytest.raises(ToolkitError, match="model 'nope' is not loaded"):
        ClassifierClient(triton_server.http_url, "http", model="nope")
    with pytest.raises(ToolkitError, match="model 'nope' is not loaded"):
        list(generate(triton_server.grpc_url, "once", model="nope"))
    (port,) = free_ports(1)
    for protocol in ("http", "grpc"):
        with pytest.raises(ToolkitError, match="does not answer") as caught:
            ClassifierClient(f"127.0.0.1:{port}", protocol)
        assert "\n" not in str(caught.value)
        with pytest.raises(ToolkitError, match="not ready after 0.5 s"):
            wait_until_ready(f"127.0.0.1:{port}", protocol, timeout_s=0.5)
    wait_until_ready(triton_server.grpc_url, "grpc", ["imdb", "tinystories_generate"], 10)
