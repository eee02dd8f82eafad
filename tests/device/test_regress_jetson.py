"""On-device latency regression test (``pytest -m jetson``, ``make regress``): run the suite on
this Jetson's TensorRT plans and compare with this device's baseline (``make baseline``), by
``benchmarks.regress``: p50/p99 latency, tokens/s and energy within max(floor, k x their spread
over the suite's interleaved rounds), accuracy by the gate. No baseline of this device (module,
JetPack, TensorRT, power mode): skipped with how to record one.

Environment:
- ``BENCH_MODELS_DIR`` (default ``models``), ``BENCH_ENGINES_DIR`` (default ``engines``): where
  ``<model>.onnx`` and ``<model>.<precision>.plan`` are; a missing FP16 plan is built first.
- ``BENCH_DATA``: evaluation data (a DIR, or an ``.eval.npz`` written on the host by
  ``benchmarks.accuracy.save_eval_set``); without it accuracy is not compared.
- ``BENCH_ALLOW_UNLOCKED_CLOCKS=1``: measure although the clocks are not locked. Without it the
  test refuses: with the governor free, a latency change says more about DVFS than the code.

Elsewhere (not a Jetson) it skips with the reason.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

pytestmark = pytest.mark.jetson

ALLOW_UNLOCKED = "BENCH_ALLOW_UNLOCKED_CLOCKS"


@pytest.fixture(scope="module")
def device_state():
    from jetson.device_state import collect

    state = collect()
    if not state["is_jetson"]:
        pytest.skip("not a Jetson (no device-tree model, nv_tegra_release or nvidia-l4t-core): "
                    "the on-device regression test runs on the device")
    if importlib.util.find_spec("tensorrt") is None:
        pytest.skip("TensorRT is not importable here (use the JetPack Python / a venv with "
                    "--system-site-packages)")
    if state["clocks_locked"] is not True and os.environ.get(ALLOW_UNLOCKED) != "1":
        pytest.fail(f"clocks are not locked (clocks_locked={state['clocks_locked']}): run "
                    f"`sudo jetson_clocks` first, or set {ALLOW_UNLOCKED}=1 to measure anyway")
    return state


def _ensure_fp16_plan(model: str, models: Path, engines: Path) -> None:
    plan = engines / f"{model}.fp16.plan"
    if not plan.is_file():
        from engines.build import build_engine
        from engines.builder_config import BuildOptions

        build_engine(models / f"{model}.onnx", plan, BuildOptions(precision="fp16"))


@pytest.mark.parametrize("model", ["imdb", "stories"])
def test_no_regression_against_this_devices_baseline(device_state, model):
    from benchmarks import regress, suite

    models = Path(os.environ.get("BENCH_MODELS_DIR", "models"))
    engines = Path(os.environ.get("BENCH_ENGINES_DIR", "engines"))
    if not (models / f"{model}.onnx").is_file():
        pytest.skip(f"no {models / (model + '.onnx')} (set BENCH_MODELS_DIR)")
    _ensure_fp16_plan(model, models, engines)
    report = suite.run_suite(model, models, engines, data=os.environ.get("BENCH_DATA"),
                             progress=False)
    trt_rows = [r for r in report["results"] if r["engine"] == "tensorrt"]
    failed = [f"{r['backend']}: {r['reason']}" for r in trt_rows if r["status"] == "failed"]
    assert not failed, "TensorRT rows failed: " + "; ".join(failed)
    ran = [r for r in trt_rows if r["status"] == "ran"]
    assert ran, "no TensorRT row ran (the FP16 plan was just built)"
    outcome = regress.check_report({**report, "results": ran})
    lines = regress.summary_lines(outcome, model)
    print("\n".join(lines))
    if not outcome["results"]:
        pytest.skip(lines[0])  # no baseline of this device yet: how to record one
    assert not regress.regressed(outcome), "\n".join(lines)
