"""The PyTorch eager row of the suite. HOST ONLY: imports torch and ``train/`` (allowed for
host-side benchmark modules whose names say so; CONTRIBUTING.md, "Layers and imports").

Same figures and keys as ``benchmarks.runners.measure_session_row``: accuracy through the
calibration gate's evaluation (the model's forward presented as a session), the classifier
latency sweep on the same random ids, and for the decoder prefill/decode tokens/s and per-token
time against position from ``train.generate`` (its KV cache has the runtime's layout).
"""
from __future__ import annotations

import time
from typing import Any, Dict, List

import numpy as np

from benchmarks import accuracy as acc
from benchmarks.measure import PeakMemory, ms_near, per_token_vs_position, size_on_disk
from runtime.bench import latency_stats


def measure_torch_row(backend, ctx) -> Dict[str, Any]:
    import torch

    from train.checkpoint import load_checkpoint

    row: Dict[str, Any] = {"size_bytes": size_on_disk(backend.path), "notes": []}
    with PeakMemory() as memory, torch.inference_mode():
        model = load_checkpoint(str(backend.path), kind=ctx.kind).model.eval()
        if ctx.eval_data is not None:
            row["accuracy"] = acc.evaluate(_adapter(model, ctx), ctx.eval_data, ctx.sidecar,
                                           ctx.tokenizer_file)
        if ctx.kind == "classifier":
            row["latency"] = classifier_sweep(model, ctx)
        else:
            row.update(decoder_figures(model, ctx))
    row["memory"] = memory.as_dict()
    return row


def _adapter(model, ctx) -> acc.GateAdapter:
    import torch

    if ctx.kind == "classifier":
        def run(feeds):
            logits = model(torch.from_numpy(feeds["input_ids"]).long(),
                           torch.from_numpy(feeds["attention_mask"]))
            return {"logits": logits.float().numpy()}
        return acc.GateAdapter(run, ["logits"])

    def run_decoder(feeds):  # the gate's decoder feeds are prefill only (empty past)
        logits, _, _ = model(torch.from_numpy(feeds["input_ids"]).long(),
                             torch.from_numpy(feeds["position_ids"]).long(),
                             torch.from_numpy(feeds["attention_mask"]))
        return {"logits": logits.float().numpy()}
    return acc.GateAdapter(run_decoder, ["logits"])


def _timed_calls(fn, warmup: int, iterations: int) -> List[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iterations):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def classifier_sweep(model, ctx) -> List[Dict[str, Any]]:
    import torch

    rng = np.random.default_rng(0)  # the ids runtime.bench.bench_classifier draws
    rows = []
    for batch in ctx.batches:
        for seq in ctx.seqs:
            ids = torch.from_numpy(rng.integers(3, 200, (batch, seq)).astype(np.int64))
            mask = torch.ones_like(ids)
            stats = latency_stats(_timed_calls(lambda: model(ids, mask),  # noqa: B023
                                               ctx.warmup, ctx.iterations))
            rows.append({"batch": batch, "seq": seq, **stats,
                         "sequences_per_s": batch * 1e3 / stats["mean_ms"],
                         "tokens_per_s": batch * seq * 1e3 / stats["mean_ms"]})
    return rows


def decoder_figures(model, ctx) -> Dict[str, Any]:
    """Batch 1 only (train.generate decodes one row): prefill and decode of each prompt
    length, and per-token time against position over one long generation."""
    from train.generate import generate

    limit = model.cfg.max_seq_len
    rng = np.random.default_rng(0)
    sweep = []
    for seq in ctx.seqs:
        if seq + ctx.new_tokens > limit:
            continue
        prompt = rng.integers(3, ctx.sidecar["vocab_size"], seq).tolist()
        runs = [_stamped(generate, model, prompt, ctx.new_tokens)
                for _ in range(ctx.warmup + ctx.iterations)][ctx.warmup:]
        prefill = latency_stats([r[0] for r in runs])
        decode = latency_stats(np.concatenate([r[1] for r in runs]))
        sweep.append({"batch": 1, "seq": seq, "new_tokens": ctx.new_tokens,
                      **{f"prefill_{k}": v for k, v in prefill.items()},
                      "prefill_tokens_per_s": seq * 1e3 / prefill["mean_ms"],
                      **{f"decode_{k}": v for k, v in decode.items()},
                      "decode_tokens_per_s": 1e3 / decode["mean_ms"]})
    prompt = rng.integers(3, ctx.sidecar["vocab_size"], 4).tolist()
    _, step_ms, positions = _stamped(generate, model, prompt, limit - 4, with_positions=True)
    return {"latency": sweep,
            "per_token": {"prompt_tokens": 4, "new_tokens": limit - 4,
                          "curve": per_token_vs_position(positions, step_ms),
                          "at": {str(p): ms_near(positions, step_ms, p) for p in ctx.positions
                                 if p < limit - 1}}}


def _stamped(generate, model, prompt, n: int, with_positions: bool = False):
    """(prefill ms, decode step ms (n-1,), positions) of one greedy generation."""
    stamps: List[float] = []
    start = time.perf_counter()
    generate(model, prompt, n, eos_id=None, on_token=lambda _t: stamps.append(time.perf_counter()))
    prefill_ms = (stamps[0] - start) * 1e3
    step_ms = np.diff(np.asarray(stamps)) * 1e3  # (n - 1,) ms
    positions = len(prompt) + np.arange(len(step_ms), dtype=np.int64)  # past before each step
    return (prefill_ms, step_ms, positions) if with_positions else (prefill_ms, step_ms)
