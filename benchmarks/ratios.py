"""The CPU ratio checks behind the CI regression test: figures measured within ONE run, as
ratios of two things timed side by side, so they hold on any CPU and under load.

    python -m benchmarks.ratios --classifier models/imdb.onnx --decoder models/stories.onnx

- ``classifier_overhead``: the runtime's classification (``Classifier.logits_for_rows``: padding
  into its buffers, the profile check, IOBinding, read-back) against a bare
  ``InferenceSession.run`` on prepared numpy arrays, same ids.
- ``decode_overhead``: a whole greedy generation through ``runtime.generate.Generator`` against
  the shortest decode loop one writes on bare ONNX Runtime (``run(None, feeds)`` per step, the
  new keys/values written into a numpy cache, the past fed as its prefix). Both produce the
  same tokens, which is checked.
- ``position_ratio``: the runtime's decode step time at a late cache position against an early
  one (10 and 400 on the TinyStories model; the fixtures' 64-position context gives 8 and 56).
- ``decode_allocations``: Python-level bytes (numpy buffers included, tracemalloc) per decode
  step: net (kept) and the largest transient peak of one step. A copy of the KV cache per step
  shows up here whatever the timing noise.
- ``int8_vs_fp32`` (host side: needs a Q/DQ graph): the calibration gate's drop and agreement.

Timed sides are interleaved (``benchmarks.measure.interleaved``) and every timed figure is the
median over ``rounds`` per-round ratios, with its spread. The tolerances of the CI test
(tests/device/test_regress_cpu.py) come from the spread of these figures over repeated runs.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Sequence

import click
import numpy as np

from benchmarks.measure import interleaved, median_spread, ms_near, per_round_ratios
from common.errors import ToolkitError, exit_on_toolkit_error

# Rounds per figure. A classification of a tiny model takes ~0.3 ms: single calls alternate
# (a load burst then hits one round, not a stretch of one side), and many rounds are cheap.
CLASSIFIER_ROUNDS = 300
DECODE_ROUNDS = 30


def _bare_session(onnx_path):
    import onnxruntime as ort

    return ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])


# --- classifier ------------------------------------------------------------------------------
def classifier_overhead(onnx_path, batch: int = 1, seq: int | None = None,
                        rounds: int = CLASSIFIER_ROUNDS, seed: int = 0) -> Dict[str, Any]:
    """Runtime / bare ms per classification of the same (batch, seq) ids; median and spread."""
    from runtime.classify import open_classifier

    session, classifier = open_classifier(str(onnx_path), batch_size=batch)
    with session:
        seq = seq or classifier.max_len
        ids = np.random.default_rng(seed).integers(3, 200, (batch, seq)).astype(np.int32)
        feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}  # (batch, seq) int32
        rows = ids.tolist()
        bare = _bare_session(onnx_path)
        diff = float(np.abs(classifier.logits_for_rows(rows) - bare.run(None, feeds)[0]).max())
        times = interleaved({"runtime": lambda: classifier.logits_for_rows(rows),
                             "bare": lambda: bare.run(None, feeds)}, rounds, warmup=20)
        classifier.close()
    ratios = per_round_ratios(times["runtime"], times["bare"])
    return {"figure": "classifier_overhead", "batch": batch, "seq": seq,
            "runtime_ms": float(np.median(times["runtime"])),
            "bare_ms": float(np.median(times["bare"])),
            "max_abs_logit_diff": diff, "ratio": median_spread(ratios)}


# --- decoder ---------------------------------------------------------------------------------
class BareDecodeLoop:
    """Greedy decoding on a bare ``InferenceSession``: numpy feeds, the cache a numpy array
    per layer and K/V, the past fed as a prefix view (no copy), new keys written in place."""

    def __init__(self, onnx_path, info: Dict[str, Any], max_seq: int):
        self.sess = _bare_session(onnx_path)
        self.names = [o.name for o in self.sess.get_outputs()]
        cache = info["kv_cache"]
        self.layers, kv_dim = int(cache["layers"]), int(cache["kv_dim"])
        self.cache = {f"{kind}_{layer}": np.zeros((max_seq, 1, kv_dim), np.float32)
                      for layer in range(self.layers) for kind in ("key", "value")}
        # each (max_seq, batch 1, kv_dim) fp32, position-major as the runtime's cache

    def generate(self, prompt: Sequence[int], new_tokens: int) -> List[int]:
        ids = np.asarray([prompt], np.int32)  # (1, prompt) int32
        past, tokens = 0, []
        for _ in range(new_tokens):
            new = ids.shape[1]
            feeds = {"input_ids": ids,
                     "position_ids": np.arange(past, past + new, dtype=np.int32)[None],
                     "attention_mask": np.ones((1, past + new), np.int32)}
            for name, block in self.cache.items():
                feeds[f"past_{name}"] = block[:past]  # (past, 1, kv_dim) view
            out = dict(zip(self.names, self.sess.run(None, feeds)))
            for name, block in self.cache.items():
                block[past:past + new] = out[f"new_{name}"]
            values, indices = out["topk_values"][0], out["topk_indices"][0]  # (K,) each
            token = int(indices[int(np.argmax(values))])
            tokens.append(token)
            past += new
            ids = np.asarray([[token]], np.int32)  # (1, 1)
        return tokens


def _decoder(onnx_path):
    """(sidecar, session, Generator at batch 1 with end-of-text ignored, tokenizer and all)."""
    from runtime.generate import Generator, open_decoder
    from runtime.session import open_session
    from runtime.tokenization import model_info

    decoder_info, tokenizer = open_decoder(str(onnx_path))
    session = open_session(str(onnx_path))
    generator = Generator(session, tokenizer, dataclasses.replace(decoder_info, eos_id=None),
                          max_batch=1)
    return model_info(str(onnx_path)), session, generator


def _prompt(vocab: int, length: int, seed: int) -> List[int]:
    return np.random.default_rng(seed).integers(3, vocab, length).tolist()


def decode_overhead(onnx_path, prompt_len: int = 4, new_tokens: int | None = None,
                    rounds: int = DECODE_ROUNDS, seed: int = 0) -> Dict[str, Any]:
    """Runtime / bare ms of the same greedy generation; median and spread of per-round ratios."""
    from runtime.sampling import Sampler

    info, session, generator = _decoder(onnx_path)
    with session:
        n = new_tokens or generator.context_limit - prompt_len
        prompt = _prompt(int(info["vocab_size"]), prompt_len, seed)
        bare = BareDecodeLoop(onnx_path, info, generator.context_limit)
        runtime_tokens = generator.generate_ids([prompt], n, Sampler()).tokens[0]
        bare_tokens = bare.generate(prompt, n)
        times = interleaved({"runtime": lambda: generator.generate_ids([prompt], n, Sampler()),
                             "bare": lambda: bare.generate(prompt, n)}, rounds)
        generator.close()
    ratios = per_round_ratios(times["runtime"], times["bare"])
    return {"figure": "decode_overhead", "prompt_tokens": prompt_len, "new_tokens": n,
            "runtime_ms_per_token": float(np.median(times["runtime"])) / n,
            "bare_ms_per_token": float(np.median(times["bare"])) / n,
            "same_tokens": runtime_tokens == bare_tokens, "ratio": median_spread(ratios)}


def default_positions(context: int) -> Sequence[int]:
    """(early, late): 10 and 400 where the context allows, else 1/8 and 7/8 of it."""
    if context > 420:
        return 10, 400
    return max(2, context // 8), context * 7 // 8


def position_ratio(onnx_path, positions: Sequence[int] | None = None, rounds: int = DECODE_ROUNDS,
                   seed: int = 0) -> Dict[str, Any]:
    """Runtime decode step ms at the late position / at the early one, per generation."""
    from runtime.sampling import Sampler

    info, session, generator = _decoder(onnx_path)
    with session:
        early, late = positions or default_positions(generator.context_limit)
        prompt_len = max(1, early - 4)
        n = min(late + 8, generator.context_limit) - prompt_len
        if late >= prompt_len + n:
            raise ToolkitError(f"position {late}: {onnx_path} holds {generator.context_limit}")
        prompt = _prompt(int(info["vocab_size"]), prompt_len, seed)
        generator.generate_ids([prompt], n, Sampler())  # warm-up
        ratios, at_early, at_late = [], [], []
        for _ in range(rounds):
            result = generator.generate_ids([prompt], n, Sampler())
            a = ms_near(result.decode_past, result.decode_ms, early, window=3)
            b = ms_near(result.decode_past, result.decode_ms, late, window=3)
            at_early.append(a)
            at_late.append(b)
            ratios.append(b / a)
        generator.close()
    return {"figure": "position_ratio", "early": early, "late": late,
            "early_ms": float(np.median(at_early)), "late_ms": float(np.median(at_late)),
            "ratio": median_spread(ratios)}


def decode_allocations(onnx_path, steps: int | None = None, seed: int = 0) -> Dict[str, Any]:
    """Bytes per decode step, traced: net kept per step over ``steps`` steps (one continuous
    trace) and the largest transient peak within one step (the trace restarted every step)."""
    import tracemalloc

    from runtime.sampling import Sampler

    info, session, generator = _decoder(onnx_path)
    with session:
        first = 4
        steps = steps or min(100, generator.context_limit - first - 4)
        prompt = _prompt(int(info["vocab_size"]), 2, seed)
        n = first + steps + 1
        generator.generate_ids([prompt], n, Sampler())  # warm-up: lazy allocations happen once
        held = np.zeros(2, np.int64)  # (2,) traced bytes after token `first` and `first+steps`
        peaks: List[int] = []
        count = [0]

        def net(_row, _token, _piece) -> None:
            count[0] += 1
            if count[0] in (first, first + steps):
                held[int(count[0] != first)] = tracemalloc.get_traced_memory()[0]

        def transient(_row, _token, _piece) -> None:
            count[0] += 1
            current, peak = tracemalloc.get_traced_memory()
            if first < count[0] <= first + steps:
                peaks.append(peak - current)
            tracemalloc.stop()  # restart: the next step's peak starts from zero (3.8 has no
            tracemalloc.start()  # reset_peak)

        for callback in (net, transient):
            count[0] = 0
            tracemalloc.start()
            try:
                generator.generate_ids([prompt], n, Sampler(), callback)
            finally:
                tracemalloc.stop()
        generator.close()
    return {"figure": "decode_allocations", "steps": steps,
            "net_bytes_per_step": float(held[1] - held[0]) / steps,
            "peak_transient_bytes": int(max(peaks)),
            "median_transient_bytes": float(np.median(peaks))}


# --- accuracy (host side) ----------------------------------------------------------------------
LOGIT_ROWS = 16  # rows whose full logits are compared (the gate keeps only top-1 for decoders)


def int8_vs_fp32(fp32_onnx, int8_onnx, data) -> Dict[str, Any]:
    """The calibration gate's comparison on ``data`` (``calibration.gate.EvalData``), plus the
    RMS logit error of INT8 relative to the spread of the FP32 logits over the first rows: on
    an untrained model the accuracy barely moves, but that error still shows which products
    were quantized."""
    from calibration import gate
    from common.artifacts import load_onnx_sidecar

    sidecar = load_onnx_sidecar(fp32_onnx)
    fp32 = gate.evaluate_model(fp32_onnx, data, sidecar)
    int8 = gate.evaluate_model(int8_onnx, data, sidecar)
    result = gate.compare(fp32, int8, data)
    metric = "accuracy" if data.kind == "classifier" else "loss"
    return {"figure": "int8_vs_fp32", "metric": metric, "fp32": fp32[metric],
            "int8": int8[metric], "drop": result["drop"], "drop_unit": gate.DROP_UNIT[data.kind],
            "agreement": result.get("agreement", result.get("top1_agreement")),
            "logit_relative_rmse": logit_relative_rmse(fp32_onnx, int8_onnx, data, sidecar)}


def logit_relative_rmse(fp32_onnx, int8_onnx, data, sidecar) -> float:
    """Median over rows of RMS(int8 - fp32 logits) / std(fp32 logits), one row per run."""
    from calibration import gate

    a, b = gate.open_session(fp32_onnx), gate.open_session(int8_onnx)
    errors = []
    for row in data.rows[:LOGIT_ROWS]:
        feeds = _single_row_feeds(row, data.kind, sidecar)
        fp32, int8 = a.run(["logits"], feeds)[0], b.run(["logits"], feeds)[0]
        errors.append(float(np.sqrt(np.mean((int8 - fp32) ** 2)) / np.std(fp32)))
    return float(np.median(errors))


def _single_row_feeds(row: Sequence[int], kind: str, sidecar) -> Dict[str, np.ndarray]:
    if kind == "classifier":
        ids = np.asarray([row], np.int32)  # (1, seq)
        return {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    ids = np.asarray([row[:-1]], np.int32)  # (1, seq): the window's inputs, prefill
    feeds = {"input_ids": ids, "position_ids": np.arange(ids.shape[1], dtype=np.int32)[None],
             "attention_mask": np.ones_like(ids)}
    kv_dim = sidecar["kv_cache"]["kv_dim"]
    for t in sidecar["inputs"]:
        if t["name"].startswith("past_"):
            feeds[t["name"]] = np.zeros((0, 1, kv_dim), np.float32)  # (past 0, batch, kv_dim)
    return feeds


def run_all(classifier=None, decoder=None, rounds: int | None = None) -> List[Dict[str, Any]]:
    """Every figure for the models given; ``rounds`` overrides the per-figure defaults."""
    figures = []
    if classifier:
        figures.append({"model": str(classifier),
                        **classifier_overhead(classifier, rounds=rounds or CLASSIFIER_ROUNDS)})
    if decoder:
        figures.append({"model": str(decoder),
                        **decode_overhead(decoder, rounds=rounds or DECODE_ROUNDS)})
        figures.append({"model": str(decoder),
                        **position_ratio(decoder, rounds=rounds or DECODE_ROUNDS)})
        figures.append({"model": str(decoder), **decode_allocations(decoder)})
    return figures


@click.command()
@click.option("--classifier", type=click.Path(dir_okay=False), default=None)
@click.option("--decoder", type=click.Path(dir_okay=False), default=None)
@click.option("--rounds", default=None, type=int,
              help=f"rounds per figure [default: {CLASSIFIER_ROUNDS} classifier, "
                   f"{DECODE_ROUNDS} decoder]")
@click.option("--output", type=click.Path(dir_okay=False), default=None, help="JSON file.")
@exit_on_toolkit_error
def main(classifier, decoder, rounds, output) -> None:
    """Print the CPU ratio figures (median and spread of interleaved per-round ratios)."""
    if not classifier and not decoder:
        raise ToolkitError("give --classifier ONNX and/or --decoder ONNX")
    figures = run_all(classifier, decoder, rounds)
    for f in figures:
        ratio = f.get("ratio")
        text = (f"{ratio['median']:.3f} (spread {ratio['spread']:.1%}, n={ratio['n']})" if ratio
                else f"net {f['net_bytes_per_step']:.1f} B/step, transient peak "
                     f"{f['peak_transient_bytes']} B")
        click.echo(f"{f['figure']:<20} {text}")
    if output:
        from common.fileio import atomic_write_json

        click.echo(f"wrote {atomic_write_json(output, figures)}")


if __name__ == "__main__":
    main()
