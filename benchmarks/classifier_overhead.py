"""What the runtime adds over a bare ONNX Runtime call, for the classifier.

    python benchmarks/classifier_overhead.py --onnx models/imdb.onnx --batch 1,8 --seq 256 \
        --output results/classifier_overhead.json

On the same model and the same token ids (random, every row ``--seq`` long), per batch size:

- runtime: ``runtime.classify.Classifier.logits_for_rows`` (padding into the preallocated
  buffers, the profile check, IOBinding run, read-back), i.e. everything but tokenizing;
- bare: ``onnxruntime.InferenceSession.run(None, feeds)`` on prepared numpy arrays, with the same
  providers and default session options.

The two are timed alternately, iteration by iteration (the side that goes first alternating),
so load on a shared machine hits both alike, in ``--repeats`` blocks of ``--iterations``.
Printed: median/p90 latency of each over all iterations, and the overhead in percent of the bare
median as the median over the blocks with its spread (min..max); the logits of both are
compared too (they must agree).
"""
from __future__ import annotations

if __package__ in (None, ""):  # run by path: the repository root replaces benchmarks/ on sys.path
    import os
    import sys

    _HERE = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
    sys.path.insert(0, os.path.dirname(_HERE))

from typing import Any, Dict, List, Sequence

import click
import numpy as np

from common.errors import ToolkitError, exit_on_toolkit_error


def measure_point(classifier, bare, batch: int, seq: int, warmup: int, iterations: int,
                  rng: np.random.Generator, repeats: int = 1) -> Dict[str, Any]:
    """Interleaved runtime and bare runs on the same (batch, seq) ids, in ``repeats`` blocks."""
    from benchmarks.measure import interleaved, median_spread
    from benchmarks.report import latency_stats, overhead_percent

    ids = rng.integers(3, 200, (batch, seq)).astype(np.int32)  # (batch, seq) int32
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}  # (batch, seq) int32 each
    rows = ids.tolist()
    runtime_ms: List[float] = []
    bare_ms: List[float] = []
    overheads: List[float] = []
    for block in range(repeats):
        times = interleaved({"runtime": lambda: classifier.logits_for_rows(rows),
                             "bare": lambda: bare.run(None, feeds)},
                            iterations, warmup=warmup if block == 0 else 0)
        runtime_ms += times["runtime"]
        bare_ms += times["bare"]
        overheads.append(overhead_percent(float(np.median(times["bare"])),
                                          float(np.median(times["runtime"]))))
    max_diff = float(np.abs(classifier.logits_for_rows(rows) - bare.run(None, feeds)[0]).max())
    runtime, plain = latency_stats(runtime_ms), latency_stats(bare_ms)
    spread = median_spread(overheads)
    return {"batch": batch, "seq": seq,
            "runtime_p50_ms": runtime["p50_ms"], "runtime_p90_ms": runtime["p90_ms"],
            "bare_p50_ms": plain["p50_ms"], "bare_p90_ms": plain["p90_ms"],
            "overhead_percent": spread["median"], "overhead_percent_min": spread["min"],
            "overhead_percent_max": spread["max"],
            "overhead_ms": runtime["p50_ms"] - plain["p50_ms"],
            "max_abs_logit_diff": max_diff, "runtime": runtime, "bare": plain}


def compare(onnx_path: str, batches: Sequence[int], seq: int, warmup: int, iterations: int,
            seed: int = 0, repeats: int = 1) -> Dict[str, Any]:
    import onnxruntime as ort

    from benchmarks.report import build_report
    from runtime.classify import open_classifier

    session, classifier = open_classifier(onnx_path, batch_size=max(batches))
    with session:
        if seq > classifier.max_len:
            raise ToolkitError(f"--seq {seq}: {onnx_path} takes at most {classifier.max_len}")
        for batch in batches:
            session.find_profile({"input_ids": (batch, seq), "attention_mask": (batch, seq)})
        bare = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        rng = np.random.default_rng(seed)
        results = [measure_point(classifier, bare, b, seq, warmup, iterations, rng, repeats)
                   for b in batches]
        classifier.close()
    settings = {"onnx": str(onnx_path), "batch": list(batches), "seq": seq, "warmup": warmup,
                "iterations": iterations, "repeats": repeats,
                "providers": ["CPUExecutionProvider"]}
    return build_report("benchmarks/classifier_overhead.py", settings, results, "onnxruntime")


@click.command()
@click.option("--onnx", "onnx_path", required=True, type=click.Path(dir_okay=False),
              help="Classifier ONNX model (with its sidecar and tokenizer).")
@click.option("--batch", "batch_text", default="1,8", show_default=True,
              help="Batch sizes, comma-separated.")
@click.option("--seq", default=256, show_default=True, type=int)
@click.option("--warmup", default=20, show_default=True, type=int)
@click.option("--iterations", default=200, show_default=True, type=int,
              help="interleaved runs per side and block")
@click.option("--repeats", default=5, show_default=True, type=int,
              help="blocks; the overhead is their median, with min..max")
@click.option("--output", type=click.Path(dir_okay=False), default=None,
              help="JSON report, e.g. results/classifier_overhead.json.")
@exit_on_toolkit_error
def main(onnx_path, batch_text, seq, warmup, iterations, repeats, output) -> None:
    """Latency of runtime classification vs a bare InferenceSession.run, same inputs."""
    from benchmarks.report import format_table, write_report
    from runtime.bench import parse_int_list

    if iterations < 1 or warmup < 0 or repeats < 1:
        raise ToolkitError("expected --iterations >= 1, --warmup >= 0 and --repeats >= 1")
    report = compare(onnx_path, parse_int_list(batch_text, "--batch"), seq, warmup, iterations,
                     repeats=repeats)
    click.echo(format_table(report["results"], [
        ("batch", "batch", "d"), ("seq", "seq", "d"),
        ("runtime_p50_ms", "runtime p50 ms", ".3f"), ("bare_p50_ms", "bare p50 ms", ".3f"),
        ("runtime_p90_ms", "runtime p90 ms", ".3f"), ("bare_p90_ms", "bare p90 ms", ".3f"),
        ("overhead_ms", "overhead ms", ".3f"), ("overhead_percent", "overhead %", ".1f"),
        ("overhead_percent_min", "min %", ".1f"), ("overhead_percent_max", "max %", ".1f"),
        ("max_abs_logit_diff", "max |diff|", ".1e"),
    ]))
    if output:
        click.echo(f"wrote {write_report(output, report)}")


if __name__ == "__main__":
    main()
