"""The benchmark suite end to end on the committed tiny models (ONNX Runtime on the CPU), and the
comparison, baseline and regression tools on its real output. No torch, no train/: the
evaluation rows are tokenized here and handed over as an .eval.npz, as a device would get them.
"""
from __future__ import annotations

import copy
import importlib.util
import json
import random

import pytest
from click.testing import CliRunner
from tiny_data import tiny_texts

from benchmarks import accuracy, baseline, compare, regress, suite
from common.errors import ToolkitError

HAS_TRT = importlib.util.find_spec("tensorrt") is not None


def _eval_set(onnx, kind, path):
    from tokenizers import Tokenizer

    from calibration.gate import EvalData
    from common.text import encode_classifier_texts, story_token_ids

    tok = Tokenizer.from_file(str(onnx).replace(".onnx", ".tokenizer.json"))
    texts = tiny_texts(40, seed=3)
    if kind == "classifier":
        rows = encode_classifier_texts(tok, texts, 64, None)
        labels = [random.Random(i).randint(0, 1) for i in range(len(rows))]
        data = EvalData("classifier", "test", rows, labels, list(range(len(rows))),
                        ["negative", "positive"], 0, 8)
    else:
        stream = story_token_ids(tok, texts, 1)
        starts = list(range(0, len(stream) - 33, 32))[:6]
        data = EvalData("decoder", "valid", [stream[s:s + 33] for s in starts], [], starts, [],
                        0, 4)
    return accuracy.save_eval_set(data, path), data


@pytest.fixture(scope="module")
def classifier_run(tiny_classifier_onnx, tmp_path_factory):
    out = tmp_path_factory.mktemp("suite")
    npz, data = _eval_set(tiny_classifier_onnx, "classifier", out / "imdb.eval.npz")
    report = suite.run_suite("tiny_classifier", tiny_classifier_onnx.parent, out / "engines",
                             data=str(npz), batch=(1, 2), seq=(8, 32), warmup=1, iterations=5,
                             progress=False, rounds=2)
    return report, data, out


def _row(report, name):
    return next(r for r in report["results"] if r["backend"] == name)


def test_every_backend_is_a_row_with_a_status(classifier_run):
    report, _, _ = classifier_run
    names = [r["backend"] for r in report["results"]]
    assert names[:3] == ["pytorch-eager", "ort-cpu-fp32", "ort-cpu-int8-qdq"]
    assert {"ort-cuda-fp32", "ort-trt-fp16", "trt-fp32", "trt-best", "trt-dla-int8"} <= set(names)
    for row in report["results"]:
        assert row["status"] in ("ran", "failed", "not available here"), row
        if row["status"] != "ran":
            assert row["reason"], row
    assert "give --checkpoint" in _row(report, "pytorch-eager")["reason"]
    assert "does not exist" in _row(report, "ort-cpu-int8-qdq")["reason"]
    if not HAS_TRT:
        assert "TensorRT is not installed" in _row(report, "trt-int8")["reason"]


def test_fp32_row_has_the_gates_accuracy_and_a_full_sweep(classifier_run, tiny_classifier_onnx):
    from calibration import gate
    from common.artifacts import load_onnx_sidecar

    report, data, _ = classifier_run
    row = _row(report, "ort-cpu-fp32")
    assert row["status"] == "ran"
    expected = gate.evaluate_model(tiny_classifier_onnx, data,
                                   load_onnx_sidecar(tiny_classifier_onnx))["accuracy"]
    assert row["accuracy"]["accuracy"] == expected and row["accuracy"]["samples"] == 40
    points = {(p["batch"], p["seq"]) for p in row["latency"]}
    assert points == {(1, 8), (1, 32), (2, 8), (2, 32)}
    for p in row["latency"]:
        assert 0 < p["min_ms"] <= p["p50_ms"] <= p["p99_ms"] <= p["max_ms"]
        assert p["count"] == 5
    assert row["size_bytes"] == tiny_classifier_onnx.stat().st_size
    assert row["memory"]["peak_rss_mib"] > 10
    assert report["evaluation"]["samples"] == 40 and report["state"]["environment"]["python"]


