"""The CPU baseline check users keep on (``make bench-all``, ``make baseline``, ``make regress``):
baselines keyed by a host fingerprint, the no-baseline path, tolerances from the spread of the
interleaved rounds, and the whole flow through the CLIs on the committed tiny classifier, with
the runtime slowed from outside (tests/slow_runtime/sitecustomize.py) to show it fails.
"""
from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from benchmarks import baseline, host_fingerprint, regress
from benchmarks.host_fingerprint import KEYED, fingerprint

ROOT = Path(__file__).resolve().parents[2]
SLOW_RUNTIME = ROOT / "tests" / "slow_runtime"


# --- fingerprint -------------------------------------------------------------------------------
def test_fingerprint_is_stable_and_changes_with_every_keyed_fact():
    here = host_fingerprint.facts()
    assert host_fingerprint.describe()["fingerprint"] == fingerprint(here)
    assert fingerprint(host_fingerprint.facts()) == fingerprint(here)  # stable across calls
    base = {"identity": "machine-id:0123456789abcdef", "cpu_model": "AMD EPYC", "cores": 2,
            "memory_gib": 24}
    changed = {"identity": "machine-id:fedcba9876543210", "cpu_model": "AMD EPYC 7B13",
               "cores": 4, "memory_gib": 32}
    assert set(changed) == set(KEYED)
    for name, value in changed.items():
        assert fingerprint({**base, name: value}) != fingerprint(base), name
    assert fingerprint({**base, "kernel": "other"}) == fingerprint(base)  # recorded, not keyed
    assert len(fingerprint(base)) == 12


def test_machine_id_is_hashed_and_hostname_is_the_fallback(tmp_path):
    one, two = tmp_path / "a", tmp_path / "b"
    one.write_text("0123456789abcdef0123456789abcdef\n")
    two.write_text("fedcba9876543210fedcba9876543210\n")
    facts = host_fingerprint.facts([str(one)])
    assert facts["identity_source"] == "machine-id"
    assert "0123456789abcdef0123" not in facts["identity"]  # never the id itself
    assert facts["identity"] != host_fingerprint.facts([str(two)])["identity"]
    fallback = host_fingerprint.facts([str(tmp_path / "missing")])
    assert fallback["identity_source"] == "hostname"
    assert fallback["identity"].startswith("hostname:") and fallback["kernel"] in \
        fallback["identity"]


