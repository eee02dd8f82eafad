"""Classification on the tiny classifier ONNX, tokenization parity with training, the bench
CLI and the comparison scripts' report envelope (ONNX Runtime on the CPU)."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest
from tiny_data import load_reference

from common.errors import ToolkitError

ort = pytest.importorskip("onnxruntime")

LONG_REVIEW = " ".join(["the film was very good<br />and the story loved it"] * 20)
TEXTS = ["great film", "awful<br /><br/>bad story", LONG_REVIEW, "", "the cat sat on the mat",
         "a " * 200, "not good not bad"]


# --- tokenization parity with training -----------------------------------------------------
def test_head_tail_truncation_keeps_a_quarter_head_and_the_tail():
    from runtime.tokenization import truncate_head_tail

    rng = random.Random(0)
    for _ in range(200):
        ids = list(range(rng.randint(0, 80)))
        max_len = rng.randint(1, 70)
        out = truncate_head_tail(ids, max_len)
        assert len(out) == min(len(ids), max_len)
        if len(ids) > max_len:
            head = max_len // 4
            assert out[:head] == ids[:head] and out[head:] == ids[len(ids) - (max_len - head):]
    assert truncate_head_tail(list(range(10)), 8) == [0, 1, 4, 5, 6, 7, 8, 9]


# --- classification -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def classifier(tiny_classifier_onnx):
    from runtime.classify import open_classifier

    session, clf = open_classifier(tiny_classifier_onnx, batch_size=3)
    with session:
        yield clf
        clf.close()


def test_logits_equal_the_pytorch_reference(classifier, tiny_classifier_onnx):
    """PyTorch's logits for the reference texts, recorded when the fixture was made."""
    reference = load_reference(tiny_classifier_onnx)
    assert classifier.encode(reference["texts"]) == reference["token_ids"]
    logits = classifier.logits_for_rows(reference["token_ids"])  # batched, right-padded
    np.testing.assert_allclose(logits, np.array(reference["logits"]), atol=1e-5)


def test_classify_equals_direct_onnxruntime(classifier, tiny_classifier_onnx):
    from runtime.classify import softmax

    texts = [t for t in TEXTS if t]  # classify refuses "" (tests/device/test_runtime_inputs.py)
    rows = classifier.encode(texts)
    rows.insert(TEXTS.index(""), [])  # an empty row still runs, as padding only
    logits = classifier.logits_for_rows(rows)
    bare = ort.InferenceSession(str(tiny_classifier_onnx), providers=["CPUExecutionProvider"])
    for start in range(0, len(rows), 3):  # the same batches, padded on the right like training
        chunk = rows[start:start + 3]
        width = max(max(len(r) for r in chunk), 1)
        ids = np.zeros((len(chunk), width), np.int32)  # (batch, seq) int32, pad 0
        mask = np.zeros_like(ids)
        for i, r in enumerate(chunk):
            ids[i, :len(r)], mask[i, :len(r)] = r, 1
        expected = bare.run(None, {"input_ids": ids, "attention_mask": mask})[0]
        np.testing.assert_allclose(logits[start:start + len(chunk)], expected, atol=1e-6)
    predictions = classifier.classify(texts)
    probs = softmax(np.delete(logits, TEXTS.index(""), axis=0))
    assert [p.label for p in predictions] == [classifier.labels[i] for i in probs.argmax(1)]
    assert all(abs(sum(p.probabilities.values()) - 1.0) < 1e-9 for p in predictions)
    assert classifier.n_batches >= 3


def test_classifier_batch_outside_the_profile_is_refused(classifier, tiny_decoder_onnx):
    from runtime.classify import Classifier, open_classifier

    with pytest.raises(ToolkitError, match=r"batch size 9: .* allows 1..8"):
        Classifier(classifier.session, classifier.tokenizer,
                   {"kind": "classifier", "labels": ["a", "b"], "max_seq_len": 64}, 9)
    with pytest.raises(ToolkitError, match="needs a classifier model"):
        open_classifier(tiny_decoder_onnx)
    with pytest.raises(ToolkitError, match="outside profile"):
        classifier.session.run_simple({"input_ids": np.ones((1, 65), np.int32),
                                       "attention_mask": np.ones((1, 65), np.int32)})


