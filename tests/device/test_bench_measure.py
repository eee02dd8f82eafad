"""benchmarks.measure and benchmarks.trtexec's parser: interleaving, median and spread, the
per-token curve, peak memory of a block, traced allocations, trtexec's summary text."""
from __future__ import annotations

import numpy as np
import pytest

from benchmarks import measure, trtexec
from common.errors import ToolkitError


def test_interleaved_rotates_which_side_goes_first():
    calls = []
    times = measure.interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b"),
                                 "c": lambda: calls.append("c")}, rounds=3, warmup=1)
    assert calls == list("abc" "bca" "cab" "abc")  # warm-up round, then 3 rotated rounds
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3, "c": 3}
    assert all(t >= 0 for v in times.values() for t in v)
    with pytest.raises(ToolkitError, match="rounds=0"):
        measure.interleaved({"a": lambda: None}, rounds=0)


def test_median_spread_and_ratios():
    s = measure.median_spread([1.0, 2.0, 3.0, 4.0, 10.0])
    assert s["median"] == 3.0 and s["min"] == 1.0 and s["max"] == 10.0 and s["n"] == 5
    assert s["spread"] == pytest.approx(9.0 / 3.0)
    assert s["iqr"] == pytest.approx((4.0 - 2.0) / 3.0)
    assert measure.per_round_ratios([2.0, 3.0, 1.0], [1.0, 0.0, 2.0]) == [2.0, 0.5]
    with pytest.raises(ToolkitError):
        measure.median_spread([])


def test_per_token_curve_follows_position():
    positions = np.arange(10, 410)  # (400,)
    step_ms = 0.1 + positions * 0.001  # grows linearly with the cache
    curve = measure.per_token_vs_position(positions, step_ms, bins=8)
    assert len(curve) == 8 and sum(c["steps"] for c in curve) == 400
    assert all(a["ms"] < b["ms"] for a, b in zip(curve, curve[1:]))
    assert measure.ms_near(positions, step_ms, 400) == pytest.approx(0.5)
    assert measure.ms_near(positions, step_ms, 1000) is None
    assert measure.per_token_vs_position(np.zeros(0), np.zeros(0)) == []


def test_peak_memory_sees_an_allocation_inside_the_block():
    with measure.PeakMemory() as small:
        pass
    with measure.PeakMemory() as big:
        block = np.ones(64 * 1024 * 1024, np.uint8)  # 64 MiB, touched
        del block
    assert big.peak_rss_mib is not None and small.peak_rss_mib is not None
    if big.scope == "block":  # Linux resets VmHWM: the first block's peak excludes the second
        assert big.peak_rss_mib >= small.peak_rss_mib + 50
    assert big.as_dict()["peak_rss_scope"] in ("block", "process")


def test_traced_allocations_net_and_peak():
    kept = []
    result = measure.traced_allocations(lambda: kept.append(np.zeros(100_000, np.uint8)))
    assert result["net_bytes"] >= 100_000 and result["peak_bytes"] >= 100_000
    transient = measure.traced_allocations(lambda: np.zeros(200_000, np.uint8).sum())
    assert transient["peak_bytes"] >= 200_000 and transient["net_bytes"] < 10_000


def test_size_on_disk_counts_external_data(tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"x" * 100)
    assert measure.size_on_disk(model) == 100
    (tmp_path / "m.onnx.data").write_bytes(b"y" * 50)
    assert measure.size_on_disk(model) == 150
    assert measure.engine_build_seconds(model) is None  # no manifest beside it


TRT10_SUMMARY = """\
[10/03/2024-10:47:59] [I] === Performance summary ===
[10/03/2024-10:47:59] [I] Throughput: 130.298 qps
[10/03/2024-10:47:59] [I] Latency: min = 5.38672 ms, max = 13.3664 ms, mean = 7.60628 ms, \
median = 7.16092 ms, percentile(90%) = 10.2996 ms, percentile(95%) = 10.8698 ms, \
percentile(99%) = 12.9675 ms
[10/03/2024-10:47:59] [I] Enqueue Time: min = 2.72876 ms, max = 15.0201 ms, mean = 7.63062 ms, \
median = 7.86694 ms, percentile(90%) = 10.1792 ms, percentile(95%) = 11.7217 ms, \
percentile(99%) = 14.1848 ms
[10/03/2024-10:47:59] [I] H2D Latency: min = 0.0065918 ms, max = 0.0698242 ms, \
mean = 0.0122212 ms, median = 0.00814819 ms, percentile(90%) = 0.0253906 ms, \
percentile(95%) = 0.0270996 ms, percentile(99%) = 0.0515137 ms
[10/03/2024-10:47:59] [I] GPU Compute Time: min = 5.34595 ms, max = 13.3388 ms, \
mean = 7.58404 ms, median = 7.14139 ms, percentile(90%) = 10.2881 ms, \
percentile(95%) = 10.8175 ms, percentile(99%) = 12.9485 ms
[10/03/2024-10:47:59] [I] D2H Latency: min = 0.00390625 ms, max = 0.110596 ms, \
mean = 0.0100141 ms, median = 0.00439453 ms, percentile(90%) = 0.0254517 ms, \
percentile(95%) = 0.0319824 ms, percentile(99%) = 0.0994873 ms
[10/03/2024-10:47:59] [I] Total Host Walltime: 3.00082 s
[10/03/2024-10:47:59] [I] Total GPU Compute Time: 2.96536 s
"""
# Older summaries drop some '=' signs (TensorRT 8.x on Jetson, as users paste them).
OLD_SUMMARY = """\
=== Performance summary ===
Throughput: 169.352 qps
Latency: min = 5.38959 ms, max 6.19507 ms, mean 5.93288 ms, median 6.02185 ms, \
percentile(99%) 6.17407 ms
GPU Compute Time: min = 3.17834 ms, max = 3.88306 ms, mean = 3.63242 ms, median = 3.71753 ms, \
percentile(99%) 3.87793 ms
"""


