"""What the suite measures, independent of the backend: interleaved timing, median with spread,
per-token time against position, peak host memory, device memory, size on disk.

Interleaving: on a shared machine, load comes and goes over seconds, so two sides timed one after
the other see different machines. ``interleaved`` runs the sides in turn, one call each per
round, and rotates which side goes first, so both see the same load; ratios are then taken per
round and summarised by their median and spread (``median_spread``).

Peak host memory: Linux keeps the process's peak resident set (VmHWM); writing ``5`` to
``/proc/self/clear_refs`` resets it, so ``PeakMemory`` gives the peak of one backend's run
rather than of the whole process. Where that is refused the process-wide peak is reported and
flagged. Python-level allocations are traced with tracemalloc on request (it slows Python code,
so never while timing). Standard library and numpy only.
"""
from __future__ import annotations

import os
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Sequence

import numpy as np

from common.errors import ToolkitError


def timed_ms(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def interleaved(sides: Mapping[str, Callable[[], Any]], rounds: int,
                warmup: int = 1) -> Dict[str, List[float]]:
    """Milliseconds per call of each side over ``rounds`` rounds (after ``warmup`` untimed
    rounds); within a round every side runs once, the first side rotating round by round."""
    if rounds < 1:
        raise ToolkitError(f"rounds={rounds}: expected at least 1")
    names = list(sides)
    times: Dict[str, List[float]] = {name: [] for name in names}
    for r in range(warmup + rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            ms = timed_ms(sides[name])
            if r >= warmup:
                times[name].append(ms)
    return times


def median_spread(values: Sequence[float]) -> Dict[str, float]:
    """Median, min, max, the relative spread ``(max - min) / median`` and the interquartile
    range relative to the median, of ``values`` (ratios or times)."""
    if not len(values):
        raise ToolkitError("no values to summarise")
    a = np.asarray(values, dtype=np.float64)  # (n,)
    median = float(np.median(a))
    q1, q3 = np.percentile(a, [25, 75])
    scale = median if median else 1.0
    return {"median": median, "min": float(a.min()), "max": float(a.max()),
            "spread": float((a.max() - a.min()) / scale), "iqr": float((q3 - q1) / scale),
            "n": int(a.size)}


def ratio_of_medians(numerator: Sequence[float], denominator: Sequence[float]) -> float:
    return float(np.median(numerator) / np.median(denominator))


def per_round_ratios(numerator: Sequence[float], denominator: Sequence[float]) -> List[float]:
    return [a / b for a, b in zip(numerator, denominator) if b > 0]


def median_of_rounds(rounds: Sequence[Any]) -> Any:
    """One structure from the same structure measured in several rounds (dicts by key, lists
    item by item): a number that differs between rounds becomes its median, anything else
    (equal numbers such as a batch size, names, None) is the first round's."""
    first = rounds[0]
    if isinstance(first, dict):
        return {k: median_of_rounds([r.get(k) if isinstance(r, dict) else None for r in rounds])
                for k in first}
    if isinstance(first, list) and all(isinstance(r, list) and len(r) == len(first)
                                       for r in rounds):
        return [median_of_rounds([r[i] for r in rounds]) for i in range(len(first))]
    numbers = [r for r in rounds if isinstance(r, (int, float)) and not isinstance(r, bool)]
    if len(numbers) == len(rounds) and any(n != first for n in numbers):
        return float(np.median(numbers))
    return first


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens two generations share."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


# --- decode time against position ------------------------------------------------------------
def per_token_vs_position(positions: np.ndarray, step_ms: np.ndarray,
                          bins: int = 16) -> List[Dict[str, float]]:
    """Median step ms in ``bins`` equal ranges of cache position: the curve of the plot.
    positions: (steps,) past length before each step; step_ms: (steps,) ms of each step."""
    positions = np.asarray(positions, dtype=np.int64)
    step_ms = np.asarray(step_ms, dtype=np.float64)
    if positions.size == 0:
        return []
    edges = np.unique(np.linspace(positions.min(), positions.max() + 1, bins + 1).astype(int))
    curve = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (positions >= lo) & (positions < hi)
        if inside.any():
            curve.append({"position": float(np.median(positions[inside])),
                          "ms": float(np.median(step_ms[inside])), "steps": int(inside.sum())})
    return curve


def ms_near(positions: np.ndarray, step_ms: np.ndarray, target: int, window: int = 5):
    """Median ms of the steps whose past length is within ``window`` of ``target``; None when
    no step came near."""
    near = np.abs(np.asarray(positions, dtype=np.int64) - target) <= window
    return float(np.median(np.asarray(step_ms)[near])) if near.any() else None


# --- memory ----------------------------------------------------------------------------------
class PeakMemory:
    """Peak resident memory (MiB) of the code inside the ``with`` block, see the docstring.
    ``.peak_rss_mib``, ``.scope`` ("block" or "process"), and GPU memory in use at the end
    (``.device_used_mib``, when pycuda is loaded; on a Jetson that is shared DRAM)."""

    def __enter__(self) -> PeakMemory:
        self.scope = "block" if _reset_peak_rss() else "process"
        self.peak_rss_mib = None
        self.device_used_mib = None
        return self

    def __exit__(self, *exc) -> None:
        self.peak_rss_mib = _status_mib("VmHWM")
        self.device_used_mib = device_memory_used_mib()

    def as_dict(self) -> Dict[str, Any]:
        return {"peak_rss_mib": self.peak_rss_mib, "peak_rss_scope": self.scope,
                "device_used_mib": self.device_used_mib}


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _status_mib(key: str) -> float | None:
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            name, _, value = line.partition(":")
            if name == key:
                return float(value.split()[0]) / 1024
    import resource  # not Linux: ru_maxrss is KiB on Linux, bytes on macOS

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024 if sys.platform == "darwin" else 1024)


def device_memory_used_mib() -> float | None:
    """GPU memory in use when pycuda is already loaded; never creates a CUDA context."""
    driver = sys.modules.get("pycuda.driver")
    if driver is None:
        return None
    try:
        free, total = driver.mem_get_info()
    except Exception:  # noqa: BLE001 - no current context: the figure is unknown, not an error
        return None
    return (total - free) / (1024 * 1024)


def traced_allocations(fn: Callable[[], Any]) -> Dict[str, int]:
    """Python-level bytes (numpy buffers included) allocated by ``fn``: ``net_bytes`` still held
    afterwards and ``peak_bytes``, the most held at once above the start."""
    tracemalloc.start()  # traces only what is allocated from now on (no reset_peak on 3.8)
    try:
        fn()
        end, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return {"net_bytes": int(end), "peak_bytes": int(peak)}


# --- artifacts -------------------------------------------------------------------------------
def size_on_disk(path: str | os.PathLike) -> int:
    """Bytes of a model file and of the external-data file beside it, if any."""
    path = Path(path)
    total = path.stat().st_size
    external = path.with_name(path.name + ".data")
    return total + (external.stat().st_size if external.is_file() else 0)


def engine_build_seconds(plan_path: str | os.PathLike) -> float | None:
    """``build_seconds`` from the engine manifest beside a plan, None for other files."""
    from engines.manifest import manifest_path

    manifest = manifest_path(plan_path)
    if not manifest.is_file():
        return None
    from common.fileio import read_json

    value = read_json(manifest, "engine manifest").get("build_seconds")
    return float(value) if value is not None else None
