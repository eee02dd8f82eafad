"""Real TensorRT builds of the tiny models, checked against ONNX Runtime with Polygraphy's
Comparator. Needs TensorRT and a GPU; skipped elsewhere (the whole module)."""
from __future__ import annotations

import numpy as np
import pytest

pytestmark = [pytest.mark.trt, pytest.mark.gpu]

trt = pytest.importorskip("tensorrt", reason="TensorRT is not installed: engines build on the "
                          "device (Jetson or a GPU box with TensorRT)")
pytest.importorskip("onnxruntime", reason="onnxruntime is needed as the reference runner")

from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx  # noqa: E402
from polygraphy.backend.trt import EngineFromBytes, TrtRunner  # noqa: E402
from polygraphy.comparator import Comparator, CompareFunc  # noqa: E402

from common.artifacts import load_onnx_sidecar  # noqa: E402
from engines import trt_info  # noqa: E402
from engines.build import build_engine  # noqa: E402
from engines.builder_config import BuildOptions  # noqa: E402
from engines.manifest import check_engine_for_this_device  # noqa: E402
from engines.profiles import build_profiles  # noqa: E402

VERSION = trt.__version__
KV_DIM = 32  # tiny fixtures: d_model 32


@pytest.fixture(scope="module")
def timing_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("timing") / "tiny.timing.cache"


def _options(precision, timing_cache, **kwargs):
    # Level 0 builds fastest; the tiny graphs only need to be correct, not tuned.
    level = 0 if trt_info.has_builder_optimization_level(VERSION) else None
    return BuildOptions(precision, opt_level=level, timing_cache=str(timing_cache), **kwargs)


def _classifier_feeds(seed=0):
    rng = np.random.default_rng(seed)
    feeds = []
    for batch, seq in ((1, 5), (2, 16), (2, 9)):
        ids = rng.integers(3, 300, size=(batch, seq)).astype(np.int32)  # (batch, seq) int32
        mask = np.ones((batch, seq), np.int32)  # (batch, seq) int32
        mask[-1, seq - 2:] = 0  # right padding on the last row
        feeds.append({"input_ids": ids, "attention_mask": mask})
    return feeds


def _compare(onnx_path, plan_path, feeds, atol, rtol, profile=0):
    engine = EngineFromBytes(plan_path.read_bytes())
    runners = [OnnxrtRunner(SessionFromOnnx(str(onnx_path))),
               TrtRunner(engine, optimization_profile=profile)]
    results = Comparator.run(runners, data_loader=feeds)
    # Near-tied logits may swap top-k positions without being wrong: compare values only.
    skip_indices = lambda name, index, result: [] if name == "topk_indices" else [name]
    compare = CompareFunc.simple(atol=atol, rtol=rtol, find_output_func=skip_indices)
    return bool(Comparator.compare_accuracy(results, compare_func=compare))


# The tiny random models' logits are about 0.1 in size: tolerances are absolute.
@pytest.mark.parametrize("precision, tol", [("fp32", 1e-4), ("fp16", 5e-3)])
def test_classifier_engine_matches_onnxruntime(tiny_classifier_onnx, tmp_path, timing_cache,
                                               precision, tol):
    profiles = build_profiles(load_onnx_sidecar(tiny_classifier_onnx), batch=(1, 2, 2),
                              seq=(1, 16, 16))
    plan = tmp_path / f"tiny.{precision}.plan"
    manifest = build_engine(tiny_classifier_onnx, plan, _options(precision, timing_cache),
                            profiles)
    assert timing_cache.stat().st_size > 0  # saved after the build
    assert check_engine_for_this_device(plan)["precision"] == precision
    assert manifest["engine_io"]["profiles"][0]["input_ids"] == \
        {"min": [1, 1], "opt": [2, 16], "max": [2, 16]}
    assert {t["name"] for t in manifest["engine_io"]["tensors"]} == \
        {"input_ids", "attention_mask", "logits"}
    assert _compare(tiny_classifier_onnx, plan, _classifier_feeds(), atol=tol, rtol=tol)


