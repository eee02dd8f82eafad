"""The imdb ensemble over HTTP and gRPC, through a real tritonserver, against the runtime."""
from __future__ import annotations

import numpy as np
import pytest
from triton_harness import CLASSIFIER_ONNX, extra_reviews

pytestmark = pytest.mark.triton

# Short and long (truncated at the model's 64 tokens), tags, names, non-ASCII, one word.
TEXTS = [
    "a great film",
    "awful and boring, the worst story",
    "The film was very good.<br /><br />I loved the little girl and the dog.",
    "Yesterday Tom Hanks and Meryl Streep sat on the mat; it was not bad at all",
    " ".join(["the cat sat on the mat and the dog ran happy"] * 20),
    "très bien — ★★★★☆ 映画",
    "sad",
    "the sun played a tree and the boy hated the awful film but loved the story",
    "good " * 63,
    "not a good film, not a bad film",
] + extra_reviews()


@pytest.fixture(scope="module")
def runtime_predictions():
    from runtime.classify import open_classifier

    session, classifier = open_classifier(str(CLASSIFIER_ONNX))
    with session:
        predictions = classifier.classify(TEXTS)
        labels, max_batch = classifier.labels, classifier.max_batch
    return labels, predictions, max_batch


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_ensemble_equals_runtime(triton_server, runtime_predictions, protocol):
    from triton_repo.client import ClassifierClient

    labels, expected, max_batch = runtime_predictions
    url = triton_server.http_url if protocol == "http" else triton_server.grpc_url
    with ClassifierClient(url, protocol) as client:
        assert client.max_batch == max_batch  # the profile's (8 for the tiny fixture)
        batched = client.classify(TEXTS)  # in requests of max_batch rows
        single = [client.classify([text])[0] for text in TEXTS]
    for served in (batched, single):
        assert [p.label for p in served] == [p.label for p in expected]
        got = np.stack([p.probabilities for p in served])  # (texts, labels)
        want = np.array([[p.probabilities[label] for label in labels] for p in expected])
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
        assert got.shape == (len(TEXTS), len(labels))
        np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-6)
    # the tiny random model is near 0.5: make sure the check compares something that varies
    assert np.ptp(want[:, 0]) > 1e-3


def test_http_and_grpc_agree_under_concurrency(triton_server):
    """Requests from several threads are batched together by the server: same answers."""
    from concurrent.futures import ThreadPoolExecutor

    from triton_repo.client import classify

    reference = classify(triton_server.http_url, TEXTS, "http")

    def one(i):
        protocol = "http" if i % 2 else "grpc"
        url = triton_server.http_url if protocol == "http" else triton_server.grpc_url
        return classify(url, [TEXTS[i % len(TEXTS)]], protocol)[0]

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(40)))
    for i, result in enumerate(results):
        want = reference[i % len(TEXTS)]
        assert result.label == want.label
        np.testing.assert_allclose(result.probabilities, want.probabilities, atol=1e-5)


def test_client_cli_classifies(triton_server, runtime_predictions):
    import json
    import subprocess
    import sys

    from triton_harness import ROOT

    result = subprocess.run([sys.executable, "-m", "triton_repo.client", "classify", "--url",
                             triton_server.grpc_url, "--protocol", "grpc", "--json", "--wait",
                             "10", TEXTS[0], TEXTS[1]], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [row["text"] for row in rows] == TEXTS[:2]
    labels, expected, _ = runtime_predictions
    assert [row["label"] for row in rows] == [p.label for p in expected[:2]]
    assert all(len(row["probabilities"]) == len(labels) for row in rows)
