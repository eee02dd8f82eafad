"""A real tritonserver for the tests: the one bundled in nvidia-pytriton, started through
jetson/run_triton.sh on free 127.0.0.1 ports, and stopped at the end even when a test fails.

``triton_env`` makes ``.venv-triton`` once (``triton_repo.dev_server``; the only reason to skip
is that it cannot be installed here). ``cpu_repository`` is the ``--target cpu`` repository built
by ``triton_repo.build`` from the committed tiny fixtures (``tests/fixtures``: no torch needed).
``triton_server`` serves it for the whole session; ``start_triton`` starts more servers (each
stopped at the end of its test) for the tests of run_triton.sh itself.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional

import pytest
from triton_harness import (
    CLASSIFIER_ONNX,
    DECODER_ONNX,
    RunningServer,
    free_ports,
    launch,
    server_env,
    write_echo_repository,
)


@pytest.fixture(scope="session")
def triton_env() -> Dict[str, str]:
    """TRITON_HOME and TRITON_PYTHON_ENV of the bundled server (installed once)."""
    from common.errors import ToolkitError
    from triton_repo import dev_server

    try:
        return dev_server.prepare()
    except ToolkitError as exc:
        pytest.skip(f"the nvidia-pytriton tritonserver cannot be installed here: {exc}")


@pytest.fixture(scope="session")
def cpu_repository(tmp_path_factory) -> Path:
    """The --target cpu repository of the tiny classifier and the long-context tiny decoder."""
    from triton_repo.build import build_repository

    output = tmp_path_factory.mktemp("triton") / "repository"
    return build_repository("cpu", output, imdb=CLASSIFIER_ONNX, stories=DECODER_ONNX)


@pytest.fixture(scope="session")
def triton_server(triton_env, cpu_repository, tmp_path_factory):
    """tritonserver serving cpu_repository for the session; stopped after the last test."""
    log_path = tmp_path_factory.mktemp("triton-log") / "server.log"
    server = launch(cpu_repository, log_path, server_env(triton_env, free_ports(3)))
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture
def start_triton(triton_env, tmp_path):
    """start_triton(repository, args=None, **env) -> RunningServer (not yet waited on)."""
    started: List[RunningServer] = []

    def _start(repository: Path, args: Optional[List[str]] = None, **extra: str):
        env = server_env(triton_env, free_ports(3), **extra)
        server = launch(repository, tmp_path / f"server-{len(started)}.log", env, args)
        started.append(server)
        return server

    yield _start
    for server in started:
        server.stop()


@pytest.fixture
def echo_repository(tmp_path) -> Path:
    return write_echo_repository(tmp_path / "echo_repo")
