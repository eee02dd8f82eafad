"""Latency and throughput of a model on this device, over a sweep of batch sizes and lengths.

    python runtime/bench.py --engine engines/imdb.int8.plan --batch 1,8 --seq 64,256
    python runtime/bench.py --onnx models/stories.onnx --batch 1 --seq 32 --new-tokens 64 \
        --output results/bench_stories.json

Classifier: each (batch, seq) point runs upload, inference and download on random token ids
(buffers allocated once, at the sweep's largest shape) after a warm-up, for ``--iterations`` runs
or ``--duration`` seconds: latency p50/p90/p99/mean/min/max, sequences/s and tokens/s, and the
host-to-device / compute / device-to-host split the session reports (CUDA events on TensorRT;
ONNX Runtime on the CPU reports the run's wall time as compute and no copies). Decoder: each
point is a generation (``runtime.generate.Generator``) of ``--new-tokens`` greedy tokens after a
random prompt of ``seq`` tokens, end-of-text ignored: prefill latency and tokens/s, per-token
decode latency and tokens/s. Points outside the model's profiles are refused before anything
runs.

Also reported: peak resident memory (``/proc/self/status``, no psutil), GPU memory in use when
pycuda is loaded, the device and software versions. A table goes to the terminal and, with
``--output``, the same figures to a JSON file (written atomically). The helpers here (stats,
environment, table) are shared with ``benchmarks/report.py``.
"""
from __future__ import annotations

if __package__ in (None, ""):  # run by path: the repository root replaces runtime/ on sys.path
    import os  # (so no module in runtime/ can shadow a standard-library module)
    import sys

    _HERE = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
    sys.path.insert(0, os.path.dirname(_HERE))

import dataclasses
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence, Tuple

import click
import numpy as np

from common.errors import ToolkitError, exit_on_toolkit_error

Column = Tuple[str, str, str]  # (key in the row, header, format spec)


# --- measuring -----------------------------------------------------------------------------
def measure(fn: Callable[[], Any], warmup: int, iterations: int,
            duration_s: float | None = None) -> List[float]:
    """Milliseconds of each call of ``fn`` after ``warmup`` calls: ``iterations`` calls, or as
    many as fit in ``duration_s`` seconds (at least one) when it is given."""
    for _ in range(warmup):
        fn()
    times: List[float] = []
    deadline = time.perf_counter() + duration_s if duration_s else None
    while True:
        start = time.perf_counter()
        fn()
        end = time.perf_counter()
        times.append((end - start) * 1e3)
        if deadline is not None and end >= deadline:
            return times
        if deadline is None and len(times) >= iterations:
            return times


def latency_stats(ms: Sequence[float]) -> Dict[str, float]:
    """p50/p90/p99/mean/min/max (ms) and the count of ``ms``."""
    if not len(ms):
        raise ToolkitError("no timings to summarise")
    a = np.asarray(ms, dtype=np.float64)  # (n,) ms
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {"p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99),
            "mean_ms": float(a.mean()), "min_ms": float(a.min()), "max_ms": float(a.max()),
            "count": int(a.size)}


def memory_usage() -> Dict[str, float | None]:
    """Peak and current resident memory of this process (MiB) from /proc, and GPU memory in use
    when pycuda is already loaded (on a Jetson that is shared DRAM)."""
    usage: Dict[str, float | None] = {"peak_rss_mib": None, "rss_mib": None, "gpu_used_mib": None}
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                kib = float(value.split()[0])
                usage["peak_rss_mib" if key == "VmHWM" else "rss_mib"] = kib / 1024
    else:  # not Linux: ru_maxrss is KiB on Linux, bytes on macOS
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        usage["peak_rss_mib"] = peak / (1024 * 1024 if sys.platform == "darwin" else 1024)
    if "pycuda.driver" in sys.modules:  # never create a CUDA context just to ask
        free, total = sys.modules["pycuda.driver"].mem_get_info()
        usage["gpu_used_mib"] = (total - free) / (1024 * 1024)
    return usage


def environment(backend: str | None = None) -> Dict[str, Any]:
    """The device and software versions a result depends on."""
    info: Dict[str, Any] = {
        "machine": platform.machine(), "system": platform.system(),
        "cpu": _cpu_model(), "cpu_count": _cpu_count(),
        "python": platform.python_version(), "numpy": np.__version__,
        "onnxruntime": _package_version("onnxruntime", ("onnxruntime", "onnxruntime-gpu")),
        "tensorrt": _package_version("tensorrt", ("tensorrt",)),
    }
    from engines import trt_info

    info["jetson"] = trt_info.jetson_info()
    if backend == "tensorrt" or "pycuda.driver" in sys.modules:
        info["gpu"] = trt_info.gpu_info()
    return info