# --- synthetic reports -------------------------------------------------------------------------
def _report(host: str, p50_rounds, accuracy: float = 0.8) -> dict:
    """A suite report with one CPU row: p50 at b1 s8 per round, its median as the figure."""
    median = sorted(p50_rounds)[len(p50_rounds) // 2]
    point = {"batch": 1, "seq": 8, "p50_ms": median, "p99_ms": median * 1.1,
             "sequences_per_s": 1e3 / median}
    row = {"backend": "ort-cpu-fp32", "engine": "onnxruntime", "precision": "fp32",
           "device": "cpu", "status": "ran", "latency": [point],
           "accuracy": {"accuracy": accuracy},
           "rounds": {"p50 ms b1 s8": list(p50_rounds),
                      "p99 ms b1 s8": [v * 1.1 for v in p50_rounds],
                      "sequences/s b1 s8": [1e3 / v for v in p50_rounds]}}
    return {"model": "imdb", "kind": "classifier",
            "state": {"environment": {}, "host": {"fingerprint": host},
                      "device": {"is_jetson": False, "cpu_model": "AMD EPYC"}},
            "settings": {"rounds": len(p50_rounds)}, "results": [row]}


def _slowed(report: dict, factor: float) -> dict:
    out = copy.deepcopy(report)
    row = out["results"][0]
    row["latency"][0]["p50_ms"] *= factor
    row["rounds"]["p50 ms b1 s8"] = [v * factor for v in row["rounds"]["p50 ms b1 s8"]]
    return out


def test_another_hosts_baseline_is_never_compared(tmp_path):
    baseline.record(_report("aaaaaaaaaaaa", [1.0, 1.0, 1.0]), tmp_path)
    slow_elsewhere = _slowed(_report("bbbbbbbbbbbb", [1.0, 1.0, 1.0]), 10.0)
    outcome = regress.check_report(slow_elsewhere, tmp_path)
    assert outcome["results"] == {} and not regress.regressed(outcome)
    assert outcome["other_baselines"] == ["imdb--amd-epyc--host-aaaaaaaaaaaa--trt-none--fp32"]
    assert regress.summary_lines(outcome, "imdb")[-1] == \
        "other hosts' baselines: 1, not compared"


def test_the_committed_baselines_fail_nobody():
    """They were measured on another host sharing this CPU name (issue 21 defect 7): a host
    without a baseline of its own compares nothing, however slow its run."""
    committed = [k for k in baseline.existing_keys() if k.startswith("imdb--")]
    assert committed and all("--host-unrecorded--" in k for k in committed
                             if k.startswith("imdb--amd-epyc--"))
    fresh_host = _report("000000000000", [1.0, 1.0, 1.0])
    outcome = regress.check_report(_slowed(fresh_host, 100.0))
    assert outcome["results"] == {} and not regress.regressed(outcome)
    assert len(outcome["other_baselines"]) == len(committed)


def test_tolerance_is_the_floor_or_k_times_the_measured_spread():
    tol = regress.Tolerances(floor_percent=10.0, spread_factor=1.0)
    assert tol.timed_percent([1.0, 1.01, 0.99], [1.0, 1.0]) == 10.0  # 2% spread: the floor
    assert tol.timed_percent([1.0, 1.3, 0.9], None) == pytest.approx(40.0)  # (1.3-0.9)/1.0
    assert tol.timed_percent([1.0, 1.0], [2.0, 1.0, 1.6]) == pytest.approx(62.5)  # 1.0/1.6
    assert regress.Tolerances(spread_factor=2.0).timed_percent([1.0, 1.3, 0.9], None) == \
        pytest.approx(80.0)
    assert tol.timed_percent(None, [1.0]) == 10.0  # one round: no spread, the floor


def test_a_slowdown_beyond_the_spread_fails_and_one_within_passes(tmp_path):
    tol = regress.Tolerances(floor_percent=10.0, spread_factor=1.0)
    noisy = _report("cccccccccccc", [1.0, 1.2, 0.95, 1.05, 1.1])  # 23.8% spread
    baseline.record(noisy, tmp_path)
    within = regress.check_report(_slowed(noisy, 1.15), tmp_path, tol)
    assert not regress.regressed(within)
    beyond = regress.check_report(_slowed(noisy, 1.45), tmp_path, tol)
    moved = beyond["results"]["fp32"]["regressions"]
    assert [m.figure for m in moved] == ["ort-cpu-fp32 | p50 ms b1 s8"]
    assert moved[0].worse == pytest.approx(45.0) and moved[0].limit == pytest.approx(23.81, 0.01)
    steady = _report("dddddddddddd", [1.0, 1.0, 1.01, 1.0, 1.0])  # 1% spread: the 10% floor
    baseline.record(steady, tmp_path)
    assert regress.regressed(regress.check_report(_slowed(steady, 1.15), tmp_path, tol))
    assert not regress.regressed(regress.check_report(_slowed(steady, 1.08), tmp_path, tol))


def test_no_baseline_for_this_machine_says_how_to_make_one_and_exits_0(tmp_path):
    (tmp_path / "baselines").mkdir()
    result = CliRunner().invoke(regress.main, [
        "--model", "tiny_classifier", "--models-dir", str(tmp_path), "--dir",
        str(tmp_path / "baselines"), "--out-dir", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0].startswith("no baseline for this machine (")
    assert "make bench-all MODEL=tiny_classifier && make baseline MODEL=tiny_classifier" in \
        result.output
    assert not (tmp_path / "out").exists()  # nothing was measured


# --- end to end through the CLIs ---------------------------------------------------------------
def _cli(module: str, *args: str, slow: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("TOOLKIT_SLOW_RUN", None)
    if slow is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(SLOW_RUNTIME)] + (
            [env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        env["TOOLKIT_SLOW_RUN"] = slow
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_bench_baseline_regress_passes_twice_and_fails_when_the_runtime_is_slowed(
        tiny_classifier_onnx, tmp_path):
    models = str(tiny_classifier_onnx.parent)
    baselines = tmp_path / "baselines"
    baselines.mkdir()
    bench = _cli("benchmarks.suite", "--model", "tiny_classifier", "--models-dir", models,
                 "--backend", "ort-cpu-fp32", "--batch", "1,2", "--seq", "8,32",
                 "--iterations", "20", "--rounds", "5", "--no-plots",
                 "--out-dir", str(tmp_path / "suite"))
    assert bench.returncode == 0, bench.stderr
    report = str(tmp_path / "suite" / "tiny_classifier.json")
    recorded = _cli("benchmarks.baseline", "--report", report, "--dir", str(baselines))
    assert recorded.returncode == 0 and "--host-" in recorded.stdout, recorded.stderr
    regress_args = ("--model", "tiny_classifier", "--models-dir", models, "--dir",
                    str(baselines), "--out-dir", str(tmp_path / "regress"))
    for _ in range(2):
        again = _cli("benchmarks.regress", *regress_args)
        assert again.returncode == 0, again.stdout + again.stderr
        assert "fp32: ok (12 figures checked)" in again.stdout
    slowed = _cli("benchmarks.regress", *regress_args, slow="3.0")
    assert "OrtSession.run slowed by 300%" in slowed.stderr  # the hook really was applied
    assert slowed.returncode == 1, slowed.stdout + slowed.stderr
    assert "fp32: REGRESSED" in slowed.stdout
    assert re.search(r"^  worse: ort-cpu-fp32 \| p50 ms b[12] s(8|32): ", slowed.stdout, re.M)