def test_classify_cli_reads_arguments_and_file(tiny_classifier_onnx, tmp_path):
    from click.testing import CliRunner

    from runtime.classify import main

    texts = tmp_path / "texts.txt"
    texts.write_text("loved it\n\nhated it\n", encoding="utf-8")
    runner = CliRunner()
    result = runner.invoke(main, ["--model", str(tiny_classifier_onnx), "great film",
                                  "--file", str(texts), "--json", "--batch-size", "2"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [line["text"] for line in lines] == ["great film", "loved it", "hated it"]
    assert all(line["label"] in ("negative", "positive") for line in lines)
    empty = runner.invoke(main, ["--model", str(tiny_classifier_onnx)])
    assert empty.exit_code == 2 and "no texts" in empty.output


def test_engine_description_comes_from_the_manifest_copy(tiny_classifier_onnx, tmp_path):
    """A plan's tokenizer and sidecar fields come from its manifest (no TensorRT involved)."""
    from common.artifacts import load_onnx_sidecar
    from engines.manifest import write_manifest
    from runtime.tokenization import load_model_tokenizer, model_info

    sidecar = load_onnx_sidecar(tiny_classifier_onnx)
    plan = tmp_path / "engines" / "tiny.int8.plan"
    plan.parent.mkdir()
    plan.write_bytes(b"\0" * 128)  # never deserialized here: only the manifest is read
    tokenizer_rel = f"../{tiny_classifier_onnx.parent.name}/{sidecar['tokenizer']}"
    (tmp_path / tiny_classifier_onnx.parent.name).mkdir()
    (tmp_path / tokenizer_rel[3:]).write_bytes(
        (tiny_classifier_onnx.parent / sidecar["tokenizer"]).read_bytes())
    write_manifest(plan, {
        "tensorrt_version": "10.3.0", "gpu": {"name": "Orin", "compute_capability": "8.7"},
        "precision": "int8", "int8": {}, "profiles": [{}], "inputs": sidecar["inputs"],
        "outputs": sidecar["outputs"], "onnx": {}, "build_options": {}, "created_at": "now",
        "sidecar": sidecar, "tokenizer": tokenizer_rel})
    info = model_info(plan)
    assert info["kind"] == "classifier" and info["tokenizer"] == tokenizer_rel
    assert load_model_tokenizer(plan, info).get_vocab_size() == sidecar["vocab_size"]
    with pytest.raises(ToolkitError, match="expected an ONNX model"):
        model_info(tmp_path / "model.bin")


# --- bench ----------------------------------------------------------------------------------
def test_bench_sweeps_the_classifier_and_writes_json(tiny_classifier_onnx, tmp_path):
    from click.testing import CliRunner

    from runtime.bench import main

    output = tmp_path / "results" / "bench.json"
    result = CliRunner().invoke(main, [
        "--onnx", str(tiny_classifier_onnx), "--batch", "1,4", "--seq", "8,32",
        "--iterations", "3", "--warmup", "1", "--output", str(output)])
    assert result.exit_code == 0, result.output
    report = json.loads(output.read_text())
    assert report["kind"] == "classifier" and report["backend"] == "onnxruntime"
    assert [(r["batch"], r["seq"]) for r in report["results"]] == [(1, 8), (1, 32), (4, 8),
                                                                    (4, 32)]
    for row in report["results"]:
        assert row["count"] == 3 and 0 < row["min_ms"] <= row["p50_ms"] <= row["max_ms"]
        assert row["tokens_per_s"] == pytest.approx(row["sequences_per_s"] * row["seq"])
    env = report["environment"]
    assert env["python"] and env["numpy"] == np.__version__ and env["onnxruntime"]
    assert report["memory"]["peak_rss_mib"] > 0
    assert "p99 ms" in result.output and "tokens/s" in result.output


def test_bench_decoder_reports_prefill_and_decode(tiny_decoder_onnx):
    from runtime.bench import run_bench

    report = run_bench(str(tiny_decoder_onnx), [1, 2], [4], new_tokens=6, warmup=1,
                       iterations=2, duration_s=None)
    rows = report["results"]
    assert [(r["batch"], r["seq"]) for r in rows] == [(1, 4), (2, 4)]
    for row in rows:
        assert row["prefill_count"] == 2 and row["decode_count"] == 2 * 5
        assert row["decode_tokens_per_s"] > 0 and row["prefill_tokens_per_s"] > 0


def test_bench_refuses_points_outside_the_profile(tiny_classifier_onnx, tiny_decoder_onnx):
    from click.testing import CliRunner

    from runtime.bench import main

    runner = CliRunner()
    batch = runner.invoke(main, ["--onnx", str(tiny_classifier_onnx), "--batch", "1,9"])
    assert batch.exit_code == 2 and "--batch 9 --seq 64 is outside the profiles" in batch.output
    seq = runner.invoke(main, ["--onnx", str(tiny_classifier_onnx), "--seq", "65"])
    assert seq.exit_code == 2 and "outside the profiles" in seq.output
    context = runner.invoke(main, ["--onnx", str(tiny_decoder_onnx), "--seq", "60"])
    assert context.exit_code == 2 and "exceeds the context" in context.output
    both = runner.invoke(main, ["--onnx", str(tiny_classifier_onnx), "--engine", "x.plan"])
    assert both.exit_code == 2 and "exactly one" in both.output


def test_classifier_overhead_report(tiny_classifier_onnx, tmp_path):
    from benchmarks.classifier_overhead import compare
    from benchmarks.report import write_report

    report = compare(str(tiny_classifier_onnx), [1, 2], seq=16, warmup=1, iterations=3)
    rows = report["results"]
    assert [r["batch"] for r in rows] == [1, 2]
    assert all(r["max_abs_logit_diff"] < 1e-5 and r["runtime"]["count"] == 3 for r in rows)
    path = write_report(tmp_path / "overhead.json", report)
    assert json.loads(path.read_text())["tool"] == "benchmarks/classifier_overhead.py"
