"""The same plan through ``trtexec --loadEngine`` at the same shapes, and what our runtime adds.

trtexec reports the GPU compute time of the plan alone (CUDA events around the enqueue, no
host work); our end-to-end latency includes uploads, the binding and profile checks, the
download and Python. ``overhead`` is the difference, the figure users ask for.

The parser reads the "Performance summary" of TensorRT 8.5 through 10.x, with or without ``=``
between a statistic and its value ("median = 7.14 ms", "median 6.02 ms").
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Dict, Mapping, Sequence

from common.errors import ToolkitError

# Where JetPack and the TensorRT containers install it when it is not on PATH.
KNOWN_PATHS = ("/usr/src/tensorrt/bin/trtexec", "/usr/local/tensorrt/bin/trtexec")
SECTIONS = {"Latency": "latency", "Enqueue Time": "enqueue", "H2D Latency": "h2d",
            "GPU Compute Time": "gpu_compute", "D2H Latency": "d2h"}
_STAT = re.compile(r"(min|max|mean|median|percentile\((\d+(?:\.\d+)?)%\))\s*=?\s*"
                   r"([-+0-9.eE]+)\s*ms")
_LINE = re.compile(r"(?:\[I\]\s*)?(" + "|".join(re.escape(s) for s in SECTIONS) + r"):\s*(.*)$")
_THROUGHPUT = re.compile(r"Throughput:\s*([0-9.eE+-]+)\s*qps")
_WALLTIME = re.compile(r"Total Host Walltime:\s*([0-9.eE+-]+)\s*s")


def find_trtexec() -> str | None:
    found = shutil.which("trtexec")
    if found:
        return found
    return next((p for p in KNOWN_PATHS if Path(p).is_file()), None)


def parse_summary(text: str) -> Dict[str, Any]:
    """``{"throughput_qps", "host_walltime_s", "latency": {min_ms, max_ms, mean_ms,
    median_ms, p90_ms, ...}, "gpu_compute": {...}, "h2d": ..., "d2h": ..., "enqueue": ...}``
    from trtexec's output; ToolkitError when it holds no performance summary."""
    result: Dict[str, Any] = {}
    summary = text.split("=== Performance summary ===", 1)
    body = summary[1] if len(summary) == 2 else text
    for line in body.splitlines():
        match = _LINE.search(line)
        if match and SECTIONS[match.group(1)] not in result:
            stats = {}
            for stat in _STAT.finditer(match.group(2)):
                key = f"p{_pct(stat.group(2))}_ms" if stat.group(2) else f"{stat.group(1)}_ms"
                stats[key] = float(stat.group(3))
            if stats:
                result[SECTIONS[match.group(1)]] = stats
    for name, pattern in (("throughput_qps", _THROUGHPUT), ("host_walltime_s", _WALLTIME)):
        match = pattern.search(body)
        if match:
            result[name] = float(match.group(1))
    if "gpu_compute" not in result:
        raise ToolkitError("trtexec printed no 'GPU Compute Time' summary line (last lines: "
                           + " | ".join(text.strip().splitlines()[-3:]) + ")")
    return result


def _pct(text: str) -> str:
    value = float(text)
    return str(int(value)) if value.is_integer() else text.replace(".", "_")


def shapes_arg(shapes: Mapping[str, Sequence[int]]) -> str:
    """``--shapes`` value: ``input_ids:1x256,attention_mask:1x256``."""
    return ",".join(f"{name}:{'x'.join(str(int(d)) for d in shape)}"
                    for name, shape in shapes.items())


def command(trtexec: str, plan: str | Path, shapes: Mapping[str, Sequence[int]],
            duration_s: int = 3, warmup_ms: int = 500) -> list:
    return [trtexec, f"--loadEngine={plan}", f"--shapes={shapes_arg(shapes)}",
            f"--warmUp={warmup_ms}", f"--duration={duration_s}", "--useSpinWait"]


def decoder_prefill_shapes(sidecar: Dict[str, Any], batch: int, seq: int) -> Dict[str, tuple]:
    """A prefill step's input shapes (empty past)."""
    layers, kv_dim = sidecar["kv_cache"]["layers"], sidecar["kv_cache"]["kv_dim"]
    shapes: Dict[str, tuple] = {n: (batch, seq) for n in
                                ("input_ids", "position_ids", "attention_mask")}
    for layer in range(layers):
        for kind in ("key", "value"):
            shapes[f"past_{kind}_{layer}"] = (0, batch, kv_dim)
    return shapes


def run(trtexec: str, plan: str | Path, shapes: Mapping[str, Sequence[int]],
        timeout_s: float = 120.0) -> Dict[str, Any]:
    """Run trtexec on ``plan`` and parse its summary. trtexec fills inputs with random values
    (token ids too), which times the same kernels as real ids."""
    cmd = command(trtexec, plan, shapes)
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise ToolkitError(f"trtexec on {plan} ran past {timeout_s:.0f} s") from None
    if done.returncode != 0:
        tail = " | ".join((done.stdout + done.stderr).strip().splitlines()[-3:])
        raise ToolkitError(f"trtexec failed on {plan} (exit {done.returncode}): {tail}")
    return {"command": " ".join(cmd), "shapes": {k: list(v) for k, v in shapes.items()},
            **parse_summary(done.stdout)}


def overhead(ours_p50_ms: float, trtexec_result: Dict[str, Any]) -> Dict[str, float]:
    """Our end-to-end median against trtexec's median GPU compute time of the same plan."""
    gpu = trtexec_result["gpu_compute"].get("median_ms", trtexec_result["gpu_compute"].get(
        "mean_ms"))
    return {"runtime_p50_ms": ours_p50_ms, "trtexec_gpu_median_ms": gpu,
            "runtime_overhead_ms": ours_p50_ms - gpu,
            "runtime_overhead_percent": 100.0 * (ours_p50_ms - gpu) / gpu if gpu else None}
