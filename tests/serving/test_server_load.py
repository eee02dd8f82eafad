"""The bounded loopback load test, short: 8 classify clients and 2 streams at once, no failure.

The 20 s figures are measured by ``python -m benchmarks.triton_load`` (same code, longer).
"""
from __future__ import annotations

import os

import pytest
from triton_harness import USING_FIXTURES, extra_reviews

pytestmark = pytest.mark.triton

DURATION_S = float(os.environ.get("TRITON_LOAD_SECONDS", "5"))


def test_load_has_no_failed_request(triton_server):
    from benchmarks.triton_load import run_load, summary_lines

    report = run_load(triton_server.http_url, triton_server.grpc_url, clients=8, streams=2,
                      duration_s=DURATION_S, server_pid=triton_server.pid, max_new_tokens=48,
                      texts=extra_reviews() or None)
    print("\n".join(summary_lines(report)))
    classify, generate = report["classify"], report["generate"]
    assert classify["failed"] == 0, classify["failures"]
    assert generate["failed"] == 0, generate["failures"]
    assert classify["requests"] >= 8 * DURATION_S  # >= 1 request/s per client, at the least
    assert generate["streams"] >= 2 and generate["tokens"] >= generate["streams"]
    if USING_FIXTURES:  # the tiny decoder never stops early: every stream ran all 48 tokens
        assert generate["tokens"] == 48 * generate["streams"]
    assert classify["latency"]["p50_ms"] <= classify["latency"]["p99_ms"]
    before, after = report["memory_before"], report["memory_after"]
    # the server plus one python stub per python model instance (4: the ensemble has none)
    assert before["stub_processes"] == after["stub_processes"] >= 4
    assert before["server_rss_mib"] > 10 and after["total_rss_mib"] > 10
    # a bounded run must not grow the server without bound (buffers are allocated once)
    assert after["total_rss_mib"] < before["total_rss_mib"] * 1.5 + 64


def test_load_cli_reports_figures(triton_server, tmp_path):
    import json
    import subprocess
    import sys

    from triton_harness import ROOT

    output = tmp_path / "load.json"
    result = subprocess.run([sys.executable, "-m", "benchmarks.triton_load", "--http-url",
                             triton_server.http_url, "--grpc-url", triton_server.grpc_url,
                             "--protocol", "grpc", "--clients", "2", "--streams", "1",
                             "--duration", "1", "--max-new-tokens", "8", "--server-pid",
                             str(triton_server.pid), "--output", str(output)], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "classify:" in result.stdout and "server memory after:" in result.stdout
    report = json.loads(output.read_text())
    assert report["protocol"] == "grpc" and report["classify"]["failed"] == 0
    assert report["generate"]["streams"] >= 1


def test_load_cli_fails_on_a_down_server():
    import subprocess
    import sys

    from triton_harness import ROOT, free_ports

    port, grpc_port = free_ports(2)
    result = subprocess.run([sys.executable, "-m", "benchmarks.triton_load", "--http-url",
                             f"127.0.0.1:{port}", "--grpc-url", f"127.0.0.1:{grpc_port}",
                             "--duration", "1", "--wait", "1"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith("error: triton at 127.0.0.1:") and "not ready" in result.stderr


def test_requests_are_timed_without_connecting_or_checking(triton_server, monkeypatch):
    """Each worker connects and checks its model once, before the clock: a stream's first token
    is timed from its request, not from a new connection and three model checks."""
    from client_spies import client_classes

    from benchmarks.triton_load import run_load

    checks = []
    for cls in client_classes():
        real = cls.is_model_ready
        monkeypatch.setattr(cls, "is_model_ready",
                            lambda self, *a, _real=real, **k: checks.append(1) or
                            _real(self, *a, **k))
    report = run_load(triton_server.http_url, triton_server.grpc_url, clients=2, streams=2,
                      duration_s=1.5, max_new_tokens=4)
    generate = report["generate"]
    assert generate["failed"] == report["classify"]["failed"] == 0
    assert generate["streams"] >= 8  # many streams per worker ...
    assert len(checks) == 2 + 4  # ... and one check per worker (+ one per wait_until_ready)
    first = generate["first_token"]
    assert first["count"] == generate["streams"]
    assert 0 < first["p50_ms"] < 1000