def _cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware"):
                return value.strip()
    return platform.processor() or "unknown"


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def _package_version(module: str, distributions: Sequence[str]) -> str | None:
    """Version of an imported module, else of an installed distribution; never imports it."""
    if module in sys.modules:
        return getattr(sys.modules[module], "__version__", None)
    from importlib import metadata

    for name in distributions:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def format_table(rows: Sequence[Dict[str, Any]], columns: Sequence[Column]) -> str:
    """A plain aligned text table; a missing value prints as '-'."""
    cells = [[header for _, header, _ in columns]]
    for row in rows:
        cells.append(["-" if row.get(key) is None else format(row[key], spec)
                      for key, _, spec in columns])
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(line, widths)) for line in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# --- sweeps --------------------------------------------------------------------------------
def parse_int_list(text: str, what: str) -> List[int]:
    try:
        values = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise ToolkitError(f"{what} {text!r}: expected comma-separated integers like 1,8") \
            from None
    if not values or min(values) < 1:
        raise ToolkitError(f"{what} {text!r}: expected positive integers like 1,8")
    return values


def check_points(session, points: Sequence[Tuple[int, int]], shapes_of) -> None:
    """Refuse the sweep up front when one (batch, seq) point fits no profile."""
    for batch, seq in points:
        try:
            session.find_profile(shapes_of(batch, seq))
        except ToolkitError as exc:
            raise ToolkitError(f"--batch {batch} --seq {seq} is outside the profiles of "
                               f"{session.path.name}: {exc}") from None


def classifier_input(session) -> Tuple[str, Tuple[int, ...]]:
    """(name, trailing fixed dims) of the classifier's data input: ``input_ids`` and (), or a
    feature classifier's ``features`` and (F,)."""
    if "features" in session.inputs:
        return "features", tuple(session.inputs["features"].shape[2:])
    return "input_ids", ()


def bench_classifier(session, points: Sequence[Tuple[int, int]], warmup: int, iterations: int,
                     duration_s: float | None, seed: int = 0,
                     feature_norm: Dict[str, Any] | None = None) -> List[Dict[str, Any]]:
    """feature_norm: a feature classifier's sidecar statistics; its random inputs are drawn in
    that raw scale (the graph normalizes them)."""
    from runtime.buffers import BufferPlan

    data, extra = classifier_input(session)
    check_points(session, points,
                 lambda b, s: {data: (b, s) + extra, "attention_mask": (b, s)})
    labels = session.outputs["logits"].shape[1]
    dtypes = {n: s.dtype for n, s in {**session.inputs, **session.outputs}.items()}
    max_b, max_s = max(b for b, _ in points), max(s for _, s in points)
    plan = BufferPlan()
    plan.add(data, (max_b, max_s) + extra, dtypes[data])  # (batch, seq) int32 | (.., F) fp32
    plan.add("attention_mask", (max_b, max_s), dtypes["attention_mask"])  # (batch, seq) int32
    plan.add("logits", (max_b, labels), dtypes["logits"])  # (batch, labels) fp32
    arena = session.allocate(plan.nbytes)
    rng = np.random.default_rng(seed)
    results = []
    for batch, seq in points:
        shapes = {data: (batch, seq) + extra, "attention_mask": (batch, seq),
                  "logits": (batch, labels)}
        bindings = plan.bindings(arena, shapes)
        bindings[data].view(dtypes[data])[...] = _random_input(rng, (batch, seq) + extra,
                                                                feature_norm)
        bindings["attention_mask"].view(dtypes["attention_mask"])[...] = 1
        run = _ClassifierRun(session, bindings, dtypes)
        stats = latency_stats(measure(run, warmup, iterations, duration_s))
        row = {"batch": batch, "seq": seq, **stats,
               "sequences_per_s": batch * 1e3 / stats["mean_ms"],
               "tokens_per_s": batch * seq * 1e3 / stats["mean_ms"]}
        row.update({key: float(np.mean(v[warmup:] or v)) for key, v in run.split.items()})
        results.append(row)
    arena.close()
    return results


