"""Real TensorRT builds of the tiny models, checked against ONNX Runtime with Polygraphy's
Comparator. Needs TensorRT and a GPU; skipped elsewhere (the whole module).

Steps by TensorRT version (engines/builder_config.py's table): fp16 is built from the committed
FP16 fixture (<name>.fp16.onnx, strongly typed) on TensorRT 11 and from the FP32 graph with the
FP16 flag on 8.5..10.x; int8 from the committed Q/DQ fixture (<name>.qdq.onnx) on every
version; implicit INT8 calibration only where it exists (<= 10.x)."""
from __future__ import annotations

import numpy as np
import pytest

pytestmark = [pytest.mark.trt, pytest.mark.gpu]

trt = pytest.importorskip("tensorrt", reason="TensorRT is not installed: engines build on the "
                          "device (Jetson or a GPU box with TensorRT)")
pytest.importorskip("onnxruntime", reason="onnxruntime is needed as the reference runner")

import shutil  # noqa: E402

from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx  # noqa: E402
from polygraphy.backend.trt import EngineFromBytes, TrtRunner  # noqa: E402
from polygraphy.comparator import Comparator, CompareFunc  # noqa: E402
from tiny_data import FIXTURES  # noqa: E402

from common.artifacts import load_onnx_sidecar  # noqa: E402
from engines import trt_info  # noqa: E402
from engines.build import build_engine  # noqa: E402
from engines.builder_config import BuildOptions  # noqa: E402
from engines.manifest import check_engine_for_this_device  # noqa: E402
from engines.profiles import build_profiles  # noqa: E402

VERSION = trt.__version__
KV_DIM = 32  # tiny fixtures: d_model 32
FP16_FROM_ONNX = not trt_info.has_precision_flags(VERSION)  # TensorRT 11: strongly typed


def _variant(onnx_path, suffix):
    """The committed <name>.<suffix>.onnx (+ sidecar) copied beside the test's model copy."""
    name = onnx_path.name[: -len(".onnx")]
    for ext in (".onnx", ".onnx.json"):
        shutil.copy(FIXTURES / f"{name}.{suffix}{ext}", onnx_path.parent / f"{name}.{suffix}{ext}")
    return onnx_path.parent / f"{name}.{suffix}.onnx"


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
    fp16 = _variant(tiny_classifier_onnx, "fp16")
    manifest = build_engine(tiny_classifier_onnx, plan, _options(precision, timing_cache),
                            profiles, fp16_onnx=fp16)
    assert timing_cache.stat().st_size > 0  # saved after the build
    parsed = fp16 if precision == "fp16" and FP16_FROM_ONNX else tiny_classifier_onnx
    assert manifest["network"]["file"] == str(parsed)
    assert manifest["parse_check"].startswith("parse check:")
    if precision == "fp16" and not FP16_FROM_ONNX:  # FP16 flag: keep_fp32 layers pinned
        assert manifest["keep_fp32"]["applied"] == bool(manifest["keep_fp32"]["listed"])
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


@pytest.mark.parametrize("model", ["tiny_classifier", "tiny_decoder"])
def test_int8_engine_from_the_committed_qdq_onnx(request, tmp_path, timing_cache, model):
    onnx_path = request.getfixturevalue(f"{model}_onnx")
    qdq = _variant(onnx_path, "qdq")
    profiles = build_profiles(load_onnx_sidecar(onnx_path), batch=(1, 2, 2), seq=(1, 16, 16))
    plan = tmp_path / f"{model}.int8.plan"
    manifest = build_engine(onnx_path, plan, _options("int8", timing_cache), profiles,
                            qdq_onnx=qdq)
    assert manifest["int8"]["source"] == "qdq" and manifest["network"]["file"] == str(qdq)
    assert manifest["precision_plan"]["strongly_typed"] == trt_info.has_strongly_typed(VERSION)
    if model == "tiny_classifier":
        # TensorRT and ORT both execute the same Q/DQ graph: close, not bit-equal.
        assert _compare(qdq, plan, _classifier_feeds(), atol=5e-3, rtol=5e-3)


@pytest.mark.skipif(not FP16_FROM_ONNX, reason=f"TensorRT {VERSION} builds fp16 with the FP16 "
                    "flag (tested above); the FP16 ONNX is TensorRT 11's way")
def test_fp16_engine_on_tensorrt_11_is_strongly_typed_from_the_fp16_onnx(
        tiny_decoder_onnx, tmp_path, timing_cache):
    fp16 = _variant(tiny_decoder_onnx, "fp16")
    profiles = build_profiles(load_onnx_sidecar(tiny_decoder_onnx), batch=(1, 1, 2),
                              seq=(1, 16, 16))
    manifest = build_engine(tiny_decoder_onnx, tmp_path / "d.fp16.plan",
                            _options("fp16", timing_cache), profiles, fp16_onnx=fp16)
    assert manifest["network"]["mode"] == "strongly-typed"
    assert manifest["network"]["file"] == str(fp16)
    assert manifest["keep_fp32"]["applied"] is False


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
