"""tinystories_generate streamed over gRPC by a real tritonserver, against runtime.generate."""
from __future__ import annotations

import threading

import pytest
from triton_harness import DECODER_ONNX, USING_FIXTURES

pytestmark = pytest.mark.triton

PROMPTS = ["the cat sat on", "dog ran happy", "Once upon a time"]


@pytest.fixture(scope="module")
def reference():
    """reference(prompt, max_new_tokens, temperature, top_k, top_p, seed) ->
    (token ids, text pieces, stop reason) from runtime.generate on the same ONNX."""
    from runtime.generate import Generator, open_decoder
    from runtime.sampling import Sampler
    from runtime.session import open_session

    info, tokenizer = open_decoder(str(DECODER_ONNX))
    session = open_session(str(DECODER_ONNX))
    generator = Generator(session, tokenizer, info, max_batch=1)

    def run(prompt, max_new_tokens, temperature=0.0, top_k=0, top_p=1.0, seed=0):
        pieces = []
        result = generator.generate([prompt], max_new_tokens,
                                    Sampler(temperature, top_k, top_p, seed),
                                    lambda row, token, piece: pieces.append(piece))
        return result.tokens[0], pieces, result.stop_reasons[0]

    yield run
    generator.close()
    session.close()


def served(url, prompt, **options):
    from triton_repo.client import generate

    events = list(generate(url, prompt, **options))
    assert events and events[-1].final, "the stream must end with a final response"
    assert all(not e.final for e in events[:-1])
    assert events[-1].token_id is None and events[-1].text == ""
    body = events[:-1]
    return [e.token_id for e in body], [e.text for e in body], events[-1].stop_reason


@pytest.mark.parametrize("prompt", PROMPTS)
def test_100_greedy_tokens_equal_runtime(triton_server, reference, prompt):
    tokens, pieces, reason = served(triton_server.grpc_url, prompt, max_new_tokens=100)
    want_tokens, want_pieces, want_reason = reference(prompt, 100)
    if USING_FIXTURES:  # the tiny decoder never ends a greedy story: all 100 tokens compared
        assert len(want_tokens) == 100 and want_reason == "max_new_tokens"
    assert tokens == want_tokens
    assert pieces == want_pieces
    assert reason == want_reason


@pytest.mark.parametrize("options", [dict(temperature=1.0, top_k=40, seed=7),
                                     dict(temperature=0.8, top_p=0.9, seed=3),
                                     dict(temperature=1.5, top_k=5, top_p=0.5, seed=11)])
def test_seeded_sampling_equals_runtime(triton_server, reference, options):
    # Greedy on a random model repeats one token; sampling makes the comparison bite.
    tokens, _, reason = served(triton_server.grpc_url, "Once upon a time", max_new_tokens=100,
                               **options)
    want_tokens, _, want_reason = reference("Once upon a time", 100, **options)
    assert len(set(want_tokens)) > 5
    assert tokens == want_tokens and reason == want_reason


@pytest.mark.skipif(not USING_FIXTURES, reason="counts tokens of the tiny fixture's context")
def test_default_and_context_stops(triton_server, reference):
    tokens, _, reason = served(triton_server.grpc_url, "the sun")  # server default: 64 tokens
    assert len(tokens) == 64 and reason == "max_new_tokens"
    # the 192-position context ends the stream before 192 new tokens (greedy: no eos here)
    tokens, _, reason = served(triton_server.grpc_url, "the sun", max_new_tokens=192)
    want_tokens, _, want_reason = reference("the sun", 192)
    assert reason == want_reason == "context"
    assert tokens == want_tokens and 150 < len(tokens) < 192
    tokens, _, reason = served(triton_server.grpc_url, "the sun", max_new_tokens=0)
    assert tokens == [] and reason == "max_new_tokens"


