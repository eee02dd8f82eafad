"""Starting and stopping jetson/run_triton.sh for the tests (used by conftest.py and the tests).

``launch`` starts the script in the foreground, in its own process group, with stdout and
stderr in a log file; ``RunningServer.wait_ready`` waits for the script's ready line (the script
itself waits for ``/v2/health/ready``) and ``stop`` sends SIGTERM, which the script forwards to
tritonserver, and SIGKILLs the group if that hangs.
"""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

FIXTURES = ROOT / "tests" / "fixtures"
RUN_TRITON = ROOT / "jetson" / "run_triton.sh"
# The models served. By default the committed tiny fixtures; TRITON_TEST_IMDB / TRITON_TEST_STORIES
# point the same tests at other exports (the real trained models), and TRITON_TEST_REVIEWS at a
# jsonl of {"text": ...} lines whose first TRITON_TEST_REVIEWS_N texts are classified as well.
CLASSIFIER_ONNX = Path(os.environ.get("TRITON_TEST_IMDB") or FIXTURES / "tiny_classifier.onnx")
# context 192: room for 100 streamed tokens after a prompt (tiny_decoder has only 64)
DECODER_ONNX = Path(os.environ.get("TRITON_TEST_STORIES") or FIXTURES / "tiny_decoder_long.onnx")
USING_FIXTURES = not (os.environ.get("TRITON_TEST_IMDB") or os.environ.get("TRITON_TEST_STORIES"))


def extra_reviews() -> List[str]:
    """The TRITON_TEST_REVIEWS texts (none by default: the tests never need the data sets)."""
    import json

    path = os.environ.get("TRITON_TEST_REVIEWS")
    if not path:
        return []
    count = int(os.environ.get("TRITON_TEST_REVIEWS_N", "200"))
    with open(path, encoding="utf-8") as lines:
        return [json.loads(line)["text"] for line, _ in zip(lines, range(count))]


READY_LINE = re.compile(r"^triton ready: pid (\d+)$", re.MULTILINE)
START_TIMEOUT_S = 120.0


def free_ports(n: int) -> List[int]:
    """``n`` distinct ports free on 127.0.0.1 now (held together so they differ)."""
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@dataclass
class RunningServer:
    """A run_triton.sh process in the foreground and the tritonserver it started."""
    process: subprocess.Popen
    log_path: Path
    http_port: int
    grpc_port: int
    metrics_port: int
    pid: Optional[int] = None  # tritonserver's own pid, from the script's ready line
    output: str = field(default="", repr=False)

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> RunningServer:
        """Wait for the script's ready line; AssertionError with the log when it exits first."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = READY_LINE.search(self.log())
            if found:
                self.pid = int(found.group(1))
                return self
            if self.process.poll() is not None:
                raise AssertionError(f"run_triton.sh exited {self.process.returncode} before "
                                     f"ready:\n{self.log()[-4000:]}")
            time.sleep(0.1)
        self.stop()
        raise AssertionError(f"no ready line after {timeout_s:g} s:\n{self.log()[-4000:]}")

    def stop(self, timeout_s: float = 30.0) -> Optional[int]:
        """SIGTERM the script (it stops the server and waits); SIGKILL the group if it hangs."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        if self.pid is not None:  # the server must not outlive the script
            deadline = time.monotonic() + 10
            while alive(self.pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if alive(self.pid):
                os.kill(self.pid, signal.SIGKILL)
        return self.process.returncode


def server_env(triton_env: Dict[str, str], ports: List[int], **extra: str) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("TRITON_") and k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(triton_env)
    env.update({"TRITON_STOP_WITH_PID": str(os.getpid()),  # no server outlives a killed run
                "TRITON_BIND": "127.0.0.1", "TRITON_HTTP_PORT": str(ports[0]),
                "TRITON_GRPC_PORT": str(ports[1]), "TRITON_METRICS_PORT": str(ports[2])})
    env.update(extra)
    return env


def launch(repository: Path, log_path: Path, env: Dict[str, str],
           args: Optional[List[str]] = None) -> RunningServer:
    """Start run_triton.sh (foreground mode) in its own process group; do not wait."""
    with open(log_path, "wb") as log:
        process = subprocess.Popen([str(RUN_TRITON), *(args or []), str(repository)], env=env,
                                   stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    return RunningServer(process, log_path, int(env["TRITON_HTTP_PORT"]),
                         int(env["TRITON_GRPC_PORT"]), int(env["TRITON_METRICS_PORT"]))


ECHO_CONFIG = """name: "echo"
backend: "python"
max_batch_size: 0
input [ { name: "X" data_type: TYPE_FP32 dims: [ -1 ] } ]
output [ { name: "Y" data_type: TYPE_FP32 dims: [ -1 ] } ]
instance_group [ { kind: KIND_CPU count: 1 } ]
"""
ECHO_MODEL = """import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        if {fail!r}:
            raise RuntimeError("this model fails to load on purpose")

    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()
            y = pb_utils.Tensor("Y", (2 * x).astype(np.float32))
            responses.append(pb_utils.InferenceResponse([y]))
        return responses
"""


def write_echo_repository(directory: Path, fail: bool = False) -> Path:
    """A one-model repository (Y = 2 X), to test the launcher apart from the toolkit's models."""
    version = directory / "echo" / "1"
    version.mkdir(parents=True)
    (directory / "echo" / "config.pbtxt").write_text(ECHO_CONFIG)
    (version / "model.py").write_text(ECHO_MODEL.replace("{fail!r}", repr(fail)))
    return directory




FAKE_DOCKER = """#!/bin/sh
# A stand-in docker client. `run ... --entrypoint sh IMAGE -c SCRIPT ARG...` (run_triton.sh's look
# inside the image) runs SCRIPT here, with this process's environment standing in for the
# image's (TRITON_SERVER_VERSION, python3 on PATH); any other call records its arguments in
# RECORD and exits 3, as a server that fails to start.
case " $* " in
  *" --entrypoint "*)
    while [ "$1" != "-c" ]; do shift; done
    shift
    script="$1"
    shift
    exec sh -c "$script" "$@" ;;
esac
printf '%s\\n' "$@" > "RECORD"
exit 3
"""


def write_fake_docker(directory: Path) -> Path:
    """``directory/fake-docker`` (FAKE_DOCKER); its recorded server command line goes to
    ``directory/docker-args``."""
    fake = directory / "fake-docker"
    fake.write_text(FAKE_DOCKER.replace("RECORD", str(directory / "docker-args")))
    fake.chmod(0o755)
    return fake


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie nobody reaped counts as gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status
