"""Every connection the client opens is closed: after a failed check (a missing model) as after
a good request, on the real server. ``track_clients`` keeps each tritonclient client alive, so
one left open would stay open (no garbage collector closes it behind the test's back)."""
from __future__ import annotations

import pytest
from client_spies import track_clients

pytestmark = pytest.mark.triton


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_missing_model_closes_the_connection(triton_server, monkeypatch, protocol):
    from common.errors import ToolkitError
    from triton_repo.client import ClassifierClient, classify

    made = track_clients(monkeypatch)
    url = triton_server.http_url if protocol == "http" else triton_server.grpc_url
    with pytest.raises(ToolkitError, match="model 'nope' is not loaded"):
        ClassifierClient(url, protocol, model="nope")
    with pytest.raises(ToolkitError, match="model 'nope' is not loaded"):
        classify(url, ["a film"], protocol, model="nope")
    assert len(made) == 2
    assert [client._test_closed for client in made] == [True, True]


def test_a_missing_generator_closes_the_connection(triton_server, monkeypatch):
    from common.errors import ToolkitError
    from triton_repo.client import StreamClient, generate

    made = track_clients(monkeypatch)
    with pytest.raises(ToolkitError, match="model 'nope' is not loaded"):
        list(generate(triton_server.grpc_url, "once", model="nope"))
    with pytest.raises(ToolkitError, match="model 'nope' is not loaded"):
        StreamClient(triton_server.grpc_url, model="nope")
    assert len(made) == 2
    assert [client._test_closed for client in made] == [True, True]


def test_good_requests_and_a_load_run_close_every_connection(triton_server, monkeypatch):
    from benchmarks.triton_load import run_load
    from triton_repo.client import classify, generate, wait_until_ready

    made = track_clients(monkeypatch)
    wait_until_ready(triton_server.grpc_url, "grpc", ["imdb"], 10)
    classify(triton_server.http_url, ["a great film"], "http")
    events = generate(triton_server.grpc_url, "once", max_new_tokens=50)
    next(events)
    events.close()  # an abandoned stream
    report = run_load(triton_server.http_url, triton_server.grpc_url, clients=2, streams=1,
                      duration_s=0.5, max_new_tokens=4)
    assert report["classify"]["failed"] == report["generate"]["failed"] == 0
    # 1 wait + 1 classify + 1 stream + (2 waits + 3 workers) in the load run
    assert len(made) == 8
    assert all(client._test_closed for client in made)
