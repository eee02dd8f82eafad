"""A continuous-feature classifier from training to a runtime answer: train (train.features on a
tiny generated sample), export with the normalization baked in, parity with PyTorch, FP16
pre-flight and graph, INT8 calibration from real windows with the accuracy gate, classify
with the runtime (ONNX Runtime) and bench; plus the refusals of each step."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from common.errors import ToolkitError

F = 3
LABELS = ["sine", "square", "sawtooth"]


def _waves(n: int, seed: int, seq: int = 24):
    """Noisy sine/square/sawtooth windows with raw scales far apart (and one beyond FP16)."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % 3)
    t = np.arange(seq)[None, :]
    phase = 2 * np.pi * (rng.uniform(0.08, 0.2, (n, 1)) * t + rng.uniform(0, 1, (n, 1)))
    shape = np.where(labels[:, None] == 0, np.sin(phase),
                     np.where(labels[:, None] == 1, np.sign(np.sin(phase)),
                              (phase / (2 * np.pi)) % 1 * 2 - 1))
    noisy = shape + rng.normal(0, 0.3, (n, seq))
    features = np.stack([noisy, 300.0 + 40.0 * noisy,  # a temperature-like channel
                         6e4 + 5e3 * rng.normal(0, 1, (n, seq))], -1)  # a pressure: beyond FP16
    lengths = rng.integers(seq // 2, seq + 1, n)
    features[np.arange(seq)[None, :] >= lengths[:, None]] = 0.0  # zero past each length
    return features.astype(np.float32), lengths, np.asarray(LABELS)[labels]


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("waves")
    for split, n, seed in (("train", 96, 0), ("valid", 24, 1), ("test", 48, 2)):
        features, lengths, labels = _waves(n, seed)
        np.savez(folder / f"{split}.npz", features=features, lengths=lengths, labels=labels)
    return folder


@pytest.fixture(scope="module")
def checkpoint(sample, tmp_path_factory) -> Path:
    from click.testing import CliRunner

    from train.features import main

    out = tmp_path_factory.mktemp("ckpt")
    args = ["--data", str(sample), "--out-dir", str(out), "--epochs", "6", "--d-model", "16",
            "--n-layers", "1", "--n-heads", "2", "--d-ff", "32", "--max-seq-len", "32",
            "--batch-size", "16", "--warmup-steps", "5", "--lr", "3e-3", "--threads", "1",
            "--labels", ",".join(LABELS), "--no-amp"]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out / "best.pt"


@pytest.fixture(scope="module")
def exported(checkpoint, tmp_path_factory) -> Path:
    from export.onnx_model import export_checkpoint

    return export_checkpoint(checkpoint, tmp_path_factory.mktemp("models") / "waves.onnx")


def test_export_bakes_in_the_training_statistics(exported, checkpoint):
    import onnx

    from common.artifacts import load_onnx_sidecar
    from export.preflight import feature_normalization
    from train.checkpoint import load_checkpoint

    state = load_checkpoint(checkpoint).state
    sidecar = load_onnx_sidecar(exported, check_hash=True)
    assert sidecar["feature_dim"] == F and sidecar["labels"] == LABELS
    assert sidecar["tokenizer"] is None and not (exported.parent / "waves.tokenizer.json").exists()
    assert [t["name"] for t in sidecar["inputs"]] == ["features", "attention_mask"]
    assert sidecar["inputs"][0] == {"name": "features", "dtype": "float32",
                                    "shape": ["batch", "seq", F]}
    norm = feature_normalization(onnx.load(str(exported)).graph)
    np.testing.assert_allclose(norm["mean"], state["feature_norm"]["mean"], rtol=1e-6)
    np.testing.assert_allclose(norm["std"], state["feature_norm"]["std"], rtol=1e-6)
    assert sidecar["feature_norm"] == {k: list(map(float, v))
                                       for k, v in state["feature_norm"].items()}
    assert set(norm["tensors"]) <= set(sidecar["keep_fp32"]["tensors"])
    parity = sidecar["parity"]
    assert parity["max_abs_diff"] < 1e-4 and len(parity["cases"]) >= 6
    kinds = {h["kind"] for h in sidecar["preflight"]["fp16_hazards"]}
    assert "raw_features_beyond_fp16" in kinds  # the 6e4 pressure channel
    assert sidecar["tensorrt_parse"]["verdicts"]["8.6"]["ok"]


def test_onnx_equals_pytorch_on_real_windows_with_padding(exported, checkpoint, sample):
    """The graph on raw padded windows = PyTorch on the windows normalized as training does
    (train.feature_data.normalize: padding zero after normalizing)."""
    import onnxruntime as ort

    from train.checkpoint import load_checkpoint
    from train.feature_data import normalize

    ckpt = load_checkpoint(checkpoint)
    data = np.load(sample / "test.npz")
    raw, lengths = data["features"][:16], data["lengths"][:16]
    mask = (np.arange(raw.shape[1])[None, :] < lengths[:, None]).astype(np.int32)
    with torch.no_grad():
        want = ckpt.model(torch.from_numpy(normalize(raw, lengths, ckpt.state["feature_norm"])),
                          torch.from_numpy(mask)).numpy()
    session = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    (got,) = session.run(["logits"], {"features": raw, "attention_mask": mask})
    assert np.max(np.abs(got - want)) < 1e-4
    assert np.ptp(got) > 0.1  # a trained model: the logits vary


def test_calibration_qdq_and_gate_on_feature_windows(exported, sample, tmp_path):
    from calibration.dataset import build_calibration_set
    from calibration.gate import run_gate
    from calibration.loader import CalibrationSet
    from calibration.qdq import quantize_to_qdq

    calib = build_calibration_set(exported, str(sample / "train.npz"), tmp_path / "w.calib.npz",
                                  batches=3, batch_size=4)
    loaded = CalibrationSet(calib)
    assert loaded.kind == "feature_classifier" and len(loaded) == 3
    feeds = list(loaded)
    assert [f["features"].shape[2] for f in feeds] == [F] * 3
    assert all(f["features"].dtype == np.float32 for f in feeds)
    assert all((f["attention_mask"].sum(1) > 0).all() for f in feeds)
    # Polygraphy's hook: repacked to the calibration profile's OPT shape, F kept
    loaded.input_metadata = {"features": _Meta((2, 5, F)), "attention_mask": _Meta((2, 5))}
    assert {f["features"].shape for f in loaded} == {(2, 5, F)}
    qdq = tmp_path / "w.qdq.onnx"
    summary = quantize_to_qdq(exported, calib, qdq)
    assert summary["dequantize"] > 0
    qdq_sidecar = json.loads((tmp_path / "w.qdq.onnx.json").read_text())
    assert qdq_sidecar["keep_fp32"]["feature_normalization"]
    report = run_gate(exported, qdq, str(sample / "test.npz"), tmp_path / "gate.json",
                      max_drop=100.0, fp16=True)
    assert report["samples"] == 48 and report["passed"]
    assert report["fp32"]["accuracy"] > 0.5  # three classes: chance is 1/3
    assert abs(report["drop"]) < 15.0
    assert report["fp16"]["runs_on_cpu"] and not report["fp16"]["nonfinite_outputs"]


class _Meta:
    def __init__(self, shape):
        self.shape = shape


def test_fp16_graph_keeps_the_normalization_fp32(exported, tmp_path, sample):
    """The raw 6e4 channel overflows FP16 (inf once > 65504) unless (x - mean) / std runs in
    FP32: in the FP16 graph the normalization reads the FP32 input itself (a plain conversion
    casts the input to FP16 first). ONNX Runtime's CPU provider removes Cast pairs around ops it
    runs in FP32, so the overflow is shown on the data, not through it."""
    import onnx
    import onnxruntime as ort
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    from calibration.fp16 import write_fp16_onnx
    from export.preflight import feature_normalization

    fp16_path = tmp_path / "w.fp16.onnx"
    sidecar = write_fp16_onnx(exported, fp16_path)
    graph = onnx.load(str(fp16_path)).graph
    norm = feature_normalization(graph)
    assert norm is not None and set(norm["tensors"]) <= set(sidecar["keep_fp32"]["tensors"])
    naive = convert_float_to_float16(onnx.load(str(exported)), keep_io_types=True,
                                     op_block_list=DEFAULT_OP_BLOCK_LIST + ["LayerNormalization"])
    assert feature_normalization(naive.graph) is None  # its Sub reads a Cast of the input
    data = np.load(sample / "test.npz")
    raw = data["features"][:16]
    real = np.arange(raw.shape[1])[None, :] < data["lengths"][:16, None]
    with np.errstate(over="ignore"):  # what a FP16 input would hold
        assert not np.isfinite(raw.astype(np.float16)[real]).all()
    feeds = {"features": raw, "attention_mask": real.astype(np.int32)}
    run = {p: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
           for p in (exported, fp16_path)}
    assert np.isfinite(run[fp16_path]).all()
    assert np.max(np.abs(run[fp16_path] - run[exported])) < 0.05


def test_runtime_classifies_the_file_like_the_gate(exported, sample, capsys):
    from runtime.classify import main

    with pytest.raises(SystemExit) as done:
        main(["--model", str(exported), "--features", str(sample / "test.npz"), "--json"])
    assert done.value.code == 0
    captured = capsys.readouterr()
    rows = [json.loads(line) for line in captured.out.splitlines()]
    assert len(rows) == 48 and {r["label"] for r in rows} <= set(LABELS)
    assert "accuracy" in captured.err and "onnxruntime: 48 windows" in captured.err


def test_bench_runs_a_feature_model(exported):
    from runtime.bench import run_bench

    report = run_bench(str(exported), [1, 4], [8, 32], 0, 1, 3, None)
    assert [(r["batch"], r["seq"]) for r in report["results"]] == [(1, 8), (1, 32), (4, 8),
                                                                   (4, 32)]
    assert all(r["mean_ms"] > 0 for r in report["results"])


def test_export_refuses_a_checkpoint_without_statistics(tmp_path):
    from export.onnx_model import export_checkpoint
    from train.checkpoint import save_checkpoint
    from train.hf_model import build_model
    from train.model import ClassifierConfig

    cfg = ClassifierConfig(vocab_size=4, max_seq_len=8, d_model=8, n_layers=1, n_heads=2,
                           d_ff=16, num_labels=2, feature_dim=F)
    path = save_checkpoint(tmp_path / "x.pt", cfg, build_model(cfg))
    with pytest.raises(ToolkitError, match="no feature_norm"):
        export_checkpoint(path, tmp_path / "x.onnx")
    bad = save_checkpoint(tmp_path / "y.pt", cfg, build_model(cfg),
                          extra={"feature_norm": {"mean": [0.0] * F, "std": [1.0, 0.0, 1.0]}})
    with pytest.raises(ToolkitError, match="std <= 0"):
        export_checkpoint(bad, tmp_path / "y.onnx")
    assert not (tmp_path / "x.onnx").exists() and not (tmp_path / "y.onnx").exists()


def test_nan_weights_fail_parity_naming_the_unwritten_output_and_the_weight(tmp_path):
    """A NaN weight makes every logit NaN: parity fails (NaN > tolerance would pass) naming
    "<output> (not written)" as the other exporters do, and the weight."""
    from export.onnx_model import export_checkpoint
    from train.checkpoint import save_checkpoint
    from train.hf_model import build_model
    from train.model import ClassifierConfig

    cfg = ClassifierConfig(vocab_size=4, max_seq_len=8, d_model=8, n_layers=1, n_heads=2,
                           d_ff=16, num_labels=2, feature_dim=F)
    model = build_model(cfg)
    name, param = next((n, p) for n, p in model.named_parameters() if n.endswith("weight"))
    with torch.no_grad():
        param.view(-1)[0] = float("nan")
    norm = {"mean": [1.0, 2.0, 3.0], "std": [2.0, 3.0, 4.0]}  # not folded away
    path = save_checkpoint(tmp_path / "nan.pt", cfg, model, extra={"feature_norm": norm})
    with pytest.raises(ToolkitError) as caught:
        export_checkpoint(path, tmp_path / "nan.onnx")
    message = str(caught.value)
    assert "nan.onnx (not written)" in message and "NaN/Inf" in message, message
    assert name in message and "\n" not in message
    assert not (tmp_path / "nan.onnx").exists()


def test_calibration_set_for_other_statistics_is_refused(exported, sample, tmp_path):
    from calibration.dataset import build_calibration_set
    from calibration.qdq import quantize_to_qdq
    from common.artifacts import load_onnx_sidecar, write_onnx_sidecar
    from common.fileio import sha256_file

    calib = build_calibration_set(exported, str(sample / "train.npz"), tmp_path / "c.npz",
                                  batches=1, batch_size=2)
    other = tmp_path / "other.onnx"
    other.write_bytes(exported.read_bytes())
    sidecar = load_onnx_sidecar(exported)
    sidecar["feature_norm"] = {"mean": [0.0] * F, "std": [1.0] * F}
    sidecar["onnx_sha256"] = sha256_file(other)
    write_onnx_sidecar(other, sidecar)
    with pytest.raises(ToolkitError, match="another feature normalization"):
        quantize_to_qdq(other, calib, tmp_path / "o.qdq.onnx")


def test_trt85_target_decomposes_layernorm_and_keeps_parity(checkpoint, tmp_path):
    from common.artifacts import load_onnx_sidecar
    from export.onnx_model import export_checkpoint

    path = export_checkpoint(checkpoint, tmp_path / "w85.onnx", trt_target="8.5")
    sidecar = load_onnx_sidecar(path)
    assert sidecar["tensorrt_parse"]["verdicts"]["8.5"]["ok"]
    assert sidecar["parity"]["max_abs_diff"] < 1e-4
    assert sidecar["keep_fp32"]["patterns"]["layernorm"] >= 1


def test_committed_device_fixture_is_what_the_script_makes(tmp_path):
    """tests/fixtures/tiny_features.* (the device suite's) = make_feature_fixture.py today:
    same sidecar apart from volatile fields, same windows, same outputs and reference."""
    import onnxruntime as ort
    from make_feature_fixture import NAME, make

    committed = Path(__file__).resolve().parents[1] / "fixtures" / f"{NAME}.onnx"
    made = make(tmp_path)
    volatile = {"checkpoint", "export_seconds", "onnx_sha256", "onnx_version", "torch_version",
                "simplifier", "simplifier_note", "checkpoint_sha256", "parity"}
    old, new = (json.loads(p.with_name(p.name + ".json").read_text()) for p in (committed, made))
    assert {k: v for k, v in old.items() if k not in volatile} == \
        {k: v for k, v in new.items() if k not in volatile}
    data = {p: np.load(p.with_suffix(".npz")) for p in (committed, made)}
    for key in ("features", "lengths", "labels"):
        np.testing.assert_array_equal(data[committed][key], data[made][key])
    refs = [json.loads(p.with_suffix(".reference.json").read_text())["logits"]
            for p in (committed, made)]
    np.testing.assert_allclose(refs[0], refs[1], atol=1e-6)
    feeds = {"features": data[made]["features"][:4],
             "attention_mask": np.ones(data[made]["features"].shape[:2], np.int32)[:4]}
    outs = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
            for p in (committed, made)]
    np.testing.assert_allclose(outs[0], outs[1], atol=1e-6)
