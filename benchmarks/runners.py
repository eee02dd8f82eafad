"""Measuring one backend row of the suite: accuracy, the latency sweep, decode figures, memory,
size, build time, energy on a Jetson, trtexec beside TensorRT rows.

Sessions come from ``runtime.session.open_session`` (ONNX Runtime or TensorRT), so every
figure is the runtime's own, end to end; the sweeps are those of ``runtime/bench.py``. The
PyTorch row is measured by ``benchmarks.host_torch`` (host only) into the same keys.
"""
from __future__ import annotations

import contextlib
import dataclasses
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterator, List, Sequence, Tuple

import numpy as np

from benchmarks import accuracy as acc
from benchmarks.measure import (
    PeakMemory,
    engine_build_seconds,
    ms_near,
    per_token_vs_position,
    size_on_disk,
)
from common.errors import ToolkitError

ENERGY_SECONDS = 3.0  # tegrastats at 100 ms: 30 samples per figure


@dataclasses.dataclass
class SuiteContext:
    """What every row of one suite run shares."""

    name: str
    kind: str  # classifier | decoder
    onnx: Path
    sidecar: Dict[str, Any]
    tokenizer_file: Path
    eval_data: Any  # calibration.gate.EvalData or None (no data: accuracy not measured)
    batches: Sequence[int]
    seqs: Sequence[int]  # classifier lengths; decoder prompt lengths
    new_tokens: int
    positions: Sequence[int]  # decoder: cache positions of the per-token figures
    warmup: int
    iterations: int
    is_jetson: bool = False
    trtexec: str | None = None  # path of trtexec, when TensorRT rows should be compared


@contextlib.contextmanager
def opened(backend) -> Iterator[Any]:
    """The runtime session of an ONNX Runtime / TensorRT row (an FP16 copy made first when
    the row asks for one)."""
    from runtime.session import open_session

    with contextlib.ExitStack() as stack:
        path = backend.path
        if backend.convert_fp16_from is not None:
            path = _fp16_copy(stack, backend.convert_fp16_from)
        providers = backend.providers if backend.engine == "onnxruntime" else None
        try:
            session = stack.enter_context(open_session(path, providers=providers))
        except ToolkitError as exc:
            if backend.precision == "fp16" and backend.device == "cpu":
                from benchmarks.backends import NotAvailable

                raise NotAvailable(f"the CPU provider cannot run the FP16 graph ({exc})") \
                    from None
            raise
        yield session


def _fp16_copy(stack: contextlib.ExitStack, onnx: Path) -> Path:
    """An FP16 copy (keep_io_types) with the sidecar and tokenizer beside it, in a temp dir."""
    import shutil

    from calibration.fp16 import convert_to_fp16
    from common.artifacts import sidecar_path, tokenizer_path, write_onnx_sidecar
    from common.fileio import read_json, sha256_file

    tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="suite-fp16-")))
    out = convert_to_fp16(onnx, tmp / onnx.name.replace(".onnx", ".fp16.onnx"))
    sidecar = read_json(sidecar_path(onnx), "ONNX sidecar")
    shutil.copy(tokenizer_path(onnx, sidecar), tmp / sidecar["tokenizer"])
    write_onnx_sidecar(out, {**sidecar, "onnx_sha256": sha256_file(out)})
    return out


def max_batch(session) -> int:
    return max(p["input_ids"][2][0] for p in session.profiles)


def measure_session_row(backend, ctx: SuiteContext) -> Dict[str, Any]:
    """Every figure of one ONNX Runtime / TensorRT row; ToolkitError when it cannot run."""
    row: Dict[str, Any] = {"size_bytes": _size(backend), "notes": []}
    if backend.engine == "tensorrt":
        row["build_seconds"] = engine_build_seconds(backend.path)
    with PeakMemory() as memory:
        with opened(backend) as session:
            if ctx.eval_data is not None:
                data = acc.fit_batch(ctx.eval_data, max_batch(session))
                row["accuracy"] = acc.evaluate(acc.session_adapter(session), data, ctx.sidecar,
                                               ctx.tokenizer_file)
            if ctx.kind == "classifier":
                row.update(classifier_figures(session, ctx, row["notes"]))
            else:
                row.update(decoder_figures(session, ctx, row["notes"]))
            if ctx.trtexec and backend.engine == "tensorrt":
                row["trtexec"] = trtexec_figures(backend.path, ctx, row)
    row["memory"] = memory.as_dict()
    return row


def _size(backend) -> int | None:
    path = backend.path if backend.convert_fp16_from is None else None
    return size_on_disk(path) if path is not None and Path(path).is_file() else None


def _fitting(session, points: Sequence[Tuple[int, int]], shapes_of, notes: List[str]):
    fits = []
    for batch, seq in points:
        try:
            session.find_profile(shapes_of(batch, seq))
            fits.append((batch, seq))
        except ToolkitError:
            notes.append(f"batch {batch} x {seq} is outside this backend's profiles: skipped")
    if not fits:
        raise ToolkitError("no point of the sweep fits this backend's profiles")
    return fits


