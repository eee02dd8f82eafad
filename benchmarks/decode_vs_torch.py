"""Decoding speed of the runtime (ONNX Runtime backend) against PyTorch eager, same weights.

    python benchmarks/decode_vs_torch.py --checkpoint checkpoints/tinystories/best.pt \
        --onnx models/stories.onnx --output results/decode_vs_torch.json

Host-side (it imports torch and train/). Batch 1, greedy, end-of-text ignored so both sides
generate the same number of tokens (by default until the context is full, 200+ tokens for the
trained model). The two sides run interleaved: ``--repeats`` rounds, each one generation per
side, the side that goes first alternating, so load on a shared machine hits both alike. Each
figure is the median over the rounds, with its spread (min..max):

- tokens/s of the whole generation, and the speedup of the runtime over PyTorch (per round);
- per-token time near positions ``--positions`` (default 10 and 400): the median step time of
  the steps whose cache held about that many positions, and the ratio of the last position to
  the first, showing how a step grows with context;
- the greedy tokens of both, compared: the length of the common prefix (200+ expected);
- the runtime's Python allocations over 100 decode steps (tracemalloc; ~0 bytes expected,
  since the decode loop reuses preallocated buffers).

PyTorch runs ``train.generate.generate`` (a KV cache in the same position-major layout); the
runtime runs ``runtime.generate.Generator`` on an ``OrtSession``.
"""
from __future__ import annotations

if __package__ in (None, ""):  # run by path: the repository root replaces benchmarks/ on sys.path
    import os
    import sys

    _HERE = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
    sys.path.insert(0, os.path.dirname(_HERE))

import dataclasses
import time
import tracemalloc
from typing import Any, Dict, List, Sequence

import click
import numpy as np

from benchmarks.measure import common_prefix
from common.errors import ToolkitError, exit_on_toolkit_error

ALLOCATION_STEPS = (10, 110)  # tracemalloc snapshot after these tokens: 100 decode steps apart


def steps_near(positions: np.ndarray, step_ms: np.ndarray, target: int, window: int = 5):
    """Median ms of the steps whose past length is within ``window`` of ``target`` (None if no
    step came near)."""
    near = np.abs(positions.astype(np.int64) - target) <= window
    return float(np.median(step_ms[near])) if near.any() else None


def run_runtime(generator, prompt_ids: List[int], new_tokens: int) -> Dict[str, Any]:
    from runtime.sampling import Sampler

    start = time.perf_counter()
    result = generator.generate_ids([prompt_ids], new_tokens, Sampler())
    elapsed = time.perf_counter() - start
    return {"tokens": result.tokens[0], "seconds": elapsed,
            "positions": result.decode_past.astype(np.int64),  # (steps,) past per step
            "step_ms": result.decode_ms}  # (steps,) ms per decode step


def run_torch(model, prompt_ids: List[int], new_tokens: int) -> Dict[str, Any]:
    from train.generate import generate

    stamps: List[float] = []
    start = time.perf_counter()
    tokens = generate(model, prompt_ids, new_tokens, eos_id=None,
                      on_token=lambda _token: stamps.append(time.perf_counter()))
    elapsed = time.perf_counter() - start
    # Token i (i >= 1) came from the step that fed token i-1 with len(prompt) + i - 1 cached.
    step_ms = np.diff(np.asarray(stamps)) * 1e3  # (tokens - 1,) ms
    positions = len(prompt_ids) + np.arange(len(step_ms), dtype=np.int64)
    return {"tokens": tokens, "seconds": elapsed, "positions": positions, "step_ms": step_ms}


