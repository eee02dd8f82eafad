"""The device check (benchmarks/device_check*.py) where no TensorRT is: the whole run, which must
pass with every hardware step skipped naming what is missing; the step runner (failures,
dependencies, time budgets, killed subprocesses); and the judgements against the references."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks import device_check_compare as compare
from benchmarks.device_check import (
    SkipStep,
    Step,
    StepContext,
    StepTimeout,
    build_report,
    run_command,
    run_steps,
    write_report,
)
from common.errors import ToolkitError

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"


def _importable(module: str) -> bool:
    done = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True)
    return done.returncode == 0


# --- the whole run here --------------------------------------------------------------------
@pytest.fixture(scope="module")
def run_here(tmp_path_factory):
    if _importable("tensorrt"):
        pytest.skip("TensorRT is installed here: this test checks the run without it")
    out = tmp_path_factory.mktemp("device-check")
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_HOME", "TRITON_CONTAINER")}
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.device_check", "--out", str(out), "--no-models",
         "--suite-dir", str(out / "no-suite"), "--budget", "300"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    report = json.loads((out / "report.json").read_text()) if (out / "report.json").is_file() \
        else None
    return done, report, out, time.monotonic() - start


def test_run_here_passes_with_hardware_steps_skipped(run_here):
    done, report, out, seconds = run_here
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert report["ok"] is True and report["counts"]["failed"] == 0
    assert (out / "report.md").read_text().startswith("# Device check: PASSED")
    steps = {s["name"]: s for s in report["steps"]}
    assert steps["versions"]["status"] == "passed"
    assert report["versions"]["tensorrt"] is None and report["versions"]["python"]
    assert steps["tensorrt"]["status"] == "skipped"
    assert "TensorRT is not installed" in steps["tensorrt"]["message"]
    hardware = [s for s in report["steps"] if s["name"].startswith(
        ("parse-trt-", "build-", "classify-", "generate-", "bench-"))]
    assert len(hardware) >= 3 * 9  # 3 fixtures x 3 precisions x build/run/bench at least
    for step in hardware:
        assert step["status"] == "skipped", step
        assert "TensorRT is not installed" in step["message"], step
    assert "no tritonserver" in steps["triton"]["message"] or \
        "tritonclient" in steps["triton"]["message"]
    assert steps["regress"]["status"] == "skipped" and "no suite report" in \
        steps["regress"]["message"]
    assert seconds < 300


def test_run_here_checks_what_needs_no_hardware(run_here):
    _, report, out, _ = run_here
    steps = {s["name"]: s for s in report["steps"]}
    tables = [s for s in report["steps"] if s["name"].startswith("parse-table-")]
    assert {"parse-table-tiny_classifier", "parse-table-tiny_decoder"} <= {s["name"]
                                                                          for s in tables}
    for step in tables:
        name = step["name"][len("parse-table-"):]
        sidecar = json.loads((FIXTURES / f"{name}.onnx.json").read_text())
        if "tensorrt_parse" in sidecar or _importable("onnx"):
            assert step["status"] == "passed", step
            assert "8.6 ok" in step["message"], step
        else:
            assert step["status"] == "skipped" and "onnx is not installed" in step["message"]
    ort = [s for s in report["steps"] if s["name"].startswith("onnxruntime-")]
    assert len(ort) == 4  # every fixture with a committed reference, the feature one included
    assert "onnxruntime-tiny_features" in {s["name"] for s in ort}
    for step in ort:
        if _importable("onnxruntime"):
            assert step["status"] == "passed", step
        else:
            assert "ONNX Runtime is not installed" in step["message"]
    if _importable("onnxruntime"):
        assert "40/40, 40/40" in steps["onnxruntime-tiny_decoder"]["message"]
    assert report["tolerances"]["fp32"]["probability_atol"] == 1e-4
    md = (out / "report.md").read_text()
    assert all(f"| {s['name']} | {s['status']} |" in md for s in report["steps"])


# --- the step runner -----------------------------------------------------------------------
def _fails(ctx):
    raise ToolkitError("first line\nthe build failed: no engine")


def test_a_failed_step_is_recorded_and_the_run_goes_on():
    ran = []
    steps = [Step("a", _fails), Step("b", lambda ctx: ran.append("b") or "fine"),
             Step("c", lambda ctx: ran.append("c"), needs=("a",)),
             Step("d", lambda ctx: ran.append("d"), needs=("b",))]
    results = {r["name"]: r for r in run_steps(steps)}
    assert results["a"]["status"] == "failed"
    assert results["a"]["message"] == "the build failed: no engine"
    assert results["b"] == {**results["b"], "status": "passed", "message": "fine"}
    assert results["c"]["status"] == "skipped"
    assert results["c"]["message"] == "needs a, which failed: the build failed: no engine"
    assert results["d"]["status"] == "passed"
    assert ran == ["b", "d"]


def test_a_skip_carries_its_reason_down_the_chain():
    def missing(ctx):
        raise SkipStep("TensorRT is not installed here")

    results = run_steps([Step("trt", missing), Step("build", lambda c: None, ("trt",)),
                         Step("run", lambda c: None, ("build",)),
                         Step("broken", lambda c: 1 / 0)])
    assert [r["status"] for r in results] == ["skipped", "skipped", "skipped", "failed"]
    assert results[2]["message"] == ("needs build, which skipped: needs trt, which skipped: "
                                     "TensorRT is not installed here")
    assert results[3]["message"] == "ZeroDivisionError: division by zero"


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_the_overall_budget_fails_what_no_longer_fits():
    clock = FakeClock()

    def takes(seconds):
        def run(ctx):
            clock.now += seconds
            return f"{ctx.timeout_s:.0f}"
        return run

    steps = [Step("one", takes(40), budget_s=60), Step("two", takes(50), budget_s=60),
             Step("three", takes(11), budget_s=60), Step("four", takes(1), budget_s=60)]
    results = run_steps(steps, budget_s=100, clock=clock)
    assert [r["status"] for r in results] == ["passed", "passed", "failed", "failed"]
    assert results[1]["message"] == "60"  # its own budget: 60 of 60 s left overall
    assert results[2]["message"] == ("timed out: took 11.0 s (10 s left of the overall budget, "
                                      "step budget 60 s)")  # cut to what was left of the 100 s
    assert results[3]["message"].startswith("timed out: the overall budget of 100 s was spent")


def test_an_in_process_step_over_its_budget_is_timed_out():
    clock = FakeClock()

    def slow(ctx):
        clock.now += 12

    [result] = run_steps([Step("slow", slow, budget_s=10)], clock=clock)
    assert result["status"] == "failed"
    assert result["message"] == "timed out: took 12.0 s (step budget 10 s)"


def test_a_subprocess_past_its_deadline_is_killed(tmp_path):
    def sleeper(ctx):
        run_command(ctx, [sys.executable, "-c", "import time; time.sleep(30)"])

    start = time.monotonic()
    [result] = run_steps([Step("sleep", sleeper, budget_s=1.0)], log_dir=tmp_path)
    assert time.monotonic() - start < 10
    assert result["status"] == "failed" and result["message"].startswith(
        "timed out (step budget 1 s):")
    assert "(killed)" in result["message"]
    assert "[exit -9]" in (tmp_path / "sleep.log").read_text()


def test_a_failing_command_reports_its_last_line():
    ctx = StepContext("x", 30.0, time.monotonic, time.monotonic())
    code = "import sys; print('progress'); sys.stderr.write('warn\\nToolkitError: bad file\\n'); " \
           "sys.exit(3)"
    with pytest.raises(ToolkitError, match=r"^exit 3: ToolkitError: bad file$"):
        run_command(ctx, [sys.executable, "-c", code])
    assert run_command(ctx, [sys.executable, "-c", "print('ok')"]) == "ok\n"
    with pytest.raises(StepTimeout):
        run_command(StepContext("y", 0.0, time.monotonic, time.monotonic()), ["true"])


def test_report_files_are_written_with_every_step(tmp_path):
    results = run_steps([Step("a", _fails), Step("b", lambda c: "x | y")])
    report = build_report(results, {"versions": {"tensorrt": None}}, 900.0, "start")
    json_path, md_path = write_report(tmp_path / "out", report)
    assert json.loads(json_path.read_text())["failed_steps"] == [
        "a: the build failed: no engine"]
    md = md_path.read_text()
    assert md.startswith("# Device check: FAILED") and "| b | passed |" in md
    assert "x \\| y" in md and "| tensorrt | None |" in md
    assert report["ok"] is False and report["counts"] == {"passed": 1, "failed": 1, "skipped": 0}


# --- the judgements ------------------------------------------------------------------------
def test_probabilities_within_the_precisions_tolerance():
    ref = [{"neg": 0.7, "pos": 0.3}, {"neg": 0.501, "pos": 0.499}]
    near = [{"neg": 0.70004, "pos": 0.29996}, {"neg": 0.50104, "pos": 0.49896}]
    assert "labels equal on 2" in compare.check_probabilities(near, ref, "fp32")
    with pytest.raises(ToolkitError, match="up to 0.004 > 0.0001"):
        compare.check_probabilities([{"neg": 0.704, "pos": 0.296}, ref[1]], ref, "fp32")
    flipped_tie = [ref[0], {"neg": 0.499, "pos": 0.501}]  # a tie within fp16's 5e-3
    assert "labels equal on 1" in compare.check_probabilities(flipped_tie, ref, "fp16")
    with pytest.raises(ToolkitError, match="text 1: label pos, reference neg"):
        compare.check_probabilities([{"neg": 0.45, "pos": 0.55}, ref[1]], ref, "int8")


def test_greedy_tokens_over_the_precisions_prefix():
    ref = [{"prompt": "p", "prompt_ids": [1, 5], "tokens": [3, 4, 5, 6, 7], "stop_reason": "eos"}]
    late = [{**ref[0], "tokens": [3, 4, 5, 6, 9], "stop_reason": "max_new_tokens"}]
    assert compare.check_tokens(late, ref, "fp16").endswith("equal in all: 4/5")
    with pytest.raises(ToolkitError, match="first 5 greedy tokens"):
        compare.check_tokens(late, ref, "onnxruntime")
    with pytest.raises(ToolkitError, match="encodes to"):
        compare.check_tokens([{**ref[0], "prompt_ids": [1, 6]}], ref, "int8")


def _manifest(tmp_path, kv_dim, dtype):
    plan = tmp_path / f"d{kv_dim}{dtype}.plan"
    Path(f"{plan}.json").write_text(json.dumps({
        "sidecar": {"kv_cache": {"kv_dim": kv_dim}},
        "engine_io": {"tensors": [{"name": "past_key_0", "dtype": dtype}]}}))
    return plan


def test_kv_slots_must_be_256_byte_aligned_on_tensorrt(tmp_path):
    assert compare.kv_alignment_problem(_manifest(tmp_path, 64, "float32")) is None
    assert "32 x 4 = 128 bytes" in compare.kv_alignment_problem(_manifest(tmp_path, 32, "float32"))
    assert "64 x 2 = 128 bytes" in compare.kv_alignment_problem(_manifest(tmp_path, 64, "float16"))


def test_where_tritonserver_comes_from(tmp_path):
    with pytest.raises(SkipStep, match="no tritonserver"):
        compare.find_tritonserver({"PATH": str(tmp_path)})
    home = tmp_path / "triton"
    (home / "backends" / "python").mkdir(parents=True)
    assert compare.find_tritonserver({"TRITON_HOME": str(home)}) == f"TRITON_HOME={home}"
    assert not compare.has_tensorrt_backend({"TRITON_HOME": str(home)})
    (home / "backends" / "tensorrt").mkdir()
    assert compare.has_tensorrt_backend({"TRITON_HOME": str(home)})
    assert compare.has_tensorrt_backend({"TRITON_CONTAINER": "nvcr.io/x:24.10-py3-igpu"})


def test_the_parser_against_the_table():
    said_no = {"table_ok": False, "tensorrt_ok": True, "agree": False,
               "table_problems": ["LayerNormalization (5 nodes): no importer"],
               "tensorrt_problems": []}
    with pytest.raises(ToolkitError, match=r"parser parse it, but table 8\.5 refuse it "
                                           r"\(1: LayerNormalization"):
        compare.parser_against_table(Path("m.onnx"), "8.5.2.2", said_no)
    both = {**said_no, "tensorrt_ok": False, "agree": True,
            "tensorrt_problems": ["LayerNormalization ln (node 4): No importer registered"]}
    assert compare.parser_against_table(Path("m.onnx"), "8.5.2.2", both).startswith(
        "agree: TensorRT 8.5.2.2's parser and table 8.5 both refuse it")


def test_a_graph_claiming_a_version_the_table_refuses_fails(tmp_path):
    onnx = tmp_path / "tiny_classifier.onnx"
    shutil.copy(FIXTURES / "tiny_classifier.onnx", onnx)
    sidecar = json.loads((FIXTURES / "tiny_classifier.onnx.json").read_text())
    if "tensorrt_parse" not in sidecar and not _importable("onnx"):
        pytest.skip("the fixture's sidecar has no tensorrt_parse facts and onnx is missing")
    Path(f"{onnx}.json").write_text(json.dumps(sidecar))
    assert "8.6 ok" in compare.table_summary(onnx)
    sidecar["tensorrt_target"] = {**sidecar.get("tensorrt_target", {}), "min_tensorrt": "8.5"}
    Path(f"{onnx}.json").write_text(json.dumps(sidecar))
    if not _has_layernorm(sidecar):
        pytest.skip("this fixture has no LayerNormalization node: it parses on 8.5")
    with pytest.raises(ToolkitError, match=r"claims TensorRT >= 8\.5 .* table 8\.5 says"):
        compare.table_summary(onnx)


def _has_layernorm(sidecar) -> bool:
    facts = (sidecar.get("tensorrt_parse") or {}).get("facts") or {}
    return "LayerNormalization" in facts.get("ops", {}) or not facts


def test_a_graph_for_a_newer_tensorrt_is_not_built(tmp_path):
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"")
    Path(f"{onnx}.json").write_text(json.dumps({"tensorrt_target": {"min_tensorrt": "8.6"}}))
    with pytest.raises(SkipStep, match=r"exported for TensorRT >= 8\.6 .*this is 8\.5\.2\.2"):
        compare.check_target_version(onnx, "8.5.2.2")
    compare.check_target_version(onnx, "8.6.2.3")
    compare.check_target_version(onnx, "10.3.0.30")