def classifier_figures(session, ctx: SuiteContext, notes: List[str]) -> Dict[str, Any]:
    from runtime.bench import bench_classifier

    points = _fitting(session, [(b, s) for b in ctx.batches for s in ctx.seqs],
                      lambda b, s: {"input_ids": (b, s), "attention_mask": (b, s)}, notes)
    sweep = bench_classifier(session, points, ctx.warmup, ctx.iterations, None)
    out: Dict[str, Any] = {"latency": sweep}
    if ctx.is_jetson:
        out["energy"] = classifier_energy(session, points[0])
    return out


def decoder_figures(session, ctx: SuiteContext, notes: List[str]) -> Dict[str, Any]:
    """Prefill/decode sweep (runtime/bench.py) and per-token time against position."""
    from runtime.bench import bench_decoder
    from runtime.generate import DecoderInfo, Generator
    from runtime.sampling import Sampler

    info = dataclasses.replace(DecoderInfo.from_sidecar(ctx.sidecar), eos_id=None)
    generator = Generator(session, None, info, max_batch=1)
    try:
        limit, longest_prompt = generator.context_limit, generator.max_prompt
        prompt_len = 4
        n = limit - prompt_len
        prompt = np.random.default_rng(0).integers(3, info.vocab_size, prompt_len).tolist()
        generator.generate_ids([prompt], min(n, 16), Sampler())  # warm-up
        result = generator.generate_ids([prompt], n, Sampler())
        energy = decoder_energy(generator, prompt, n) if ctx.is_jetson else None
    finally:
        generator.close()
    positions = [p for p in ctx.positions if p < limit - 1]
    batch_limit = max_batch(session)
    points = [(b, s) for b in ctx.batches for s in ctx.seqs
              if b <= batch_limit and s <= longest_prompt and s + ctx.new_tokens <= limit]
    if len(points) < len(ctx.batches) * len(ctx.seqs):
        notes.append(f"points beyond batch {batch_limit} or prompt + {ctx.new_tokens} new tokens "
                     f"beyond the context of {limit} skipped")
    if not points:
        raise ToolkitError("no point of the sweep fits this backend's profiles")
    sweep = bench_decoder(session, DecoderInfo.from_sidecar(ctx.sidecar), points,
                          ctx.new_tokens, ctx.warmup, ctx.iterations, None)
    out = {"latency": sweep,
           "per_token": {"prompt_tokens": prompt_len, "new_tokens": n,
                         "curve": per_token_vs_position(result.decode_past, result.decode_ms),
                         "at": {str(p): ms_near(result.decode_past, result.decode_ms, p)
                                for p in positions}}}
    if energy is not None:
        out["energy"] = energy
    return out


# --- energy (Jetson) ---------------------------------------------------------------------------
def _sampled(fn, unit_count) -> Dict[str, Any]:
    """Run ``fn`` (returns how many units it did) for ENERGY_SECONDS under tegrastats."""
    import time

    from jetson.tegrastats import TegrastatsSampler

    done = 0
    with TegrastatsSampler(100) as ts:
        start = time.perf_counter()
        while time.perf_counter() - start < ENERGY_SECONDS:
            done += fn()
        seconds = time.perf_counter() - start
    energy = ts.energy_j()
    return {"mean_power_mw": ts.mean_power_mw(), "energy_j": energy, "seconds": seconds,
            "units": done, f"energy_per_{unit_count}_mj": 1e3 * energy / max(done, 1)}


def classifier_energy(session, point: Tuple[int, int]) -> Dict[str, Any]:
    from runtime.bench import bench_classifier

    batch, seq = point

    def one_block() -> int:
        bench_classifier(session, [(batch, seq)], 0, 20, None)
        return 20 * batch

    return {"batch": batch, "seq": seq, **_sampled(one_block, "inference")}


def decoder_energy(generator, prompt: List[int], n: int) -> Dict[str, Any]:
    from runtime.sampling import Sampler

    def one_generation() -> int:
        return generator.generate_ids([prompt], n, Sampler()).new_tokens

    return {"batch": 1, **_sampled(one_generation, "token")}


# --- trtexec -------------------------------------------------------------------------------
def trtexec_figures(plan: Path, ctx: SuiteContext, row: Dict[str, Any]) -> Dict[str, Any]:
    """trtexec on the same plan at the first sweep point, against our end-to-end p50."""
    from benchmarks import trtexec

    first = row["latency"][0]
    batch, seq = first["batch"], first["seq"]
    if ctx.kind == "classifier":
        shapes = {"input_ids": (batch, seq), "attention_mask": (batch, seq)}
        ours = first["p50_ms"]
    else:
        shapes = trtexec.decoder_prefill_shapes(ctx.sidecar, batch, seq)
        ours = first["prefill_p50_ms"]
    result = trtexec.run(ctx.trtexec, plan, shapes)
    return {**result, **trtexec.overhead(ours, result)}
