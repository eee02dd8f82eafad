"""A real tritonserver for this machine: the one bundled in nvidia-pytriton, in its own venv.

    python -m triton_repo.dev_server            # make .venv-triton (once) and print its env
    eval "$(python -m triton_repo.dev_server)"   # then: jetson/run_triton.sh REPOSITORY

nvidia-pytriton ships tritonserver 2.51 with only the python backend. It needs numpy<2 (with
numpy 2 every output of a python model arrives empty), so it lives in ``.venv-triton``, apart
from the project's ``.venv``. The server tree is copied out of the package into
``.venv-triton/tritonserver`` in the layout of a release tarball, so ``jetson/run_triton.sh``
serves from it through ``TRITON_HOME`` exactly as from a tarball on a Jetson:

    tritonserver/bin/tritonserver
    tritonserver/backends/python/        libtriton_python.so + the stub for the venv's Python
    tritonserver/caches/local/
    tritonserver/lib/                    the package's nvidia_pytriton.libs (the copied binaries'
                                         RUNPATH no longer reaches them)

``TRITON_PYTHON_ENV`` (this venv) makes run_triton.sh put the venv's ``bin`` first on PATH (the
python backend stub takes the first ``python3`` there and ignores PYTHONPATH) and the base
interpreter's lib directory on LD_LIBRARY_PATH (else the stub loads the system libpython and
fails on an RLock attribute). Everything here is idempotent: a stamp records what was
installed and laid out, and a second call only checks it.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

if __package__ in (None, ""):  # run by path: the repository root replaces triton_repo/
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != os.path.dirname(
        os.path.abspath(__file__))]
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import click

from common.errors import ToolkitError, exit_on_toolkit_error

ROOT = Path(__file__).resolve().parents[1]
VENV_DIR = ROOT / ".venv-triton"
# What the cpu repository's python models import (runtime/, common/ need numpy, tokenizers,
# onnxruntime; click because runtime modules define their CLIs at import).
REQUIREMENTS: List[str] = [
    "nvidia-pytriton==0.7.0",
    "numpy<2",
    "tokenizers>=0.15",
    "onnxruntime>=1.17",
    "click>=8.0",
]
SERVER_SUBDIRS = ("bin", "backends", "caches")


def _stamp(lines: List[str]) -> str:
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def base_python() -> str:
    """The interpreter this venv is made from: the base of the running one (not a venv)."""
    base = getattr(sys, "_base_executable", "") or sys.executable
    return base


def ensure_venv(venv: Path = VENV_DIR, python: str | None = None) -> Path:
    """Create ``venv`` with REQUIREMENTS unless its stamp says they are installed."""
    stamp = venv / f".installed-{_stamp(REQUIREMENTS)}"
    if stamp.exists() and venv_python(venv).exists():
        return venv
    if not venv_python(venv).exists():
        _run([python or base_python(), "-m", "venv", str(venv)], "creating the venv")
    _run([str(venv_python(venv)), "-m", "pip", "install", "-q", *REQUIREMENTS],
         f"pip install {' '.join(REQUIREMENTS)} into {venv}")
    for old in venv.glob(".installed-*"):
        old.unlink()
    stamp.touch()
    return venv


def _run(cmd: List[str], what: str) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise ToolkitError(f"{what}: {exc}") from None
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise ToolkitError(f"{what} failed (exit {done.returncode}): {tail[0]}")
    return done.stdout


def _venv_facts(venv: Path) -> Dict[str, str]:
    """Site-packages, Python version and the base interpreter's lib dir, asked of the venv."""
    code = ("import sys, sysconfig, site; print(site.getsitepackages()[0]); "
            "print('%d.%d' % sys.version_info[:2]); print(sysconfig.get_config_var('LIBDIR'))")
    site_dir, version, libdir = _run([str(venv_python(venv)), "-c", code],
                                     f"asking {venv} for its paths").split()
    return {"site_packages": site_dir, "version": version, "libdir": libdir}


def lay_out_server(venv: Path = VENV_DIR) -> Path:
    """Copy the bundled server out of the package into ``venv/tritonserver``; return it."""
    facts = _venv_facts(venv)
    package = Path(facts["site_packages"]) / "pytriton" / "tritonserver"
    libs = Path(facts["site_packages"]) / "nvidia_pytriton.libs"
    stub = package / "python_backend_stubs" / facts["version"] / "triton_python_backend_stub"
    for needed in (package / "bin" / "tritonserver", libs, stub):
        if not needed.exists():
            raise ToolkitError(f"{needed}: not in the installed nvidia-pytriton (expected the "
                         f"bundled tritonserver and a stub for Python {facts['version']})")
    home = venv / "tritonserver"
    stamp = home / f".laid-out-{_stamp([str(package), facts['version']])}"
    if stamp.exists():
        return home
    tmp = venv / ".tritonserver.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    for sub in SERVER_SUBDIRS:
        shutil.copytree(package / sub, tmp / sub)
    shutil.copytree(libs, tmp / "lib")
    shutil.copy2(stub, tmp / "backends" / "python" / stub.name)
    (tmp / stamp.name).touch()
    shutil.rmtree(home, ignore_errors=True)
    os.replace(tmp, home)
    return home


def server_env(venv: Path = VENV_DIR) -> Dict[str, str]:
    """The variables jetson/run_triton.sh needs to serve from the dev server."""
    return {"TRITON_HOME": str(venv / "tritonserver"), "TRITON_PYTHON_ENV": str(venv)}


def prepare(venv: Path = VENV_DIR) -> Dict[str, str]:
    """Install (once), lay out (once) and return the env for run_triton.sh."""
    ensure_venv(venv)
    lay_out_server(venv)
    return server_env(venv)


@click.command()
@click.option("--venv", type=click.Path(file_okay=False, path_type=Path), default=VENV_DIR,
              show_default=True, help="venv to make or reuse.")
@exit_on_toolkit_error
def main(venv: Path) -> None:
    """Make .venv-triton with the bundled tritonserver; print the env for run_triton.sh."""
    import shlex

    for key, value in prepare(venv.resolve()).items():
        click.echo(f"export {key}={shlex.quote(value)}")


if __name__ == "__main__":
    main()
