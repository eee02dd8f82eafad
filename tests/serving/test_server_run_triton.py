"""jetson/run_triton.sh against the real bundled tritonserver, on a one-model repository."""
from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from triton_harness import (
    RUN_TRITON,
    alive,
    free_ports,
    server_env,
    write_echo_repository,
    write_fake_docker,
)

# 127.0.0.1 as /proc/net/tcp writes it, and as ::ffff:127.0.0.1 (gRPC binds a v4-mapped socket)
LOOPBACK = {"0100007F", "0000000000000000FFFF00000100007F"}


def run_script(*args, env=None, timeout=60):
    return subprocess.run([str(RUN_TRITON), *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def listening_addresses(port: int):
    """Local addresses of the TCP sockets listening on ``port`` (from /proc/net/tcp{,6})."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A = LISTEN
                found.add(address)
    return found


def test_help_explains_every_variable():
    result = run_script("--help")
    assert result.returncode == 0
    used = set(re.findall(r"\bTRITON_[A-Z_]+\b", RUN_TRITON.read_text()))
    assert {"TRITON_HOME", "TRITON_CONTAINER", "TRITON_BIND", "TRITON_HTTP_PORT"} <= used
    undocumented = sorted(v for v in used if v not in result.stdout)
    assert not undocumented, f"--help does not explain {undocumented}"
    assert "--background" in result.stdout


def test_missing_repository_is_refused(tmp_path):
    result = run_script(tmp_path / "nope")
    assert result.returncode == 2
    assert "nope: not a directory" in result.stderr
    result = run_script(tmp_path)  # a folder without <model>/config.pbtxt
    assert result.returncode == 2 and "no <model>/config.pbtxt" in result.stderr
    result = run_script()
    assert result.returncode == 2 and "no MODEL_REPOSITORY" in result.stderr


def test_missing_tritonserver_is_refused(tmp_path, echo_repository):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}  # no TRITON_HOME, none on PATH
    result = run_script(echo_repository, env=env)
    assert result.returncode == 2
    assert "tritonserver not found" in result.stderr and "TRITON_HOME" in result.stderr
    env["TRITON_HOME"] = str(tmp_path)
    result = run_script(echo_repository, env=env)
    assert result.returncode == 2 and "no executable bin/tritonserver" in result.stderr
    env["TRITON_HOME"], env["TRITON_HTTP_PORT"] = "/x", "80a"
    result = run_script(echo_repository, env=env)
    assert result.returncode == 2 and "TRITON_HTTP_PORT=80a" in result.stderr


@pytest.mark.triton
def test_missing_backend_is_refused(triton_env, tmp_path, echo_repository):
    config = echo_repository / "echo" / "config.pbtxt"
    config.write_text(config.read_text().replace('backend: "python"', 'backend: "onnxruntime"'))
    result = run_script(echo_repository, env=server_env(triton_env, free_ports(3)))
    assert result.returncode == 2
    assert "backend 'onnxruntime'" in result.stderr


@pytest.mark.triton
def test_serves_on_loopback_and_stops_on_sigterm(start_triton, echo_repository):
    import tritonclient.http as httpclient

    started = time.monotonic()
    server = start_triton(echo_repository).wait_ready()
    ready_s = time.monotonic() - started
    output = server.log()
    for line in (f"http     http://127.0.0.1:{server.http_port}",
                 f"grpc     127.0.0.1:{server.grpc_port}",
                 f"metrics  http://127.0.0.1:{server.metrics_port}/metrics"):
        assert line in output
    assert ready_s < 30, f"ready after {ready_s:.1f} s"
    for port in (server.http_port, server.grpc_port, server.metrics_port):
        addresses = listening_addresses(port)
        assert addresses and addresses <= LOOPBACK, f"port {port} listens on {addresses}"
    client = httpclient.InferenceServerClient(server.http_url)
    x = httpclient.InferInput("X", [3], "FP32")
    x.set_data_from_numpy(np.array([1, 2, 3], np.float32))
    np.testing.assert_array_equal(client.infer("echo", [x]).as_numpy("Y"), [2, 4, 6])
    client.close()
    pinned = re.search(r"pinned_memory_pool_byte_size\s*\|\s*(\d+)", output)
    assert pinned and int(pinned.group(1)) == 32 * 1024 * 1024  # the script's Jetson default
    assert server.stop() is not None
    assert not alive(server.pid), "tritonserver outlived run_triton.sh"


@pytest.mark.triton
def test_memory_pools_are_env_overridable(start_triton, echo_repository):
    server = start_triton(echo_repository, TRITON_PINNED_MB="8", TRITON_CUDA_POOL_MB="16")
    output = server.wait_ready().log()
    assert re.search(r"pinned_memory_pool_byte_size\s*\|\s*8388608\b", output)
    # no GPU here: 2.51 takes the flag, says the pool is disabled and serves anyway
    assert re.search(r"cuda_memory_pool_byte_size\{0\}\s*\|\s*16777216\b", output)


@pytest.mark.triton
def test_server_dying_before_ready_exits_1(start_triton, tmp_path):
    repository = write_echo_repository(tmp_path / "failing", fail=True)
    server = start_triton(repository)
    assert server.process.wait(60) == 1
    assert "tritonserver exited (status 1) before it was ready" in server.log()
    assert "this model fails to load on purpose" in server.log()


@pytest.mark.triton
def test_port_taken_exits_1(triton_env, echo_repository):
    env = server_env(triton_env, free_ports(3))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", int(env["TRITON_GRPC_PORT"])))
        taken.listen()
        result = run_script(echo_repository, env=env, timeout=90)
    assert result.returncode == 1
    assert "before it was ready" in result.stderr


@pytest.mark.triton
def test_background_mode_leaves_the_server_running(triton_env, tmp_path, echo_repository):
    import tritonclient.grpc as grpcclient

    env = server_env(triton_env, free_ports(3))
    pidfile = tmp_path / "triton.pid"
    result = run_script("--background", pidfile, echo_repository, env=env, timeout=90)
    assert result.returncode == 0, result.stderr
    pid = int(pidfile.read_text())
    try:
        assert f"triton ready: pid {pid}" in result.stdout
        assert "tritonserver" in Path(f"/proc/{pid}/cmdline").read_bytes().decode()
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{env['TRITON_GRPC_PORT']}")
        assert client.is_model_ready("echo")
        client.close()
        assert (tmp_path / "triton.pid.log").read_text().count("Started HTTPService") == 1
    finally:
        subprocess.run(["kill", str(pid)], check=True)
    deadline = time.monotonic() + 30
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(pid)


def test_container_mode_runs_the_igpu_image_on_the_host_network(tmp_path, echo_repository):
    """TRITON_CONTAINER: the docker command line (a stand-in client records it and runs the
    look inside the image here; no docker here). The real -igpu container is unverified off a
    Jetson."""
    fake = write_fake_docker(tmp_path)
    python_with_models = Path(sys.executable).parent  # numpy, tokenizers, click for the probe
    env = {"PATH": f"{python_with_models}:/usr/bin:/bin", "HOME": str(tmp_path),
           "TRITON_DOCKER": str(fake), "TRITON_SERVER_VERSION": "2.44.0",
           "TRITON_CONTAINER": "nvcr.io/nvidia/tritonserver:24.02-py3-igpu",
           "TRITON_HTTP_PORT": "18555", "TRITON_GRPC_PORT": "18556", "TRITON_METRICS_PORT": "18557"}
    result = run_script(echo_repository, env=env)
    assert result.returncode == 1, result.stderr
    assert "tritonserver exited (status 3) before it was ready" in result.stderr
    args = (tmp_path / "docker-args").read_text().splitlines()
    image = args.index("nvcr.io/nvidia/tritonserver:24.02-py3-igpu")
    assert args[:image] == ["run", "--rm", "--init", "--runtime", "nvidia", "--network", "host",
                            "--shm-size", "256m", "-v",
                            f"{echo_repository}:{echo_repository}:ro"]
    server_args = args[image + 1:]
    assert server_args[0] == "tritonserver"
    pairs = dict(zip(server_args[1::2], server_args[2::2]))
    assert pairs["--model-repository"] == str(echo_repository)
    assert pairs["--backend-directory"] == "/opt/tritonserver/backends"
    for flag in ("--http-address", "--grpc-address", "--metrics-address"):
        assert pairs[flag] == "127.0.0.1"
    assert pairs["--http-port"] == "18555" and pairs["--grpc-port"] == "18556"
    assert pairs["--cuda-memory-pool-byte-size"] == f"0:{32 * 1024 * 1024}"


@pytest.mark.triton
def test_server_stops_when_the_watched_process_dies(start_triton, echo_repository):
    watched = subprocess.Popen(["sleep", "300"])
    try:
        server = start_triton(echo_repository, TRITON_STOP_WITH_PID=str(watched.pid))
        server.wait_ready()
    finally:
        watched.kill()
        watched.wait()
    assert server.process.wait(30) == 1
    assert f"process {watched.pid} (TRITON_STOP_WITH_PID) is gone" in server.log()
    deadline = time.monotonic() + 15
    while alive(server.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(server.pid)
