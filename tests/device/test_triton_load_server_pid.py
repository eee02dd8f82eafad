"""benchmarks.triton_load's --server-pid / --container: the pid whose memory it reports must be
tritonserver's. In container mode run_triton.sh prints the docker client's pid (its memory is a
few MiB of CLI, not the server's), so such a pid is refused; ``--container`` resolves the
server through ``docker inspect`` and steps past the container's init (``docker run --init``).

The processes here are real ones named like those (copies of ``sleep`` and ``sh``); the
``docker`` of the inspect tests is a script that answers as ``docker inspect -f`` does, since
no container runtime exists here: what is tested is our reading of its answer.
"""
from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks.triton_load import container_pid, server_memory, server_process
from common.errors import ToolkitError

ROOT = Path(__file__).resolve().parents[2]


def named_process(tmp_path: Path, name: str, args, program: str = "sleep") -> subprocess.Popen:
    """A real process whose /proc/<pid>/comm is ``name`` (a copy of ``program`` so named)."""
    exe = tmp_path / name
    shutil.copy(shutil.which(program), exe)
    process = subprocess.Popen([str(exe), *args], start_new_session=True)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if Path(f"/proc/{process.pid}/comm").read_text().strip() == name:
                return process
        except OSError:
            pass
        time.sleep(0.02)
    process.kill()
    raise AssertionError(f"{name} did not start")


@pytest.fixture
def processes():
    started = []
    yield started
    for process in started:  # the whole group: an init's child too
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(10)


@pytest.mark.parametrize("client", ["docker", "podman"])
def test_a_container_client_pid_is_refused(tmp_path, processes, client):
    process = named_process(tmp_path, client, ["30"])
    processes.append(process)
    with pytest.raises(ToolkitError) as caught:
        server_process(process.pid)
    message = str(caught.value)
    assert f"--server-pid {process.pid} is the {client} client" in message
    assert "--container" in message and "\n" not in message


def test_the_cli_refuses_a_docker_pid_in_one_line_before_any_request(tmp_path, processes):
    process = named_process(tmp_path, "docker", ["30"])
    processes.append(process)
    # no server on these ports: the pid is refused first (else this would wait 60 s)
    result = subprocess.run([sys.executable, "-m", "benchmarks.triton_load", "--http-url",
                             "127.0.0.1:9", "--grpc-url", "127.0.0.1:9", "--wait", "60",
                             "--server-pid", str(process.pid)], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: --server-pid {process.pid} is the docker client")
    assert len(result.stderr.strip().splitlines()) == 1


def test_an_ordinary_pid_is_itself_and_a_missing_one_is_refused(processes, tmp_path):
    process = named_process(tmp_path, "tritonserver", ["30"])
    processes.append(process)
    assert server_process(process.pid) == process.pid
    memory = server_memory(server_process(process.pid))
    assert memory["server_rss_mib"] > 0 and memory["stub_processes"] == 0
    process.kill()
    process.wait(10)
    with pytest.raises(ToolkitError, match=f"--server-pid {process.pid}: no /proc"):
        server_process(process.pid)


def init_with_child(tmp_path: Path) -> subprocess.Popen:
    """``docker-init`` (a copy of sh) running one child, as ``docker run --init`` does."""
    return named_process(tmp_path, "docker-init", ["-c", "sleep 30 & wait"], program="sh")


def wait_children(pid: int, count: int):
    from benchmarks.triton_load import _children

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        children = _children(pid)
        if len(children) == count:
            return children
        time.sleep(0.02)
    raise AssertionError(f"{pid} has no {count} children")


def test_a_container_init_is_stepped_over_to_its_only_child(tmp_path, processes):
    init = init_with_child(tmp_path)
    processes.append(init)
    (child,) = wait_children(init.pid, 1)
    assert server_process(init.pid) == child


def fake_docker(tmp_path: Path, body: str) -> str:
    script = tmp_path / "fake-docker"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


def test_container_pid_reads_docker_inspect(tmp_path, processes):
    init = init_with_child(tmp_path)
    processes.append(init)
    (child,) = wait_children(init.pid, 1)
    log = tmp_path / "args"
    docker = fake_docker(tmp_path, f'echo "$@" > {log}\necho {init.pid}\n')
    assert container_pid("triton", docker) == child  # the server, not docker-init
    assert log.read_text().split() == ["inspect", "-f", "{{.State.Pid}}", "triton"]


@pytest.mark.parametrize("body, needle", [
    ('echo "Error: No such object: triton" >&2\nexit 1\n', "No such object: triton"),
    ("echo 0\n", "not running"),
    ("echo '<no value>'\n", "<no value>"),
])
def test_container_pid_failures_are_one_line(tmp_path, body, needle):
    with pytest.raises(ToolkitError) as caught:
        container_pid("triton", fake_docker(tmp_path, body))
    assert str(caught.value).startswith("--container triton:")
    assert needle in str(caught.value) and "\n" not in str(caught.value)


def test_container_pid_without_docker(tmp_path):
    with pytest.raises(ToolkitError, match="--container triton: .*inspect"):
        container_pid("triton", str(tmp_path / "no-docker"))
    assert not os.path.exists(tmp_path / "no-docker")


def test_a_worker_stopped_while_connecting_does_not_hang_the_others(monkeypatch):
    """A BaseException (KeyboardInterrupt, SystemExit) while connecting breaks the barrier:
    the connected worker and the caller go on (the connected client is closed, nothing runs)."""
    import threading

    from benchmarks.triton_load import _Clock, _worker

    monkeypatch.setattr(threading, "excepthook", lambda args: None)  # the stopped thread's
    clock = _Clock(3, duration_s=60.0)
    ran, closed = [], []

    class Client:
        def close(self):
            closed.append(True)

    def interrupted():
        raise KeyboardInterrupt

    threads = [threading.Thread(target=_worker, args=(make, lambda *a: ran.append(a), clock),
                                daemon=True) for make in (Client, interrupted)]
    for thread in threads:
        thread.start()
    started = time.monotonic()
    try:
        with pytest.raises(threading.BrokenBarrierError):
            clock.barrier.wait(timeout=20)  # (a timeout breaks it too, late: timed below)
        assert time.monotonic() - started < 10, "the barrier waited for the stopped worker"
        for thread in threads:
            thread.join(10)
        assert not any(thread.is_alive() for thread in threads), "a worker still waits"
        assert closed == [True] and ran == []
    finally:
        clock.barrier.abort()  # (frees a worker that the old code left waiting)