def _random_input(rng, shape: Tuple[int, ...], feature_norm: Dict[str, Any] | None):
    """Token ids 3..199 (batch, seq), or raw features (batch, seq, F) around the statistics."""
    if len(shape) == 2:
        return rng.integers(3, 200, shape)
    mean = np.asarray((feature_norm or {}).get("mean", 0.0), np.float32)  # (F,) or scalar
    std = np.asarray((feature_norm or {}).get("std", 1.0), np.float32)
    return rng.standard_normal(shape).astype(np.float32) * std + mean


class _ClassifierRun:
    """One timed classifier run: upload, run, download, wait; keeps the session's split."""

    def __init__(self, session, bindings, dtypes):
        self.session, self.bindings, self.dtypes = session, bindings, dtypes
        self.profile = session.find_profile({n: bindings[n].shape for n in session.inputs})
        self.split: Dict[str, List[float]] = {"h2d_ms": [], "compute_ms": [], "d2h_ms": []}

    def __call__(self) -> None:
        b, dtypes = self.bindings, self.dtypes
        for name in self.session.inputs:  # input_ids or features, attention_mask
            b[name].upload(dtypes[name])
        self.session.run(b, self.profile)
        b["logits"].download(dtypes["logits"])
        self.session.synchronize()
        for key, values in self.split.items():
            values.append(self.session.last_timings.get(key, 0.0))


def bench_decoder(session, info, points: Sequence[Tuple[int, int]], new_tokens: int,
                  warmup: int, iterations: int, duration_s: float | None,
                  seed: int = 0) -> List[Dict[str, Any]]:
    """info: ``runtime.generate.DecoderInfo``; end-of-text is ignored so every run decodes
    ``new_tokens`` tokens."""
    import functools

    from runtime.generate import Generator
    from runtime.sampling import Sampler

    generator = Generator(session, None, dataclasses.replace(info, eos_id=None),
                          max_batch=max(b for b, _ in points))
    for _, seq in points:
        if seq > generator.max_prompt:
            raise ToolkitError(f"--seq {seq}: the profiles of {session.path.name} take prompts "
                               f"of at most {generator.max_prompt} tokens")
        if seq + new_tokens > generator.context_limit:
            raise ToolkitError(f"--seq {seq} + --new-tokens {new_tokens} exceeds the context of "
                               f"{generator.context_limit} positions of {session.path.name}")
    rng = np.random.default_rng(seed)
    results = []
    for batch, seq in points:
        prompts = rng.integers(3, info.vocab_size, (batch, seq)).tolist()
        runs: List[Any] = []
        generate = functools.partial(generator.generate_ids, prompts, new_tokens, Sampler())
        measure(lambda: runs.append(generate()), warmup, iterations, duration_s)  # noqa: B023
        runs = runs[warmup:]
        prefill = latency_stats([r.prefill_ms for r in runs])
        decode = latency_stats(np.concatenate([r.decode_ms for r in runs]))
        results.append({
            "batch": batch, "seq": seq, "new_tokens": new_tokens,
            **{f"prefill_{k}": v for k, v in prefill.items()},
            "prefill_tokens_per_s": batch * seq * 1e3 / prefill["mean_ms"],
            **{f"decode_{k}": v for k, v in decode.items()},
            "decode_tokens_per_s": batch * 1e3 / decode["mean_ms"],
        })
    generator.close()
    return results


CLASSIFIER_COLUMNS: List[Column] = [
    ("batch", "batch", "d"), ("seq", "seq", "d"), ("p50_ms", "p50 ms", ".3f"),
    ("p90_ms", "p90 ms", ".3f"), ("p99_ms", "p99 ms", ".3f"), ("mean_ms", "mean ms", ".3f"),
    ("min_ms", "min ms", ".3f"), ("max_ms", "max ms", ".3f"),
    ("sequences_per_s", "seq/s", ".1f"), ("tokens_per_s", "tokens/s", ".0f"),
    ("h2d_ms", "h2d ms", ".3f"), ("compute_ms", "compute ms", ".3f"), ("d2h_ms", "d2h ms", ".3f"),
]
DECODER_COLUMNS: List[Column] = [
    ("batch", "batch", "d"), ("seq", "prompt", "d"), ("new_tokens", "new", "d"),
    ("prefill_p50_ms", "prefill p50 ms", ".3f"), ("prefill_tokens_per_s", "prefill tok/s", ".0f"),
    ("decode_p50_ms", "decode p50 ms", ".3f"), ("decode_p99_ms", "decode p99 ms", ".3f"),
    ("decode_tokens_per_s", "decode tok/s", ".1f"),
]


