"""Triton server versions the toolkit supports, and what each newer one adds (stdlib only).

Shared by ``jetson/run_triton.sh`` (refuses a server below the floor), the client (degrades on
an old server) and the tests. Triton's server version is ``2.<minor>.<patch>``; a release
(container tag, tarball, release branch) is ``YY.MM`` and maps one to one: 23.05 is 2.34.
"""
from __future__ import annotations

import re
from typing import List, Tuple

from common.errors import ToolkitError

# The floor: tritonserver --metrics-address (2.34, r23.05; run_triton.sh binds metrics to the
# HTTP address) and pb_utils.InferenceRequest.parameters() in the Python backend (2.32, r23.03).
MIN_TRITON = (2, 34, 0)
# The `triton_final_response` response parameter and the `enable_empty_final_response` request
# parameter of the gRPC stream (2.35, r23.06): 2.34 refuses the request parameter as a reserved
# `triton_` name, so the client must not send it below this.
STREAM_FINAL_RESPONSE_FROM = (2, 35, 0)
# pb_utils.InferenceResponseSender.is_cancelled() in the Python backend (2.39, r23.10): below
# it a cancelled stream runs to its end in the generator (it checks with hasattr).
REQUEST_CANCELLATION_FROM = (2, 39, 0)
# --backend-config=tensorrt,version-compatible=true (tensorrt_backend src/tensorrt.cc, from
# r23.09; not at r23.08): before it the backend cannot allow a version-compatible plan's lean
# runtime.
VERSION_COMPATIBLE_PLANS_FROM = (2, 38, 0)

_VERSION = re.compile(r"^\s*v?(\d+)\.(\d+)(?:\.(\d+))?")
# 23.05 <-> 2.34: one minor version per monthly release (22.01 was 2.18, 24.10 is 2.51).
_RELEASE_BASE = ((23, 5), 34)


def parse_triton_version(text: str) -> Tuple[int, int, int]:
    """``"2.51.0"``, ``"2.40.0dev"``, ``"v2.35.0"`` -> ``(2, 51, 0)``; a release ``"24.10"``
    (or an image tag like ``"24.10-py3-igpu"``) -> its server version ``(2, 51, 0)``."""
    match = _VERSION.match(str(text))
    if not match:
        raise ToolkitError(f"Triton version {text!r}: expected a server version like 2.51.0 "
                           f"or a release like 24.10")
    major, minor = int(match.group(1)), int(match.group(2))
    patch = int(match.group(3) or 0)
    if major == 2:
        return (2, minor, patch)
    if 18 <= major <= 99 and 1 <= minor <= 12:  # a YY.MM release
        (year, month), base = _RELEASE_BASE
        return (2, base + (major - year) * 12 + (minor - month), 0)
    raise ToolkitError(f"Triton version {text!r}: neither a 2.x server version nor a YY.MM release")


def release_of(version: Tuple[int, ...]) -> str:
    """``(2, 51, 0)`` -> ``"24.10"``: the release (container tag, release branch) of a version."""
    (year, month), base = _RELEASE_BASE
    months = (year * 12 + month - 1) + (version[1] - base)
    return f"{months // 12:02d}.{months % 12 + 1:02d}"


def format_version(version: Tuple[int, ...]) -> str:
    return ".".join(str(part) for part in version)


def check_supported(text: str) -> Tuple[int, int, int]:
    """The parsed version; ToolkitError (one line) below the floor."""
    version = parse_triton_version(text)
    if version < MIN_TRITON:
        raise ToolkitError(
            f"Triton {format_version(version)} ({release_of(version)}) is below the supported "
            f"floor {format_version(MIN_TRITON)} ({release_of(MIN_TRITON)}): use a newer "
            f"tarball or image (see jetson/run_triton.sh --help)")
    return version


def version_notes(version: Tuple[int, int, int]) -> List[str]:
    """Warnings for a supported server that lacks a feature the models use."""
    notes = []
    if version < REQUEST_CANCELLATION_FROM:
        notes.append(
            f"warning: Triton {format_version(version)} ({release_of(version)}) does not tell "
            f"the python models of cancelled requests (is_cancelled arrives in "
            f"{format_version(REQUEST_CANCELLATION_FROM)}, "
            f"{release_of(REQUEST_CANCELLATION_FROM)}): a cancelled stream runs to its end")
    return notes


def check_version_compatible(version: Tuple[int, int, int]) -> None:
    """ToolkitError when the server cannot load version-compatible TensorRT plans."""
    if version < VERSION_COMPATIBLE_PLANS_FROM:
        raise ToolkitError(
            f"Triton {format_version(version)} ({release_of(version)}) cannot load "
            f"version-compatible TensorRT plans (tensorrt_backend's version-compatible switch "
            f"arrives in {format_version(VERSION_COMPATIBLE_PLANS_FROM)}, "
            f"{release_of(VERSION_COMPATIBLE_PLANS_FROM)}): rebuild the plans with the "
            f"server's TensorRT, or use a newer server")