def decode_allocations(generator, prompt_ids: List[int]) -> Dict[str, Any]:
    """Net bytes Python allocated between decode tokens 10 and 110 of one generation."""
    from runtime.sampling import Sampler

    first, last = ALLOCATION_STEPS
    if len(prompt_ids) + last + 1 > generator.context_limit:
        return {"steps": 0, "net_bytes": None, "note": "context too short for 100 steps"}
    traced = np.zeros(2, np.int64)  # (2,) bytes traced after token `first` and token `last`
    counter = [0]

    def on_token(_row, _token, _piece):
        counter[0] += 1
        if counter[0] in ALLOCATION_STEPS:
            traced[ALLOCATION_STEPS.index(counter[0])] = tracemalloc.get_traced_memory()[0]

    tracemalloc.start()
    try:
        generator.generate_ids([prompt_ids], last + 1, Sampler(), on_token)
    finally:
        tracemalloc.stop()
    return {"steps": last - first, "net_bytes": int(traced[1] - traced[0])}


def summarise(name: str, runs: Sequence[Dict[str, Any]], positions: Sequence[int]):
    """Median and spread over the rounds of tokens/s and of ms/token near each position."""
    from benchmarks.measure import median_spread

    rates = [len(r["tokens"]) / r["seconds"] for r in runs]
    row: Dict[str, Any] = {"backend": name, "tokens": len(runs[0]["tokens"]),
                           "tokens_per_s": float(np.median(rates)),
                           "tokens_per_s_spread": median_spread(rates)}
    for p in positions:
        near = [steps_near(r["positions"], r["step_ms"], p) for r in runs]
        row[f"ms_at_{p}"] = float(np.median(near)) if None not in near else None
    first, last = positions[0], positions[-1]
    if len(positions) > 1 and row[f"ms_at_{first}"] is not None \
            and row[f"ms_at_{last}"] is not None:
        ratios = [steps_near(r["positions"], r["step_ms"], last)
                  / steps_near(r["positions"], r["step_ms"], first) for r in runs]
        row[f"ratio_{last}_{first}"] = median_spread(ratios)
    return row, runs[0]["tokens"]


def interleaved_runs(runtime_side, torch_side, repeats: int):
    """``repeats`` rounds of one run per side; the side that goes first alternates."""
    runtime_runs: List[Dict[str, Any]] = []
    torch_runs: List[Dict[str, Any]] = []
    for i in range(repeats):
        order = [(runtime_side, runtime_runs), (torch_side, torch_runs)]
        for side, runs in (order if i % 2 == 0 else order[::-1]):
            runs.append(side())
    return runtime_runs, torch_runs


def compare(checkpoint: str, onnx_path: str, prompt: str, new_tokens: int | None, repeats: int,
            positions: Sequence[int]) -> Dict[str, Any]:
    """Run both sides and return the report (see the module docstring)."""
    from benchmarks.measure import median_spread
    from benchmarks.report import build_report
    from common.fileio import sha256_file
    from runtime.generate import Generator, encode_prompt, open_decoder
    from runtime.session import open_session
    from runtime.tokenization import model_info
    from train.checkpoint import load_checkpoint

    info, tokenizer = open_decoder(onnx_path)
    if model_info(onnx_path)["checkpoint_sha256"] != sha256_file(checkpoint):
        raise ToolkitError(f"{onnx_path} was not exported from {checkpoint} (checkpoint_sha256 "
                           "differs): compare the same weights")
    model = load_checkpoint(checkpoint, kind="decoder").model
    prompt_ids = encode_prompt(tokenizer, prompt, info.eos_id)
    with open_session(onnx_path) as session:
        generator = Generator(session, tokenizer, dataclasses.replace(info, eos_id=None),
                              max_batch=1)
        room = generator.context_limit - len(prompt_ids)
        n = room if new_tokens is None else new_tokens
        if not 1 <= n <= room:
            raise ToolkitError(f"--new-tokens {n}: the prompt leaves room for 1..{room} tokens")
        runtime_runs, torch_runs = interleaved_runs(
            lambda: run_runtime(generator, prompt_ids, n),
            lambda: run_torch(model, prompt_ids, n), repeats)
        allocations = decode_allocations(generator, prompt_ids)
        generator.close()
    runtime_row, runtime_tokens = summarise("runtime (onnxruntime)", runtime_runs, positions)
    torch_row, torch_tokens = summarise("pytorch eager", torch_runs, positions)
    same = common_prefix(runtime_tokens, torch_tokens)
    speedups = [(len(a["tokens"]) / a["seconds"]) / (len(b["tokens"]) / b["seconds"])
                for a, b in zip(runtime_runs, torch_runs)]
    settings = {"checkpoint": checkpoint, "onnx": onnx_path, "prompt": prompt, "batch": 1,
                "prompt_tokens": len(prompt_ids), "new_tokens": n, "repeats": repeats,
                "positions": list(positions), "sampling": "greedy, end-of-text ignored"}
    return build_report(
        "benchmarks/decode_vs_torch.py", settings, [runtime_row, torch_row], "onnxruntime",
        speedup=float(np.median(speedups)), speedup_spread=median_spread(speedups),
        greedy={"equal_prefix_tokens": same, "compared": min(len(runtime_tokens),
                                                             len(torch_tokens)),
                "all_equal": runtime_tokens == torch_tokens},
        decode_allocations=allocations)


