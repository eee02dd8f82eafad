"""Every client call has a timeout: a server that accepts the connection and never answers (a
plain listening socket here; a stalled or wedged tritonserver looks the same to a client) fails
each call within about the timeout with one line, instead of hanging the caller or the load
test's threads. Without a deadline a gRPC call waits ~20 s per connection attempt (the HTTP/2
handshake timeout) and a stalled call on an open connection forever. No tritonserver is needed,
except for the last test (the inference call's own deadline, on the real server)."""
from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time

import pytest

LIMIT_S = 8.0  # for a 1 s timeout, on a busy 2-core machine; a hang would take 20 s or more


@pytest.fixture
def stalled_url():
    """host:port of a socket that accepts every connection and never sends a byte."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    server.settimeout(0.1)
    held, stop = [], threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except socket.timeout:
                continue
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join(5)
    for connection in held:
        connection.close()
    server.close()


def fails_within(call, limit_s: float = LIMIT_S) -> BaseException:
    """Run ``call`` in a thread: it must raise within ``limit_s``; return what it raised."""
    outcome = {}

    def run() -> None:
        try:
            call()
            outcome["error"] = AssertionError("the call returned instead of failing")
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(limit_s)
    assert not thread.is_alive(), f"still waiting after {limit_s:g} s: the call hangs"
    return outcome["error"]


def assert_one_line(error: BaseException, *needles: str) -> None:
    from common.errors import ToolkitError

    assert isinstance(error, ToolkitError), repr(error)
    assert "\n" not in str(error)
    for needle in needles:
        assert needle in str(error), str(error)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_connecting_to_a_stalled_server_fails_within_the_timeout(stalled_url, protocol):
    from triton_repo.client import ClassifierClient, StreamClient, generate, wait_until_ready

    assert_one_line(fails_within(lambda: ClassifierClient(stalled_url, protocol, timeout_s=1)),
                    f"triton at {stalled_url} ({protocol}) does not answer")
    assert_one_line(fails_within(lambda: wait_until_ready(stalled_url, protocol, timeout_s=1)),
                    "not ready after 1 s")
    if protocol == "grpc":
        assert_one_line(fails_within(lambda: StreamClient(stalled_url, timeout_s=1)),
                        "does not answer")
        assert_one_line(fails_within(lambda: list(generate(stalled_url, "once", timeout_s=1))),
                        "does not answer")


def test_the_load_test_fails_on_a_stalled_server(stalled_url):
    from benchmarks.triton_load import run_load

    error = fails_within(lambda: run_load(stalled_url, stalled_url, clients=2, streams=1,
                                          duration_s=1, protocol="grpc", wait_s=1, timeout_s=1))
    assert_one_line(error, "not ready after 1 s")


def test_the_load_cli_exits_in_one_line_on_a_stalled_server(stalled_url):
    from triton_harness import ROOT

    start = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "benchmarks.triton_load", "--http-url",
                             stalled_url, "--grpc-url", stalled_url, "--streams", "1",
                             "--duration", "1", "--wait", "1", "--timeout", "1"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: triton at {stalled_url}")
    assert len(result.stderr.strip().splitlines()) == 1
    assert time.monotonic() - start < 30  # interpreter start and imports included


@pytest.mark.triton
def test_an_inference_call_carries_its_deadline(triton_server):
    """On the real server: a classify call given no time fails as a deadline, in one line."""
    from triton_repo.client import ClassifierClient

    with ClassifierClient(triton_server.grpc_url, "grpc") as client:
        client.classify(["a great film"])
        client.timeout_s = 1e-6
        assert_one_line(fails_within(lambda: client.classify(["a great film"])),
                        f"triton at {triton_server.grpc_url}: imdb:", "Deadline")