def test_markdown_table_has_status_and_figures(classifier_run):
    from benchmarks.markdown import markdown_report, markdown_table

    report, _, _ = classifier_run
    table = markdown_table(report)
    assert table.splitlines()[0].startswith("| backend | status | accuracy | p50 ms b1/s32")
    fp32 = next(line for line in table.splitlines() if line.startswith("| ort-cpu-fp32 |"))
    assert "| ran |" in fp32 and "%" in fp32
    assert "not available here: host only" in table
    assert "- accuracy: 40 reviews of the test split" in markdown_report(report)


def test_plots_are_written(classifier_run):
    pytest.importorskip("matplotlib", reason="plots need matplotlib")
    from benchmarks.plots import write_plots

    report, _, out = classifier_run
    paths = write_plots(report, out / "plots")
    assert {p.name for p in paths} == {"tiny_classifier.latency.png",
                                       "tiny_classifier.accuracy_latency.png"}
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)


def test_decoder_suite_gives_loss_bits_per_byte_and_per_token_curve(tiny_decoder_onnx, tmp_path):
    from calibration import gate
    from common.artifacts import load_onnx_sidecar

    npz, data = _eval_set(tiny_decoder_onnx, "decoder", tmp_path / "stories.eval.npz")
    report = suite.run_suite("tiny_decoder", tiny_decoder_onnx.parent, tmp_path, data=str(npz),
                             batch=(1,), seq=(8,), new_tokens=8, warmup=1, iterations=2,
                             only=["ort-cpu-fp32"], progress=False, rounds=2)
    row = _row(report, "ort-cpu-fp32")
    assert row["status"] == "ran", row
    sidecar = load_onnx_sidecar(tiny_decoder_onnx)
    expected = gate.evaluate_model(tiny_decoder_onnx, data, sidecar)["loss"]
    assert row["accuracy"]["loss"] == pytest.approx(expected, rel=1e-6)
    assert 0 < row["accuracy"]["bits_per_byte"] < row["accuracy"]["loss"] * 2
    assert report["settings"]["positions"] == [8, 56]
    curve = row["per_token"]["curve"]
    assert curve and all(c["ms"] > 0 for c in curve)
    assert set(row["per_token"]["at"]) == {"8", "56"}
    point = row["latency"][0]
    assert point["decode_tokens_per_s"] > 0 and point["prefill_tokens_per_s"] > 0


def test_a_broken_model_is_a_failed_row_and_exit_1(tiny_classifier_onnx, tmp_path):
    for suffix in (".onnx", ".onnx.json", ".tokenizer.json"):
        src = tiny_classifier_onnx.with_name(f"tiny_classifier{suffix}")
        (tmp_path / src.name).write_bytes(src.read_bytes())
    (tmp_path / "tiny_classifier.qdq.onnx").write_bytes(b"not a model")
    out = tmp_path / "out"
    result = CliRunner().invoke(suite.main, [
        "--model", "tiny_classifier", "--models-dir", str(tmp_path), "--batch", "1",
        "--seq", "8", "--iterations", "2", "--backend", "ort-cpu-fp32",
        "--backend", "ort-cpu-int8-qdq", "--no-plots", "--out-dir", str(out)])
    assert result.exit_code == 1, result.output
    report = json.loads((out / "tiny_classifier.json").read_text())
    statuses = {r["backend"]: (r["status"], r["reason"]) for r in report["results"]}
    assert statuses["ort-cpu-fp32"] == ("ran", None)
    assert statuses["ort-cpu-int8-qdq"][0] == "failed"
    assert "tiny_classifier.qdq.onnx" in statuses["ort-cpu-int8-qdq"][1]
    assert "| ort-cpu-int8-qdq | failed: " in (out / "tiny_classifier.md").read_text()


def test_suite_cli_bad_input_is_one_line(tmp_path):
    result = CliRunner().invoke(suite.main, ["--model", "nothing", "--models-dir", str(tmp_path)])
    assert result.exit_code == 2 and "error:" in result.output and "nothing.onnx" in result.output
    result = CliRunner().invoke(suite.main, ["--model", "x", "--backend", "no-such-row",
                                             "--models-dir", str(tmp_path)])
    assert result.exit_code == 2