def test_decoder_engine_prefill_and_decode_profiles(tiny_decoder_onnx, tmp_path, timing_cache):
    sidecar = load_onnx_sidecar(tiny_decoder_onnx)
    profiles = build_profiles(sidecar, batch=(1, 1, 2), seq=(1, 16, 16))
    plan = tmp_path / "tiny_decoder.fp32.plan"
    manifest = build_engine(tiny_decoder_onnx, plan, _options("fp32", timing_cache), profiles)
    assert [p["name"] for p in manifest["profiles"]] == ["prefill", "decode"]
    assert len(manifest["engine_io"]["profiles"]) == 2
    layers = sidecar["kv_cache"]["layers"]
    rng = np.random.default_rng(0)

    def feed(new, past):
        f = {"input_ids": rng.integers(3, 300, size=(1, new)).astype(np.int32),  # (1, new)
             "position_ids": np.arange(past, past + new, dtype=np.int32)[None],  # (1, new)
             "attention_mask": np.ones((1, past + new), np.int32)}  # (1, total)
        for layer in range(layers):
            for kv in ("key", "value"):
                f[f"past_{kv}_{layer}"] = rng.standard_normal(
                    (past, 1, KV_DIM)).astype(np.float32)  # (past, batch, kv_dim)
        return f

    assert _compare(tiny_decoder_onnx, plan, [feed(7, 0), feed(16, 0)], 1e-4, 1e-4, profile=0)
    assert _compare(tiny_decoder_onnx, plan, [feed(1, 7), feed(1, 15)], 1e-4, 1e-4, profile=1)


def _calibration_set(onnx_path, path):
    from calibration.loader import save_calibration_set

    sidecar = load_onnx_sidecar(onnx_path)
    rng = np.random.default_rng(1)
    batches = []
    for seq in (4, 9, 16, 16):
        ids = rng.integers(3, 300, size=(2, seq)).astype(np.int32)  # (batch, seq) int32
        batches.append({"input_ids": ids, "attention_mask": np.ones_like(ids)})
    meta = {"kind": "classifier", "input_names": [t["name"] for t in sidecar["inputs"]],
            "pad_id": 0, "source": "random test tokens", "split": "train", "seed": 1}
    return save_calibration_set(path, batches, meta)


def test_int8_engine_from_the_qdq_onnx(tiny_classifier_onnx, tmp_path, timing_cache):
    pytest.importorskip("onnxruntime.quantization", reason="the Q/DQ graph is made on the host")
    from calibration.qdq import quantize_to_qdq

    calib = _calibration_set(tiny_classifier_onnx, tmp_path / "tiny.calib.npz")
    qdq = tmp_path / "tiny_classifier.qdq.onnx"
    quantize_to_qdq(tiny_classifier_onnx, calib, qdq, method="minmax")
    profiles = build_profiles(load_onnx_sidecar(tiny_classifier_onnx), batch=(1, 2, 2),
                              seq=(1, 16, 16))
    plan = tmp_path / "tiny.int8.plan"
    manifest = build_engine(tiny_classifier_onnx, plan, _options("int8", timing_cache),
                            profiles, qdq_onnx=qdq)
    assert manifest["int8"]["source"] == "qdq"
    assert manifest["precision_plan"]["strongly_typed"] == trt_info.has_strongly_typed(VERSION)
    # TensorRT and ORT both execute the same Q/DQ graph: close, not bit-equal (ORT's FP32 vs
    # Q/DQ logits differ by about 2e-3 on these inputs).
    assert _compare(qdq, plan, _classifier_feeds(), atol=5e-3, rtol=5e-3)


@pytest.mark.skipif(not trt_info.has_implicit_int8(VERSION),
                    reason=f"TensorRT {VERSION} has no implicit INT8 calibration")
def test_int8_calibration_writes_then_reuses_the_cache(tiny_classifier_onnx, tmp_path,
                                                       timing_cache):
    calib = _calibration_set(tiny_classifier_onnx, tmp_path / "tiny.calib.npz")
    cache = tmp_path / "tiny.calib.cache"
    profiles = build_profiles(load_onnx_sidecar(tiny_classifier_onnx), batch=(1, 2, 2),
                              seq=(1, 16, 16))
    options = _options("int8", timing_cache, int8_source="calibrate")
    first = build_engine(tiny_classifier_onnx, tmp_path / "a.plan", options, profiles,
                         calib_npz=calib, calib_cache=cache)
    assert cache.stat().st_size > 0
    assert first["int8"]["source"] == "calibration" and not first["int8"]["cache_reused"]
    second = build_engine(tiny_classifier_onnx, tmp_path / "b.plan", options, profiles,
                          calib_npz=calib, calib_cache=cache)
    assert second["int8"]["cache_reused"]
    assert second["int8"]["cache_sha256"] == first["int8"]["cache_sha256"]
