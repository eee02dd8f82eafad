"""The CPU regression test of CI: the runtime's own overhead, measured as ratios within one run
on ONNX Runtime (benchmarks/ratios.py), against fixed bounds.

Why fixed bounds and not a committed baseline: these ratios (runtime against a bare ONNX Runtime
session, late against early decode position, bytes per decode step) compare two things timed
side by side on the same machine, so they do not depend on the CPU's speed the way absolute
times do; a baseline keyed by CPU model would instead be missing on every new CI runner and
protect nothing there. The bounds sit well above the run-to-run spread measured on this
project's 2-core CI-like machine (AMD EPYC, 2 visible cores shared with other jobs), 7 runs
each in a fresh process, committed fixtures, default rounds:

| figure | 7 medians | range / median | bound |
|---|---|---|---|
| classifier_overhead (tiny_classifier b1 s64, 300 rounds) | 1.430-1.551, med 1.466 | 8.3% | 2.0 |
| decode_overhead (tiny_decoder_long 188 tokens, 30 rounds) | 1.762-2.271, med 2.033 | 25.0% | 3.0 |
| position_ratio (tiny_decoder_long, position 168 / 24) | 1.021-1.168, med 1.075 | 13.6% | 1.5 |
| decode net bytes per step (tracemalloc, 100+ steps) | 0.82 in all 7 | 0 | 64 |
| decode transient peak bytes within a step | 892 in all 7 | 0 | 8192 |

On Python 3.8 / numpy 1.24 / onnxruntime 1.19 (.venv-device), 5 runs: classifier_overhead
1.219-1.270, decode_overhead 1.649-1.874, position_ratio 1.090-1.241, 0.82 net and 732 transient
bytes per step in all 5.

A timed figure over its bound is measured once more and fails only if it is over again (a load
burst on a shared CI machine rarely lasts two measurements; a regression always does). A KV
cache copied per step (49,152 bytes per block of this fixture at batch 1) fails the transient
bound deterministically; an extra ~50% of per-step runtime work fails decode_overhead.
"""
from __future__ import annotations

from benchmarks import ratios

BOUNDS = {"classifier_overhead": 2.0, "decode_overhead": 3.0, "position_ratio": 1.5}
NET_BYTES_PER_STEP = 64
TRANSIENT_BYTES = 8192


def _median(result):
    return result["ratio"]["median"]


def _check_ratio(name: str, measure) -> dict:
    """Measure; over the bound, measure again; fail with both figures if still over."""
    first = measure()
    if _median(first) <= BOUNDS[name]:
        return first
    second = measure()
    assert _median(second) <= BOUNDS[name], (
        f"{name} regressed: median ratio {_median(first):.3f} then {_median(second):.3f} "
        f"(spread {second['ratio']['spread']:.0%}, n={second['ratio']['n']}) > bound "
        f"{BOUNDS[name]} (measured 7-run range in this file's docstring); figures: {second}")
    return second


def test_classifier_runtime_overhead_vs_bare_session(tiny_classifier_onnx):
    result = _check_ratio("classifier_overhead",
                          lambda: ratios.classifier_overhead(tiny_classifier_onnx))
    assert result["max_abs_logit_diff"] < 1e-5  # the two sides computed the same thing
    assert result["ratio"]["n"] == ratios.CLASSIFIER_ROUNDS
    assert result["ratio"]["median"] > 0.5  # the runtime cannot be twice as fast as bare ORT


def test_decode_runtime_overhead_vs_bare_loop(tiny_decoder_long_onnx):
    result = _check_ratio("decode_overhead",
                          lambda: ratios.decode_overhead(tiny_decoder_long_onnx))
    assert result["same_tokens"], "runtime and bare ONNX Runtime decoded different tokens"
    assert result["new_tokens"] == 192 - 4  # the whole context after a 4-token prompt


def test_decode_time_late_vs_early_position(tiny_decoder_long_onnx):
    result = _check_ratio("position_ratio",
                          lambda: ratios.position_ratio(tiny_decoder_long_onnx))
    assert (result["early"], result["late"]) == (24, 168)


def test_decode_step_allocates_nothing_that_grows(tiny_decoder_long_onnx):
    result = ratios.decode_allocations(tiny_decoder_long_onnx)
    assert result["steps"] == 100
    assert result["net_bytes_per_step"] <= NET_BYTES_PER_STEP, result
    assert result["peak_transient_bytes"] <= TRANSIENT_BYTES, (
        f"a decode step held {result['peak_transient_bytes']} bytes at once (bound "
        f"{TRANSIENT_BYTES}; measured 892): something is copied or allocated per token")
