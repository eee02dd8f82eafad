"""triton_repo.dev_server: the bundled server laid out as a release tree, idempotently."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.triton


def test_layout_is_a_release_tree_and_prepare_is_idempotent(triton_env):
    from triton_repo import dev_server

    home = Path(triton_env["TRITON_HOME"])
    assert (home / "bin" / "tritonserver").stat().st_mode & 0o111
    assert (home / "backends" / "python" / "libtriton_python.so").is_file()
    stub = home / "backends" / "python" / "triton_python_backend_stub"
    assert stub.stat().st_mode & 0o111
    assert any(home.joinpath("lib").glob("libtritonserver*.so*"))
    venv_python = Path(triton_env["TRITON_PYTHON_ENV"]) / "bin" / "python"
    numpy_major = subprocess.run([str(venv_python), "-c", "import numpy; print(numpy.__version__)"],
                                 capture_output=True, text=True, check=True).stdout.split(".")[0]
    assert numpy_major == "1", "the python backend needs numpy<2 (outputs arrive empty with 2)"
    copied_at = stub.stat().st_mtime_ns
    start = time.perf_counter()
    assert dev_server.prepare() == triton_env  # second call: only checks the stamps
    assert time.perf_counter() - start < 10
    assert stub.stat().st_mtime_ns == copied_at, "the server tree was copied again"


def test_cli_prints_the_env_for_run_triton(triton_env):
    from triton_harness import ROOT

    result = subprocess.run([sys.executable, "-m", "triton_repo.dev_server"], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"export TRITON_HOME={triton_env['TRITON_HOME']}" in result.stdout
    assert f"export TRITON_PYTHON_ENV={triton_env['TRITON_PYTHON_ENV']}" in result.stdout
