"""Reports of the comparison scripts in benchmarks/: a table on the terminal, a JSON file.

Every report has the same envelope, so results from different devices line up::

    {"tool", "created_at", "environment": {device, python, numpy, onnxruntime, tensorrt, ...},
     "settings": {...}, "results": [...], "memory": {peak RSS, GPU in use}, ...}

The measuring helpers (latency statistics, environment, memory, the table layout) are those of
``runtime/bench.py``, which the device-side benchmark uses too; this module adds the comparison
figures (speedup, overhead) and the envelope. Standard library and numpy only.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Sequence

from common.fileio import atomic_write_json
from runtime.bench import Column, environment, format_table, latency_stats, memory_usage, utc_now

__all__ = ["Column", "build_report", "format_table", "latency_stats", "overhead_percent",
           "speedup", "write_report"]


def speedup(baseline: float, candidate: float) -> float:
    """How many times faster ``candidate`` is, both given as rates (tokens/s)."""
    return candidate / baseline if baseline > 0 else float("inf")


def overhead_percent(bare_ms: float, wrapped_ms: float) -> float:
    """Extra time of ``wrapped_ms`` over ``bare_ms``, in percent of ``bare_ms``."""
    return (wrapped_ms - bare_ms) / bare_ms * 100.0 if bare_ms > 0 else float("inf")


def build_report(tool: str, settings: Dict[str, Any], results: Sequence[Dict[str, Any]],
                 backend: str | None = None, **extra: Any) -> Dict[str, Any]:
    """The common envelope around ``results`` (memory is read now, after the runs)."""
    return {"tool": tool, "created_at": utc_now(), "environment": environment(backend),
            "settings": dict(settings), "results": list(results), "memory": memory_usage(),
            **extra}


def write_report(path: str | os.PathLike, report: Dict[str, Any]) -> Path:
    """Write ``report`` as JSON, atomically (a failed run never leaves half a file)."""
    return atomic_write_json(path, report)
