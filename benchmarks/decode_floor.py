"""The floor of a Python-driven decode loop on ONNX Runtime, for one decoder ``.onnx``.

    python benchmarks/decode_floor.py --onnx models/stories.onnx --tokens 450 --requests 5

A bare greedy loop that does only what every step has to: re-bind the tensors whose shape
changes (the mask and each layer's past and present windows over the cache), run, read the
top-1 id. None of the runtime's checks, sampling, batching or bookkeeping. Its
tokens/s is the most any Python loop over this graph can reach on this machine: the gap from it
to the runtime (``benchmarks/peers.py``) is what the runtime's loop costs, the gap from it to a
C++ loop such as onnxruntime-genai's is what no Python loop can close (docs/DESIGN.md).
Prints each request's tokens/s and the best; batch 1, the end-of-text token ignored. Its
greedy tokens equal the runtime's (``tests/device/test_decode_floor.py``).
"""
from __future__ import annotations

if __package__ in (None, ""):  # run by path: the repository root replaces benchmarks/ on sys.path
    import os
    import sys

    _HERE = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
    sys.path.insert(0, os.path.dirname(_HERE))

import time
from typing import Dict, List, Sequence, Tuple

import click
import numpy as np

from common.errors import ToolkitError

FLOAT_BYTES = 4  # the decoder interface's cache is float32 (CONTRIBUTING.md)


def open_floor_session(onnx_path: str, threads: int):
    """A plain ONNX Runtime CPU session with the runtime's options (no memory pattern)."""
    import onnxruntime as ort

    from runtime.ort_backend import _ort_errors, session_options

    options = session_options()
    options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
    except _ort_errors() as exc:
        raise ToolkitError(f"onnxruntime cannot load {onnx_path}: "
                           f"{str(exc).strip().splitlines()[0]}") from None


def floor_generate(session, info, prompt: Sequence[int],
                   n: int) -> Tuple[List[int], Dict[str, np.ndarray]]:
    """``n`` greedy tokens after ``prompt`` (one prefill run, then one run a token), and the
    cache blocks by name (``key_0``, ``value_0``, ...): rows 0..prompt+n-2 hold the keys and
    values of every position that was run. ``info``: the model's ``runtime.generate.DecoderInfo``.
    """
    from runtime.ort_backend import _Binder, run_options

    if not prompt or n < 1:
        raise ToolkitError(f"the floor loop needs a prompt and 1 or more tokens, got "
                           f"{len(prompt)} prompt tokens and {n}")
    kv_dim = info.kv_dim
    names = [f"{kind}_{layer}" for layer in range(info.layers) for kind in ("key", "value")]
    if not {f"present_{name}" for name in names} <= {o.name for o in session.get_outputs()}:
        raise ToolkitError("the floor loop needs a decoder graph with present_* outputs "
                           "(exports since they were added have them); re-export this model")
    total = len(prompt) + n
    # key_{l} / value_{l}  # (total + 1, 1, kv_dim) fp32, position-major; the last is a scratch
    # slot that decode steps point new_* at, since present_* already appends in place
    cache = {name: np.zeros((total + 1, 1, kv_dim), np.float32) for name in names}
    address = {name: block.ctypes.data for name, block in cache.items()}
    slot = kv_dim * FLOAT_BYTES
    mask = np.ones((1, total), np.int32)  # (1, total) int32, sliced by the bound shape
    io = session.io_binding()
    binder, options = _Binder(io, "cpu"), run_options()

    top_k_values = np.zeros((1, info.topk), np.float32)  # (1, K) fp32
    top_k_ids = np.zeros((1, info.topk), np.int32)       # (1, K) int32
    binder.bind_output("topk_values", np.float32, top_k_values.shape, top_k_values.ctypes.data)
    binder.bind_output("topk_indices", np.int32, top_k_ids.shape, top_k_ids.ctypes.data)
    _prefill(session, io, binder, options, cache, prompt, mask)
    tokens = [int(top_k_ids[0, 0])]
    ids = np.zeros((1, 1), np.int32)        # (1, 1) int32, the token of this step
    positions = np.zeros((1, 1), np.int32)  # (1, 1) int32
    logits = np.zeros((1, 1, info.vocab_size), np.float32)  # (1, 1, vocab) fp32
    binder.bind_input("input_ids", np.int32, (1, 1), ids.ctypes.data)
    binder.bind_input("position_ids", np.int32, (1, 1), positions.ctypes.data)
    binder.bind_output("logits", np.float32, logits.shape, logits.ctypes.data)
    for name in names:
        binder.bind_output("new_" + name, np.float32, (1, 1, kv_dim), address[name] + total * slot)
    for position in range(len(prompt), total - 1):
        ids[0, 0], positions[0, 0] = tokens[-1], position
        binder.bind_input("attention_mask", np.int32, (1, position + 1), mask.ctypes.data)
        for name in names:
            binder.bind_input("past_" + name, np.float32, (position, 1, kv_dim), address[name])
            # present = past + new, written over the block it reads: ONNX Runtime copies nothing
            binder.bind_output("present_" + name, np.float32, (position + 1, 1, kv_dim),
                               address[name])
        session.run_with_iobinding(io, options)
        tokens.append(int(top_k_ids[0, 0]))
    return tokens, cache


