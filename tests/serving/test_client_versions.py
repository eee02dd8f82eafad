"""The client reads the server's version once and refuses one below versions.MIN_TRITON; on a
server older than 2.35 it streams without ``enable_empty_final_response`` (2.34 refuses that
reserved ``triton_`` parameter) and ends the stream on the model's own final response.

The real 2.51 server plays the older one through ``report_version``: only the version in its
metadata answer changes, so the stream it serves really arrives without the parameter.
"""
from __future__ import annotations

import json
import urllib.request

import numpy as np
import pytest
from client_spies import client_classes, record_stream_flags, report_version, track_clients

pytestmark = pytest.mark.triton


def test_the_server_version_is_read_once_from_its_metadata(triton_server, monkeypatch):
    from triton_repo.client import ClassifierClient, StreamClient
    from triton_repo.versions import MIN_TRITON, parse_triton_version

    with urllib.request.urlopen(f"http://{triton_server.http_url}/v2", timeout=10) as answer:
        real = parse_triton_version(json.load(answer)["version"])
    assert real >= MIN_TRITON
    with ClassifierClient(triton_server.http_url, "http") as client:
        assert client.server_version == real
        client.classify(["a great film"] * 3)
    calls = []
    _, grpc_cls = client_classes()
    real_metadata = grpc_cls.get_server_metadata
    monkeypatch.setattr(grpc_cls, "get_server_metadata",
                        lambda self, *a, **k: calls.append(1) or real_metadata(self, *a, **k))
    with StreamClient(triton_server.grpc_url) as client:
        assert client.server_version == real and client.final_flag
        for _ in range(2):
            list(client.stream(greedy_inputs(3)))
    assert len(calls) == 1


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_server_below_the_floor_is_refused_in_one_line(triton_server, monkeypatch, protocol):
    from common.errors import ToolkitError
    from triton_repo.client import ClassifierClient, wait_until_ready

    report_version(monkeypatch, "2.33.0")
    made = track_clients(monkeypatch)
    url = triton_server.http_url if protocol == "http" else triton_server.grpc_url
    for attempt in (lambda: ClassifierClient(url, protocol),
                    lambda: wait_until_ready(url, protocol, ["imdb"], timeout_s=10)):
        with pytest.raises(ToolkitError) as caught:
            attempt()
        message = str(caught.value)
        assert "2.33.0" in message and "2.34.0" in message and "below" in message, message
        assert "\n" not in message
    assert made and all(client._test_closed for client in made)


def test_a_stream_is_refused_on_a_server_below_the_floor(triton_server, monkeypatch):
    from common.errors import ToolkitError
    from triton_repo.client import generate

    report_version(monkeypatch, "23.04")  # a release tag reads as its server version, 2.33
    flags = record_stream_flags(monkeypatch)
    with pytest.raises(ToolkitError, match=r"Triton 2\.33\.0 \(23\.04\) is below .*2\.34\.0"):
        list(generate(triton_server.grpc_url, "once", max_new_tokens=3))
    assert flags == [], "nothing may be sent to a server below the floor"


def greedy_inputs(max_new_tokens):
    from triton_repo.client import generation_inputs

    return generation_inputs("Once upon a time", max_new_tokens=max_new_tokens)


def test_a_2_34_server_gets_no_final_response_parameter_and_the_stream_still_ends(
        triton_server, monkeypatch):
    from common.errors import ToolkitError
    from triton_repo.client import StreamClient, make_input

    flags = record_stream_flags(monkeypatch)
    with StreamClient(triton_server.grpc_url) as client:  # the real 2.51 path
        wanted = list(client.stream(greedy_inputs(20)))
    assert flags == [True]
    report_version(monkeypatch, "2.34.0")
    with StreamClient(triton_server.grpc_url, timeout_s=30) as client:
        assert client.server_version == (2, 34, 0) and not client.final_flag
        for _ in range(2):  # the stream ends cleanly: the next one on the connection works
            assert list(client.stream(greedy_inputs(20))) == wanted
        assert wanted[-1].final and wanted[-1].stop_reason == "max_new_tokens"
        assert [e.final for e in wanted] == [False] * 20 + [True]
        # an error response ends the stream too (it would hang until the timeout otherwise)
        bad = greedy_inputs(None) + [
            make_input("grpc", "MAX_NEW_TOKENS", np.array([-1], np.int32), "INT32")]
        with pytest.raises(ToolkitError, match="MAX_NEW_TOKENS=-1") as caught:
            list(client.stream(bad))
        assert "no response for" not in str(caught.value)
        # an abandoned stream is cancelled; the next one is served in full
        stream = client.stream(greedy_inputs(150))
        assert next(stream).token_id is not None
        stream.close()
        assert list(client.stream(greedy_inputs(20))) == wanted
    assert flags[1:] == [False] * 5


def test_ready_cli_names_the_server_version(triton_server):
    import subprocess
    import sys

    from triton_harness import ROOT

    result = subprocess.run([sys.executable, "-m", "triton_repo.client", "ready", "--url",
                             triton_server.grpc_url, "--protocol", "grpc", "--model", "imdb",
                             "--timeout", "10"], cwd=ROOT, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    with urllib.request.urlopen(f"http://{triton_server.http_url}/v2", timeout=10) as answer:
        version = json.load(answer)["version"]  # "2.51.0" from nvidia-pytriton 0.7.0
    assert result.stdout == (f"ready: {triton_server.grpc_url} (grpc), triton {version}, "
                             f"models imdb\n")


def test_sent_at_is_taken_as_the_request_is_sent(triton_server, monkeypatch):
    """StreamClient.sent_at (triton_load's first-token clock) starts after the stream is
    opened, right before the request goes out."""
    import time

    from triton_repo.client import StreamClient

    _, grpc_cls = client_classes()
    marks = {}
    real_start, real_send = grpc_cls.start_stream, grpc_cls.async_stream_infer

    def start_stream(self, *args, **kwargs):
        answer = real_start(self, *args, **kwargs)
        marks["opened"] = time.perf_counter()
        return answer

    def async_stream_infer(self, *args, **kwargs):
        marks["sending"] = time.perf_counter()
        return real_send(self, *args, **kwargs)

    monkeypatch.setattr(grpc_cls, "start_stream", start_stream)
    monkeypatch.setattr(grpc_cls, "async_stream_infer", async_stream_infer)
    with StreamClient(triton_server.grpc_url) as client:
        assert list(client.stream(greedy_inputs(2)))
        assert marks["opened"] <= client.sent_at <= marks["sending"]
