"""Atomic writes and file hashes, shared by every layer (numpy-free, torch-free)."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any, Iterator

from common.errors import ToolkitError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` only if the block succeeds.

    A crash or an exception leaves the previous file untouched, so a half-written checkpoint,
    engine or report never replaces a good one.
    """
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp",
                                        dir=target.parent)
    except OSError as exc:
        raise ToolkitError(f"cannot write {target} ({exc.strerror or exc})") from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp makes the file 0600; give it the mode an ordinary open() would have given it
        # (or the replaced file's), so another user or a container can read what we wrote.
        os.chmod(tmp, file_mode(target))
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def current_umask() -> int:
    """The process umask, read from /proc (Linux) without changing it; else set and restored."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # os.umask only reports the old mask by replacing it
    os.umask(mask)
    return mask


def file_mode(target: Path) -> int:
    """Permission bits for a new ``target``: those of the file it replaces, else 0666 & ~umask."""
    try:
        return stat.S_IMODE(target.stat().st_mode)
    except OSError:  # no previous file
        return 0o666 & ~current_umask()


def check_writable_folder(output: str | os.PathLike, option: str = "--output") -> None:
    """Refuse, before any long work, an output whose folder cannot take new files.

    The check is the real thing, not os.access (root passes that everywhere, and /proc or a
    read-only bind mount answer differently): make the missing folders, create and delete a
    temporary file in the folder, then remove the folders it made. ``output`` itself must not
    be a folder."""
    target = Path(output)
    if target.is_dir():
        raise ToolkitError(f"{option} {target}: is a folder; expected a file path")
    folder = target.parent
    made = []  # the folders this check creates, deepest last
    existing = folder
    while not existing.exists() and existing != existing.parent:
        made.insert(0, existing)
        existing = existing.parent
    if not existing.is_dir():
        raise ToolkitError(f"{option} {target}: cannot create folder {folder} ({existing} is a "
                           "file)")
    try:
        for path in made:
            path.mkdir()
        fd, probe = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".probe", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        where = "folder" if not made else "folder (or create)"
        raise ToolkitError(f"{option} {target}: cannot write to {where} {folder} "
                           f"({exc.strerror or exc})") from None
    finally:
        for path in reversed(made):
            with contextlib.suppress(OSError):
                path.rmdir()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """Read JSON with a one-line error naming the file when it is missing or malformed."""
    p = Path(path)
    if not p.is_file():
        raise ToolkitError(f"{what} not found: {p}")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ToolkitError(f"{what} {p} is not valid JSON ({exc})") from None


def sha256_file(path: str | os.PathLike, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_bytes), b""):
            digest.update(chunk)
    return digest.hexdigest()