def test_two_concurrent_streams_each_equal_runtime(triton_server, reference):
    """Two streams at once (one model instance: the second waits its turn in Triton's queue):
    both complete, each exactly as it would alone."""
    results = {}

    def stream(prompt):
        results[prompt] = served(triton_server.grpc_url, prompt, max_new_tokens=100,
                                 temperature=1.0, top_k=40, seed=1)

    threads = [threading.Thread(target=stream, args=(p,)) for p in PROMPTS[:2]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    for prompt in PROMPTS[:2]:
        want_tokens, _, want_reason = reference(prompt, 100, temperature=1.0, top_k=40, seed=1)
        assert results[prompt][0] == want_tokens
        assert results[prompt][2] == want_reason


def test_client_cli_streams(triton_server, reference):
    import subprocess
    import sys

    from triton_harness import ROOT

    result = subprocess.run([sys.executable, "-m", "triton_repo.client", "generate", "--url",
                             triton_server.grpc_url, "--prompt", "dog ran happy",
                             "--max-new-tokens", "20"], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    _, pieces, _ = reference("dog ran happy", 20)
    assert result.stdout == "dog ran happy" + "".join(pieces) + "\n"
    assert "[20 tokens in" in result.stderr and "stop: max_new_tokens" in result.stderr


def test_abandoned_stream_is_cancelled_and_the_next_one_is_served(triton_server, reference):
    from triton_repo.client import generate

    for _ in range(2):
        stream = generate(triton_server.grpc_url, "Once upon a time", max_new_tokens=180)
        first = [next(stream), next(stream)]
        assert all(e.token_id is not None for e in first)
        stream.close()  # the client cancels the request on the server
    tokens, _, reason = served(triton_server.grpc_url, "dog ran happy", max_new_tokens=30)
    want_tokens, _, want_reason = reference("dog ran happy", 30)
    assert tokens == want_tokens and reason == want_reason


def test_a_burst_beyond_the_queue_is_refused_at_once(triton_server):
    """One instance, a queue of 4 (the builder's defaults): of 12 streams sent together, those
    beyond the queue (and the running one, once the instance has taken it) get UNAVAILABLE
    "Exceeds maximum queue size" at once instead of waiting; every accepted stream ends whole."""
    import queue
    import time

    import numpy as np
    import tritonclient.grpc as grpcclient

    from triton_repo.configs import DEFAULT_GENERATOR_QUEUE

    def inputs():
        prompt = grpcclient.InferInput("PROMPT", [1], "BYTES")
        prompt.set_data_from_numpy(np.array([b"Once upon a time"], dtype=object))
        count = grpcclient.InferInput("MAX_NEW_TOKENS", [1], "INT32")
        count.set_data_from_numpy(np.array([150], np.int32))
        return [prompt, count]

    events: queue.Queue = queue.Queue()
    clients = []
    burst = DEFAULT_GENERATOR_QUEUE + 8  # well past the queue, so a slow send still overflows it
    for index in range(burst):
        client = grpcclient.InferenceServerClient(triton_server.grpc_url)
        assert client.is_server_live()  # connect now: a lazy connect per send spreads the burst
        client.start_stream(callback=lambda result, error, i=index: events.put(
            (i, time.monotonic(), result, error)))
        clients.append(client)
    sent = time.monotonic()
    for index, client in enumerate(clients):
        client.async_stream_infer("tinystories_generate", inputs(), request_id=str(index))
    tokens = {i: 0 for i in range(burst)}
    ended, refused = set(), {}
    while len(ended) + len(refused) < burst:
        index, at, result, error = events.get(timeout=120)
        if error is not None:
            refused[index] = (at - sent, str(error))
            continue
        ids = result.as_numpy("TOKEN_ID")
        if ids.size:
            tokens[index] += 1
        elif result.as_numpy("STOP_REASON")[0]:
            ended.add(index)
    for client in clients:
        client.stop_stream()
        client.close()
    assert refused, "no stream was refused: the queue is unbounded"
    # The queue holds DEFAULT_GENERATOR_QUEUE streams; the running one is taken out of it only
    # once the instance picks it up, so a burst may see 4 or 5 accepted (seen in CI: 4).
    assert len(ended) >= DEFAULT_GENERATOR_QUEUE
    for seconds, message in refused.values():
        assert "Exceeds maximum queue size" in message
        assert seconds < 2.0, f"refused after {seconds:.2f} s"
    assert all(tokens[i] == 150 for i in ended)