def _prefill(session, io, binder, options, cache, prompt, mask) -> None:
    """Runs the prompt with new_* written straight into the cache (top-K bound by the caller)."""
    length = len(prompt)
    ids = np.asarray([prompt], np.int32)                  # (1, prompt) int32
    positions = np.arange(length, dtype=np.int32)[None]  # (1, prompt) int32
    binder.bind_input("input_ids", np.int32, ids.shape, ids.ctypes.data)
    binder.bind_input("position_ids", np.int32, positions.shape, positions.ctypes.data)
    binder.bind_input("attention_mask", np.int32, (1, length), mask.ctypes.data)
    kept = [ids, positions]  # the bound arrays must outlive the run
    for name, block in cache.items():
        kv_dim = block.shape[2]
        binder.bind_input("past_" + name, np.float32, (0, 1, kv_dim), block.ctypes.data)
        binder.bind_output("new_" + name, np.float32, (length, 1, kv_dim), block.ctypes.data)
        # the same values as new_*, bound apart so that no two outputs overlap
        kept.append(np.zeros((length, 1, kv_dim), np.float32))
        binder.bind_output("present_" + name, np.float32, kept[-1].shape, kept[-1].ctypes.data)
    io.bind_output("logits", "cpu")  # (1, prompt, vocab): ONNX Runtime allocates it, once
    session.run_with_iobinding(io, options)


def floor_tokens_per_second(onnx_path: str, prompt: Sequence[int], n: int, requests: int,
                            threads: int) -> List[float]:
    """tokens/s of each of ``requests`` greedy requests, after one short warm-up request."""
    from runtime.generate import open_decoder

    info, _ = open_decoder(onnx_path)
    if len(prompt) + n > info.max_seq_len:
        raise ToolkitError(f"{len(prompt)} prompt tokens + {n} exceed {onnx_path}'s context of "
                           f"{info.max_seq_len} positions")
    session = open_floor_session(onnx_path, threads)
    floor_generate(session, info, prompt, 8)
    rates = []
    for _ in range(requests):
        start = time.perf_counter()
        floor_generate(session, info, prompt, n)
        rates.append(n / (time.perf_counter() - start))
    return rates


@click.command()
@click.option("--onnx", "onnx_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="decoder .onnx with its sidecar beside it")
@click.option("--tokens", default=450, show_default=True, help="greedy tokens a request")
@click.option("--prompt-tokens", default=32, show_default=True,
              help="prompt length (ids 5, 6, ..., as benchmarks/peers.py)")
@click.option("--requests", default=5, show_default=True)
@click.option("--threads", default=2, show_default=True, help="ONNX Runtime intra-op threads")
def main(onnx_path: str, tokens: int, prompt_tokens: int, requests: int, threads: int) -> None:
    prompt = list(range(5, 5 + prompt_tokens))
    try:
        rates = floor_tokens_per_second(onnx_path, prompt, tokens, requests, threads)
    except ToolkitError as exc:
        raise click.ClickException(str(exc)) from None
    for index, rate in enumerate(rates):
        click.echo(f"request {index + 1}: {rate:.0f} tokens/s")
    click.echo(f"best of {len(rates)}: {max(rates):.0f} tokens/s ({onnx_path}, {tokens} tokens, "
               f"{threads} threads)")


if __name__ == "__main__":
    main()
