"""TensorRT session on a real GPU: engines built from the tiny ONNX graphs, compared with ORT.

Needs TensorRT, pycuda and a CUDA GPU; skipped elsewhere with the reason. Engines are built with
``engines.build.build_engine`` (fp32, profiles from the sidecar: one for the classifier,
prefill + decode for the decoder).
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from common.errors import ToolkitError
from runtime.buffers import ALIGNMENT, BufferPlan
from runtime.session import Binding, open_session

pytestmark = [pytest.mark.trt, pytest.mark.gpu]

pytest.importorskip("tensorrt", reason="TensorRT is not installed: engine tests run on a Jetson "
                                       "or a GPU box with TensorRT")
pytest.importorskip("pycuda.driver", reason="pycuda is not installed (needed for TensorRT buffers)")


def _build(onnx_path, tmp_path_factory, name):
    from engines.build import build_engine
    from engines.builder_config import BuildOptions

    plan = tmp_path_factory.mktemp(f"trt_{name}") / f"{name}.fp32.plan"
    build_engine(onnx_path, plan, BuildOptions(precision="fp32"))
    return plan


@pytest.fixture(scope="module")
def classifier_plan(tiny_classifier_onnx, tmp_path_factory):
    return _build(tiny_classifier_onnx, tmp_path_factory, "classifier")


@pytest.fixture(scope="module")
def decoder_plan(tiny_decoder_onnx, tmp_path_factory):
    return _build(tiny_decoder_onnx, tmp_path_factory, "decoder")


def test_classifier_engine_matches_onnxruntime(classifier_plan, tiny_classifier_onnx):
    rng = np.random.default_rng(0)
    with open_session(classifier_plan) as trt_session, \
            open_session(tiny_classifier_onnx) as ort_session:
        assert trt_session.backend == "tensorrt"
        assert set(trt_session.inputs) == set(ort_session.inputs)
        assert trt_session.inputs["input_ids"].dtype == np.int32
        for batch, seq in ((1, 1), (3, 17), (8, 64)):
            ids = rng.integers(3, 300, size=(batch, seq), dtype=np.int32)  # (batch, seq)
            mask = np.ones((batch, seq), np.int32)
            mask[0, seq // 2 + 1:] = 0
            feeds = {"input_ids": ids, "attention_mask": mask}
            got = trt_session.run_simple(feeds)["logits"]
            expected = ort_session.run_simple(feeds)["logits"]
            np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4)


def test_timings_and_out_of_profile(classifier_plan):
    with open_session(classifier_plan) as session:
        plan = BufferPlan.for_session(session)
        arena = session.allocate(plan.nbytes)
        assert arena.ptr % ALIGNMENT == 0
        shapes = {"input_ids": (2, 16), "attention_mask": (2, 16), "logits": (2, 2)}
        bindings = plan.bindings(arena, shapes)
        bindings["attention_mask"].view(np.int32)[...] = 1
        for name in ("input_ids", "attention_mask"):
            bindings[name].upload(np.int32)
        session.run(bindings)
        bindings["logits"].download(np.float32)
        session.synchronize()
        timings = session.last_timings
        assert timings["compute_ms"] > 0 and timings["h2d_ms"] >= 0 and timings["d2h_ms"] >= 0
        assert np.all(np.isfinite(bindings["logits"].view(np.float32)))
        max_batch, max_seq = session.max_input_shapes(0)["input_ids"]
        too_long = {**bindings, "input_ids": Binding(arena, 0, (1, max_seq + 1))}
        with pytest.raises(ToolkitError, match="outside profile 0"):
            session.run(too_long)
        misaligned = {**bindings, "logits": Binding(arena, bindings["logits"].offset + 4, (2, 2))}
        with pytest.raises(ToolkitError, match="256-byte aligned"):
            session.run(misaligned)


def test_decoder_prefill_and_decode_append_in_place(decoder_plan, tiny_decoder_onnx):
    """Prefill then decode steps with new keys written into the cache; logits equal ORT's."""
    rng = np.random.default_rng(2)
    with open_session(decoder_plan) as trt_session, open_session(tiny_decoder_onnx) as reference:
        layers = sum(name.startswith("past_key_") for name in trt_session.inputs)
        kv_dim = trt_session.inputs["past_key_0"].shape[2]
        vocab = trt_session.outputs["logits"].shape[2]
        topk = trt_session.outputs["topk_values"].shape[1]
        batch, max_seq = 2, 16
        stride = batch * kv_dim * 4  # bytes per cache position; 256 for batch 2, kv_dim 32
        assert stride % ALIGNMENT == 0
        cache_plan = BufferPlan()
        for layer in range(layers):
            for kind in ("key", "value"):
                cache_plan.add(f"{kind}_{layer}", (max_seq, batch, kv_dim), np.float32)
        cache = trt_session.allocate(cache_plan.nbytes)
        step_plan = BufferPlan.from_shapes({
            "input_ids": ((batch, max_seq), np.int32), "position_ids": ((batch, max_seq), np.int32),
            "attention_mask": ((batch, max_seq), np.int32),
            "logits": ((batch, max_seq, vocab), np.float32),
            "topk_values": ((batch, topk), np.float32), "topk_indices": ((batch, topk), np.int32)})
        step = trt_session.allocate(step_plan.nbytes)
        feeds = {f"past_{k}_{layer}": np.zeros((0, batch, kv_dim), np.float32)
                 for layer in range(layers) for k in ("key", "value")}
        past, profiles_used = 0, set()
        for new in (5, 1, 1, 1):
            ids = rng.integers(3, vocab, size=(batch, new), dtype=np.int32)  # (batch, new)
            bindings = step_plan.bindings(step, {
                "input_ids": (batch, new), "position_ids": (batch, new),
                "attention_mask": (batch, past + new), "logits": (batch, new, vocab),
                "topk_values": (batch, topk), "topk_indices": (batch, topk)})
            for layer in range(layers):
                for kind in ("key", "value"):
                    base = cache_plan.offset(f"{kind}_{layer}")
                    bindings[f"past_{kind}_{layer}"] = Binding(cache, base, (past, batch, kv_dim))
                    bindings[f"new_{kind}_{layer}"] = Binding(cache, base + past * stride,
                                                              (new, batch, kv_dim))
            bindings["input_ids"].view(np.int32)[...] = ids
            bindings["position_ids"].view(np.int32)[...] = np.arange(past, past + new)
            bindings["attention_mask"].view(np.int32)[...] = 1
            for name in ("input_ids", "position_ids", "attention_mask"):
                bindings[name].upload(np.int32)
            profile = trt_session.find_profile({n: bindings[n].shape for n in trt_session.inputs})
            profiles_used.add(profile)
            trt_session.run(bindings, profile)
            bindings["logits"].download(np.float32)
            cache.download()
            trt_session.synchronize()
            feeds.update(input_ids=ids, attention_mask=np.ones((batch, past + new), np.int32),
                         position_ids=np.tile(np.arange(past, past + new, dtype=np.int32),
                                              (batch, 1)))
            expected = reference.run_simple(feeds)
            np.testing.assert_allclose(bindings["logits"].view(np.float32), expected["logits"],
                                       rtol=1e-3, atol=1e-4)
            for layer in range(layers):
                for kind in ("key", "value"):
                    written = cache_plan.view(cache, f"{kind}_{layer}")[past:past + new]
                    np.testing.assert_allclose(written, expected[f"new_{kind}_{layer}"],
                                               rtol=1e-3, atol=1e-4)
                    name = f"past_{kind}_{layer}"
                    feeds[name] = np.concatenate([feeds[name], expected[f"new_{kind}_{layer}"]])
            past += new
        assert len(trt_session.profiles) == 2 and profiles_used == {0, 1}


def test_manifest_for_other_tensorrt_is_refused(classifier_plan, copy_of):
    plan = copy_of(classifier_plan)
    manifest_file = copy_of(classifier_plan.with_name(classifier_plan.name + ".json"))
    manifest = json.loads(manifest_file.read_text())
    manifest["tensorrt_version"] = "1.0.0"
    manifest_file.write_text(json.dumps(manifest))
    with pytest.raises(ToolkitError, match="built with TensorRT 1.0.0"):
        open_session(plan)


def test_corrupt_plan_is_refused_before_deserializing(classifier_plan, copy_of):
    plan = copy_of(classifier_plan)
    copy_of(classifier_plan.with_name(classifier_plan.name + ".json"))
    data = bytearray(plan.read_bytes())
    data[len(data) // 2] ^= 0xFF
    plan.write_bytes(bytes(data))
    with pytest.raises(ToolkitError, match="does not match its manifest"):
        open_session(plan)
