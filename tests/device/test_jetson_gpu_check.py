"""jetson/gpu_check.sh where no GPU is: --help, the refusal that names the failed step in the
JSON summary; the summary writer (with the device check's report) and the random calibration
set on their own."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from jetson.gpu_summary import build_summary, finalize, junit_counts, read_steps

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "jetson" / "gpu_check.sh"
FIXTURES = ROOT / "tests" / "fixtures"


def test_help_explains_every_variable():
    done = subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, done.stderr
    used = set(re.findall(r"\$\{([A-Z_]+)[:}-]", SCRIPT.read_text())) - {"BASH_SOURCE"}
    assert {"GPU_CHECK_VENV", "TENSORRT_SPEC", "CUDA_HOME"} <= used
    for name in used:
        assert name in done.stdout, f"--help does not explain {name}"
    bad = subprocess.run(["bash", str(SCRIPT), "--gpu"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown argument" in bad.stderr


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this machine has a GPU driver")
def test_without_a_gpu_it_fails_naming_preflight(tmp_path):
    env = dict(os.environ, GPU_CHECK_WORK=str(tmp_path / "work"),
               GPU_CHECK_VENV=str(tmp_path / "venv"), PYTHON=sys.executable)
    done = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=env,
                          timeout=120, cwd=tmp_path)
    assert done.returncode == 1
    assert "gpu check FAILED: preflight" in done.stderr
    summary = json.loads((tmp_path / "work" / "summary.json").read_text())
    assert summary["ok"] is False
    assert summary["failed_steps"] == [s for s in summary["failed_steps"]
                                       if s.startswith("preflight:")]
    assert "no nvidia-smi" in summary["failed_steps"][0] or "x86_64" in summary["failed_steps"][0]
    statuses = {s["name"]: s["status"] for s in summary["steps"]}
    assert statuses["preflight"] == "failed"
    assert statuses["device-check"] == "skipped" and statuses["pytest"] == "skipped"
    assert list(statuses) == ["preflight", "venv", "tensorrt", "pycuda", "device-reqs",
                              "device-check", "pytest"]
    assert summary["device_check"] is None  # it never ran
    assert not (tmp_path / "venv").exists()  # nothing installed on a machine it cannot check


def _write_steps(path, steps, torn=""):
    path.write_text("".join(json.dumps(s) + "\n" for s in steps) + torn)


def test_summary_from_steps_and_junit(tmp_path, capsys):
    steps = tmp_path / "steps.jsonl"
    _write_steps(steps, [{"name": "preflight", "status": "ok", "seconds": "1.5", "message": ""},
                         {"name": "pytest", "status": "ok", "seconds": "30", "message": ""}])
    junit = tmp_path / "pytest.xml"
    junit.write_text('<?xml version="1.0"?><testsuites><testsuite name="pytest" tests="12" '
                     'failures="1" errors="0" skipped="3" time="9.0"/></testsuites>')
    device_report = tmp_path / "report.json"  # what benchmarks.device_check writes
    device_report.write_text(json.dumps({"ok": True, "failed_steps": [], "versions": {
        "tensorrt": "10.13.3.9"}, "counts": {"passed": 40, "failed": 0, "skipped": 22}}))
    summary_path = tmp_path / "out" / "summary.json"
    assert finalize(str(steps), str(summary_path), str(device_report), str(junit)) == 0
    summary = json.loads(summary_path.read_text())
    assert summary["ok"] is True and summary["seconds"] == 31.5
    assert summary["tests"] == {"tests": 12, "failed": 1, "errors": 0, "skipped": 3, "passed": 8}
    assert summary["versions"] == {"tensorrt": "10.13.3.9"}
    assert summary["device_check"]["ok"] is True
    assert summary["device_check"]["counts"]["skipped"] == 22
    assert "gpu check PASSED" in capsys.readouterr().out


def test_a_failed_or_torn_step_fails_the_summary(tmp_path):
    steps = tmp_path / "steps.jsonl"
    _write_steps(steps, [{"name": "tensorrt", "status": "failed", "seconds": 4,
                          "message": "exit 1: No matching distribution"}], torn='{"name": "py')
    read = read_steps(steps)
    assert [s["status"] for s in read] == ["failed", "failed"]
    assert "unreadable step record" in read[1]["message"]
    summary = build_summary(read)
    assert summary["ok"] is False
    assert summary["failed_steps"][0] == "tensorrt: exit 1: No matching distribution"
    assert finalize(str(steps), str(tmp_path / "s.json")) == 1
    assert build_summary([])["ok"] is False  # nothing ran is not a pass


def test_junit_counts_missing_or_broken(tmp_path):
    assert junit_counts(tmp_path / "absent.xml") is None
    (tmp_path / "bad.xml").write_text("<testsuites")
    assert junit_counts(tmp_path / "bad.xml") is None


@pytest.mark.parametrize("name", ["tiny_classifier", "tiny_decoder"])
def test_random_calibration_set_fits_the_fixture(tmp_path, name):
    onnx = FIXTURES / f"{name}.onnx"
    if not onnx.is_file():
        pytest.skip(f"fixture {onnx} not committed yet")
    done = subprocess.run([sys.executable, "jetson/gpu_check.py", "calib-set", "--onnx",
                           str(onnx), "--output", str(tmp_path / "c.npz")], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    from calibration.loader import CalibrationSet

    calib = CalibrationSet(tmp_path / "c.npz")
    sidecar = json.loads((FIXTURES / f"{name}.onnx.json").read_text())
    assert list(calib.input_names) == [t["name"] for t in sidecar["inputs"]]
    feed = next(iter(calib))
    assert set(feed) == set(calib.input_names)
    assert feed["input_ids"].dtype.name == "int32"
    assert 3 <= feed["input_ids"].min() and feed["input_ids"].max() < sidecar["vocab_size"]