def run_bench(model: str, batches: Sequence[int], seqs: Sequence[int] | None, new_tokens: int,
              warmup: int, iterations: int, duration_s: float | None) -> Dict[str, Any]:
    """Open ``model``, run the sweep, return the report (what ``--output`` writes)."""
    from runtime.session import open_session
    from runtime.tokenization import model_info

    info = model_info(model)
    if iterations < 1 or warmup < 0 or (duration_s is not None and duration_s <= 0):
        raise ToolkitError("expected --iterations >= 1, --warmup >= 0 and --duration > 0")
    with open_session(model) as session:
        data = classifier_input(session)[0] if info["kind"] == "classifier" else "input_ids"
        max_seq = max(p[data][2][1] for p in session.profiles)
        if info["kind"] == "classifier":
            points = [(b, s) for b in batches for s in (seqs or [max_seq])]
            results = bench_classifier(session, points, warmup, iterations, duration_s,
                                       feature_norm=info.get("feature_norm"))
        else:
            from runtime.generate import DecoderInfo

            points = [(b, s) for b in batches for s in (seqs or [min(32, max_seq)])]
            results = bench_decoder(session, DecoderInfo.from_sidecar(info), points, new_tokens,
                                    warmup, iterations, duration_s)
        backend = session.backend
    return {
        "tool": "runtime/bench.py", "created_at": utc_now(), "model": str(model),
        "kind": info["kind"], "backend": backend, "environment": environment(backend),
        "settings": {"batch": list(batches), "seq": list(seqs) if seqs else None,
                     "new_tokens": new_tokens if info["kind"] == "decoder" else None,
                     "warmup": warmup, "iterations": iterations, "duration_s": duration_s},
        "results": results, "memory": memory_usage(),
    }


@click.command()
@click.option("--engine", type=click.Path(dir_okay=False), default=None,
              help="TensorRT plan to benchmark.")
@click.option("--onnx", "--model", "onnx_path", type=click.Path(dir_okay=False), default=None,
              help="ONNX model to benchmark with ONNX Runtime.")
@click.option("--batch", "batch_text", default="1", show_default=True,
              help="Batch sizes, comma-separated.")
@click.option("--seq", "seq_text", default=None,
              help="Sequence (classifier) or prompt (decoder) lengths, comma-separated "
                   "[default: the profile's longest / 32].")
@click.option("--new-tokens", default=64, show_default=True, type=int,
              help="Decoder: tokens generated per run.")
@click.option("--warmup", default=5, show_default=True, type=int)
@click.option("--iterations", default=50, show_default=True, type=int)
@click.option("--duration", "duration_s", type=float, default=None,
              help="Seconds per point instead of --iterations.")
@click.option("--output", type=click.Path(dir_okay=False), default=None,
              help="JSON report, e.g. results/bench_imdb.json.")
@exit_on_toolkit_error
def main(engine, onnx_path, batch_text, seq_text, new_tokens, warmup, iterations, duration_s,
         output) -> None:
    """Benchmark a classifier or decoder engine/ONNX model over a batch x length sweep."""
    if (engine is None) == (onnx_path is None):
        raise ToolkitError("give exactly one of --engine PLAN or --onnx MODEL")
    batches = parse_int_list(batch_text, "--batch")
    seqs = parse_int_list(seq_text, "--seq") if seq_text else None
    report = run_bench(engine or onnx_path, batches, seqs, new_tokens, warmup, iterations,
                       duration_s)
    columns = CLASSIFIER_COLUMNS if report["kind"] == "classifier" else DECODER_COLUMNS
    click.echo(f"{report['model']} ({report['kind']}, {report['backend']})")
    click.echo(format_table(report["results"], columns))
    memory = report["memory"]
    click.echo(f"peak RSS {memory['peak_rss_mib']:.0f} MiB"
               + (f", GPU in use {memory['gpu_used_mib']:.0f} MiB"
                  if memory["gpu_used_mib"] is not None else ""))
    if output:
        from common.fileio import atomic_write_json

        click.echo(f"wrote {atomic_write_json(output, report)}")


if __name__ == "__main__":
    main()