@click.command()
@click.option("--checkpoint", required=True, type=click.Path(dir_okay=False),
              help="Decoder checkpoint (.pt).")
@click.option("--onnx", "onnx_path", required=True, type=click.Path(dir_okay=False),
              help="The ONNX export of that checkpoint.")
@click.option("--prompt", default="Once upon a time", show_default=True)
@click.option("--new-tokens", type=int, default=None,
              help="Tokens to generate [default: until the context is full].")
@click.option("--repeats", default=5, show_default=True, type=int,
              help="interleaved rounds (one generation per side each)")
@click.option("--positions", default="10,400", show_default=True,
              help="Cache lengths at which per-token time is reported.")
@click.option("--output", type=click.Path(dir_okay=False), default=None,
              help="JSON report, e.g. results/decode_vs_torch.json.")
@exit_on_toolkit_error
def main(checkpoint, onnx_path, prompt, new_tokens, repeats, positions, output) -> None:
    """Tokens/s of the runtime vs PyTorch eager at batch 1 on the same decoder."""
    from benchmarks.report import format_table, write_report
    from runtime.bench import parse_int_list

    if repeats < 1:
        raise ToolkitError(f"--repeats {repeats}: expected 1 or more")
    points = parse_int_list(positions, "--positions")
    report = compare(checkpoint, onnx_path, prompt, new_tokens, repeats, points)
    columns = [("backend", "backend", "s"), ("tokens", "tokens", "d"),
               ("tokens_per_s", "tokens/s", ".1f")]
    columns += [(f"ms_at_{p}", f"ms/token @{p}", ".3f") for p in points]
    click.echo(format_table(report["results"], columns))
    greedy, alloc = report["greedy"], report["decode_allocations"]
    spread = report["speedup_spread"]
    click.echo(f"speedup of the runtime: {report['speedup']:.2f}x (median of {spread['n']} "
               f"interleaved rounds, {spread['min']:.2f}..{spread['max']:.2f})")
    for row in report["results"]:
        key = next((k for k in row if k.startswith("ratio_")), None)
        if key:
            r = row[key]
            click.echo(f"{row['backend']}: ms/token {key[6:].replace('_', ' vs ')}: "
                       f"{r['median']:.2f}x ({r['min']:.2f}..{r['max']:.2f})")
    click.echo(f"greedy tokens equal for {greedy['equal_prefix_tokens']} of {greedy['compared']}")
    if alloc["net_bytes"] is not None:
        click.echo(f"runtime decode loop: {alloc['net_bytes']} bytes net allocated over "
                   f"{alloc['steps']} steps (tracemalloc)")
    if output:
        click.echo(f"wrote {write_report(output, report)}")


if __name__ == "__main__":
    main()