def _worse(report, factor_p99=1.0, accuracy_drop=0.0):
    changed = copy.deepcopy(report)
    row = _row(changed, "ort-cpu-fp32")
    for p in row["latency"]:
        p["p99_ms"] *= factor_p99
    row["accuracy"]["accuracy"] -= accuracy_drop
    return changed


def test_compare_lists_worse_figures_first(classifier_run):
    report, _, _ = classifier_run
    result = compare.compare(report, _worse(report, factor_p99=1.5))
    first = result["changes"][0]
    assert "p99 ms" in first["figure"] and first["worse_percent"] == pytest.approx(50.0)
    assert all(a["worse_percent"] >= b["worse_percent"]
               for a, b in zip(result["changes"], result["changes"][1:]))
    with pytest.raises(ToolkitError, match="different models"):
        compare.compare(report, {**report, "model": "other"})


def _without_rounds(report):
    """The report as one round would leave it: no spread, every timed figure at the floor."""
    bare = copy.deepcopy(report)
    for row in bare["results"]:
        row.pop("rounds", None)
    return bare


def test_suite_rows_are_medians_of_interleaved_rounds(classifier_run):
    report, _, _ = classifier_run
    assert report["settings"]["rounds"] == 2
    row = _row(report, "ort-cpu-fp32")
    rounds = row["rounds"]["p50 ms b1 s8"]
    assert len(rounds) == 2 and all(v > 0 for v in rounds)
    point = next(p for p in row["latency"] if (p["batch"], p["seq"]) == (1, 8))
    assert point["p50_ms"] == pytest.approx(sum(rounds) / 2)  # the median of two
    assert report["state"]["host"]["fingerprint"]


def test_regress_flags_the_figure_that_moved_and_by_how_much(classifier_run):
    report = _without_rounds(classifier_run[0])
    same = regress.check(report, report)
    assert same["regressions"] == [] and len(same["checked"]) >= 12
    moved = regress.check(report, _worse(report, factor_p99=1.2, accuracy_drop=0.01))
    names = [m.figure for m in moved["regressions"]]
    assert "ort-cpu-fp32 | accuracy" in names
    assert sum("p99 ms" in n for n in names) == 4
    p99 = next(m for m in moved["regressions"] if "p99 ms" in m.figure)
    assert p99.worse == pytest.approx(20.0) and "worse by +20.00%" in str(p99)
    relaxed = regress.check(report, _worse(report, factor_p99=1.2),
                            regress.Tolerances(floor_percent=25.0))
    assert relaxed["regressions"] == []


def test_baselines_are_keyed_by_host_and_never_crossed(classifier_run, tmp_path):
    report, _, _ = classifier_run
    paths = baseline.record(report, tmp_path)
    ran = {r["precision"] for r in report["results"] if r["status"] == "ran"}
    assert {p.name.rsplit("--", 1)[-1] for p in paths} == {f"{x}.json" for x in ran}
    host = report["state"]["host"]["fingerprint"]
    assert "fp32" in ran and all(p.name.startswith("tiny-classifier--") for p in paths)
    assert all(f"--host-{host}--" in p.name for p in paths)
    outcome = regress.check_report(report, tmp_path)
    assert set(outcome["results"]) == ran and not regress.regressed(outcome)
    assert outcome["other_baselines"] == []
    other = copy.deepcopy(report)
    other["state"]["device"] = {**(other["state"]["device"] or {}), "module": "Jetson AGX Orin",
                                "jetpack": "6.1", "power_mode": {"id": 0, "name": "MAXN"}}
    outcome = regress.check_report(other, tmp_path)
    assert outcome["results"] == {} and len(outcome["other_baselines"]) == len(paths)
    assert "jetson-agx-orin--jp-6.1" in outcome["machine"]
    lines = regress.summary_lines(outcome, "tiny_classifier")
    assert lines[0].startswith("no baseline for this machine (tiny-classifier--jetson-agx-orin")
    assert lines[-1] == f"other hosts' baselines: {len(paths)}, not compared"
    result = CliRunner().invoke(regress.main, ["--report", str(tmp_path / "r.json"),
                                               "--dir", str(tmp_path)])
    assert result.exit_code == 2 and "r.json" in result.output
