"""common.fileio's atomic writers give files the permissions an ordinary open() gives them
(0666 & ~umask, or the replaced file's mode), an output folder that cannot take files is refused
before any work, and a missing .onnx is reported as missing (not as a missing sidecar)."""
from __future__ import annotations

import os
import stat

import pytest

from common.artifacts import load_onnx_sidecar
from common.errors import ToolkitError
from common.fileio import (
    atomic_write_bytes,
    atomic_write_json,
    check_writable_folder,
    current_umask,
)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask():
    """Set a umask for one test, restore the previous one after it."""
    saved = os.umask(0o022)
    os.umask(saved)
    yield os.umask
    os.umask(saved)


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_new_files_honour_the_umask(tmp_path, umask, mask, expected):
    umask(mask)
    assert current_umask() == mask
    written = atomic_write_json(tmp_path / "deep" / "report.json", {"a": 1})
    assert _mode(written) == expected
    assert [p.name for p in written.parent.iterdir()] == ["report.json"]  # no temp file left


def test_a_replaced_file_keeps_its_mode(tmp_path, umask):
    umask(0o022)
    target = tmp_path / "model.onnx"
    target.write_bytes(b"old")
    os.chmod(target, 0o640)
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new" and _mode(target) == 0o640


def test_output_whose_parent_is_a_file_is_refused(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(ToolkitError, match=r"--output .*m\.onnx: cannot create folder"):
        check_writable_folder(blocker / "sub" / "m.onnx")
    with pytest.raises(ToolkitError, match="is a folder"):
        check_writable_folder(tmp_path)
    check_writable_folder(tmp_path / "new" / "deeper" / "m.onnx")  # made later, when written
    assert not (tmp_path / "new").exists()


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root can write into a read-only folder")
def test_unwritable_folder_is_refused(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    os.chmod(locked, 0o555)
    try:
        with pytest.raises(ToolkitError, match=f"cannot write to folder {locked}"):
            check_writable_folder(locked / "m.onnx")
        with pytest.raises(ToolkitError, match="cannot write to folder \\(or create\\)"):
            check_writable_folder(locked / "sub" / "m.onnx")
    finally:
        os.chmod(locked, 0o755)


def test_missing_onnx_is_named_not_its_sidecar(tmp_path):
    missing = tmp_path / "gone.onnx"
    with pytest.raises(ToolkitError, match=f"ONNX file not found: {missing}$"):
        load_onnx_sidecar(missing)
    missing.write_bytes(b"graph")  # the graph alone: now the sidecar is what is missing
    with pytest.raises(ToolkitError, match="ONNX sidecar not found"):
        load_onnx_sidecar(missing)


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="no /proc (not Linux)")
def test_folder_nobody_can_create_is_refused_even_as_root():
    """os.access says yes to root everywhere; the check makes and removes a real file."""
    with pytest.raises(ToolkitError, match="cannot write to folder"):
        check_writable_folder("/proc/no_such_dir/m.onnx")