def test_trtexec_parser_reads_tensorrt_10_summary():
    parsed = trtexec.parse_summary(TRT10_SUMMARY)
    assert parsed["throughput_qps"] == 130.298 and parsed["host_walltime_s"] == 3.00082
    gpu = parsed["gpu_compute"]
    assert gpu == {"min_ms": 5.34595, "max_ms": 13.3388, "mean_ms": 7.58404,
                   "median_ms": 7.14139, "p90_ms": 10.2881, "p95_ms": 10.8175,
                   "p99_ms": 12.9485}
    assert parsed["latency"]["median_ms"] == 7.16092 and parsed["h2d"]["p99_ms"] == 0.0515137
    assert set(parsed) >= {"latency", "enqueue", "h2d", "d2h", "gpu_compute"}
    over = trtexec.overhead(7.5, parsed)
    assert over["runtime_overhead_ms"] == pytest.approx(7.5 - 7.14139)
    assert over["runtime_overhead_percent"] == pytest.approx(100 * (7.5 - 7.14139) / 7.14139)


def test_trtexec_parser_tolerates_missing_equals_and_refuses_no_summary():
    parsed = trtexec.parse_summary(OLD_SUMMARY)
    assert parsed["latency"]["max_ms"] == 6.19507 and parsed["latency"]["p99_ms"] == 6.17407
    assert parsed["gpu_compute"]["median_ms"] == 3.71753
    with pytest.raises(ToolkitError, match="GPU Compute Time"):
        trtexec.parse_summary("[I] Loading engine\n[E] Error[1]: invalid engine\n")


def test_trtexec_command_uses_the_same_shapes():
    sidecar = {"kv_cache": {"layers": 2, "kv_dim": 32}}
    shapes = trtexec.decoder_prefill_shapes(sidecar, 1, 16)
    assert shapes["input_ids"] == (1, 16) and shapes["past_value_1"] == (0, 1, 32)
    cmd = trtexec.command("trtexec", "e.plan", {"input_ids": (1, 256), "attention_mask": (1, 256)})
    assert "--loadEngine=e.plan" in cmd
    assert "--shapes=input_ids:1x256,attention_mask:1x256" in cmd


def test_classifier_overhead_reports_median_and_spread_of_blocks(tiny_classifier_onnx):
    from benchmarks.classifier_overhead import compare

    report = compare(str(tiny_classifier_onnx), [1], seq=16, warmup=1, iterations=4, repeats=3)
    row = report["results"][0]
    assert row["runtime"]["count"] == row["bare"]["count"] == 12  # 3 blocks x 4, interleaved
    assert row["overhead_percent_min"] <= row["overhead_percent"] <= row["overhead_percent_max"]
    assert report["settings"]["repeats"] == 3 and row["max_abs_logit_diff"] < 1e-5


def test_median_of_rounds_takes_medians_of_numbers_that_differ_and_keeps_the_rest():
    from benchmarks.measure import median_of_rounds

    rounds = [{"latency": [{"batch": 8, "seq": 64, "p50_ms": 3.0, "note": "a"}], "energy": None},
              {"latency": [{"batch": 8, "seq": 64, "p50_ms": 1.0, "note": "b"}], "energy": None},
              {"latency": [{"batch": 8, "seq": 64, "p50_ms": 2.5, "note": "c"}], "energy": None}]
    merged = median_of_rounds(rounds)
    point = merged["latency"][0]
    assert point == {"batch": 8, "seq": 64, "p50_ms": 2.5, "note": "a"}
    assert isinstance(point["batch"], int) and merged["energy"] is None
