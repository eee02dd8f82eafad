"""Runtime core on the CPU: buffer layout, the ONNX Runtime session, profile checks, errors."""
from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pytest

from common.errors import ToolkitError
from common.fileio import sha256_file
from runtime.buffers import ALIGNMENT, BufferPlan, HostArena, align
from runtime.session import Binding, open_session

ort = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def classifier_onnx(tiny_classifier_onnx):
    return tiny_classifier_onnx


@pytest.fixture(scope="module")
def decoder_onnx(tiny_decoder_onnx):
    return tiny_decoder_onnx


def _ids(rng, batch, seq, vocab=300):
    return rng.integers(3, vocab, size=(batch, seq), dtype=np.int32)  # (batch, seq) int32


# --- buffers -------------------------------------------------------------------------------
def test_align_rounds_up_to_256():
    assert [align(n) for n in (0, 1, 255, 256, 257, 1000)] == [0, 256, 256, 256, 512, 1024]


def test_buffer_plan_offsets_aligned_disjoint_and_sized_at_profile_max(classifier_onnx):
    with open_session(classifier_onnx) as session:
        plan = BufferPlan.for_session(session)
        max_shapes = session.max_input_shapes(0)
        spans = sorted(plan.span(name) for name in plan.names)
        assert set(plan.names) == {"input_ids", "attention_mask", "logits"}
        assert all(offset % ALIGNMENT == 0 for offset, _ in spans)
        assert all(a_off + a_len <= b_off for (a_off, a_len), (b_off, _) in zip(spans, spans[1:]))
        assert plan.slot("input_ids").shape == max_shapes["input_ids"]
        assert plan.slot("logits").shape == (max_shapes["input_ids"][0], 2)
        assert plan.span("input_ids")[1] == int(np.prod(max_shapes["input_ids"])) * 4
        assert plan.nbytes >= spans[-1][0] + spans[-1][1] and plan.nbytes % ALIGNMENT == 0
        arena = session.allocate(plan.nbytes)
        assert arena.ptr % ALIGNMENT == 0 and arena.host.dtype == np.uint8
        too_big = (max_shapes["input_ids"][0], max_shapes["input_ids"][1] + 1)
        with pytest.raises(ToolkitError, match="does not fit its slot"):
            plan.binding(arena, "input_ids", too_big)


def test_binding_view_is_the_arena_memory():
    arena = HostArena(1000)
    binding = Binding(arena, 256, (2, 3))
    binding.view(np.float32)[...] = 7.0
    raw = arena.host[256:256 + 24].view(np.float32)
    assert np.all(raw == 7.0) and np.all(arena.host[:256] == 0) and np.all(arena.host[280:] == 0)
    with pytest.raises(ToolkitError, match="outside the arena"):
        Binding(arena, 1000, (64,)).view(np.float32)


# --- ONNX Runtime session ------------------------------------------------------------------
def test_classifier_matches_plain_onnxruntime(classifier_onnx):
    rng = np.random.default_rng(0)
    reference = ort.InferenceSession(str(classifier_onnx), providers=["CPUExecutionProvider"])
    with open_session(classifier_onnx) as session:
        assert session.backend == "onnxruntime"
        assert session.inputs["input_ids"].dtype == np.int32
        assert session.inputs["input_ids"].shape == (-1, -1)
        assert session.outputs["logits"].shape == (-1, 2)
        plan = BufferPlan.for_session(session)
        arena = session.allocate(plan.nbytes)
        for batch, seq in ((3, 17), (1, 5), (8, 64)):  # one arena, shapes change between runs
            ids, mask = _ids(rng, batch, seq), np.ones((batch, seq), np.int32)
            mask[0, seq // 2:] = 0
            shapes = {"input_ids": ids.shape, "attention_mask": mask.shape, "logits": (batch, 2)}
            bindings = plan.bindings(arena, shapes)
            bindings["input_ids"].view(np.int32)[...] = ids
            bindings["attention_mask"].view(np.int32)[...] = mask
            session.run(bindings)
            session.synchronize()
            expected = reference.run(None, {"input_ids": ids, "attention_mask": mask})[0]
            np.testing.assert_allclose(bindings["logits"].view(np.float32), expected,
                                       rtol=1e-5, atol=1e-6)
        simple = session.run_simple({"input_ids": ids, "attention_mask": mask})
        np.testing.assert_allclose(simple["logits"], expected, rtol=1e-5, atol=1e-6)


def test_out_of_profile_shape_names_tensor_and_range(classifier_onnx):
    with open_session(classifier_onnx) as session:
        max_batch, max_seq = session.max_input_shapes(0)["input_ids"]
        bad = (1, max_seq + 1)
        plan = BufferPlan.from_shapes({"input_ids": (bad, np.int32),
                                       "attention_mask": (bad, np.int32),
                                       "logits": ((1, 2), np.float32)})
        arena = session.allocate(plan.nbytes)
        bindings = plan.bindings(arena, {"input_ids": bad, "attention_mask": bad,
                                         "logits": (1, 2)})
        expected = (rf"input 'input_ids' shape \(1, {max_seq + 1}\) is outside profile 0: "
                    rf"min \(1, 1\) max \({max_batch}, {max_seq}\)")
        with pytest.raises(ToolkitError, match=expected):
            session.run(bindings)
        with pytest.raises(ToolkitError, match="no optimization profile"):
            session.run_simple({"input_ids": np.zeros(bad, np.int32),
                                "attention_mask": np.ones(bad, np.int32)})
        with pytest.raises(ToolkitError, match="profile 1 does not exist"):
            session.run(bindings, profile=1)


def test_bad_bindings_are_refused(classifier_onnx):
    with open_session(classifier_onnx) as session:
        plan = BufferPlan.for_session(session)
        arena = session.allocate(plan.nbytes)
        shapes = {"input_ids": (2, 4), "attention_mask": (2, 4), "logits": (2, 2)}
        bindings = plan.bindings(arena, shapes)
        with pytest.raises(ToolkitError, match=r"missing \['logits'\]"):
            session.run({k: v for k, v in bindings.items() if k != "logits"})
        with pytest.raises(ToolkitError, match="output 'logits' bound with shape"):
            session.run({**bindings, "logits": Binding(arena, bindings["logits"].offset, (2, 3))})
        with pytest.raises(ToolkitError, match="output 'logits'.*these inputs give"):
            session.run({**bindings, "logits": Binding(arena, bindings["logits"].offset, (3, 2))})
        with pytest.raises(ToolkitError, match="does not fit its arena"):
            session.run({**bindings, "logits": Binding(arena, arena.nbytes - 8, (2, 2))})
        with pytest.raises(ToolkitError, match="not 4-byte aligned"):
            session.run({**bindings, "logits": Binding(arena, 2, (2, 2))})
        with pytest.raises(ToolkitError, match="dtype float64"):
            session.run_simple({"input_ids": np.zeros((1, 3)), "attention_mask": np.ones((1, 3))})


def test_repeated_runs_do_not_allocate(classifier_onnx):
    """Same bindings, and bindings whose shapes change every run (re-bound each time)."""
    with open_session(classifier_onnx) as session:
        plan = BufferPlan.for_session(session)
        arena = session.allocate(plan.nbytes)
        plan.view(arena, "attention_mask")[...] = 1  # whole slot: every smaller shape reads 1s
        big = plan.bindings(arena, {"input_ids": (4, 32), "attention_mask": (4, 32),
                                    "logits": (4, 2)})
        small = plan.bindings(arena, {"input_ids": (2, 7), "attention_mask": (2, 7),
                                      "logits": (2, 2)})

        def run(n):
            for i in range(n):
                session.run(big)
                session.run(big if i % 2 else small)

        run(10)
        tracemalloc.start()
        run(10)
        before = tracemalloc.get_traced_memory()[0]
        run(200)
        after = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        assert after - before < 2048, f"{after - before} bytes still held after 200 runs"


def test_sessions_keep_no_memory_pattern_per_shape(decoder_onnx):
    """Every decode step has a new past length: a per-shape allocation plan would be built and
    kept once per step (runtime.ort_backend.session_options)."""
    with open_session(decoder_onnx) as session:
        assert session._sess.get_session_options().enable_mem_pattern is False


# --- decoder: KV cache appended in place ---------------------------------------------------
def _step_shapes(session, batch, past, new):
    vocab = session.outputs["logits"].shape[2]
    topk = session.outputs["topk_values"].shape[1]
    return {"input_ids": (batch, new), "position_ids": (batch, new),
            "attention_mask": (batch, past + new), "logits": (batch, new, vocab),
            "topk_values": (batch, topk), "topk_indices": (batch, topk)}


def _decoder_bindings(session, step_plan, step_arena, cache_plan, cache, batch, past, new):
    """One decoder call: past_* = prefix [0:past] of each cache, new_* = the slot at ``past``,
    present_* = prefix [0:past+new], the same bytes as past_* and new_* together."""
    bindings = step_plan.bindings(step_arena, _step_shapes(session, batch, past, new))
    for name in cache_plan.names:  # "key_cache_0", ...
        kind, layer = name.split("_")[0], name.rsplit("_", 1)[1]
        base, (_, _, kv_dim) = cache_plan.offset(name), cache_plan.slot(name).shape
        stride = batch * kv_dim * 4  # bytes per position of a (max_seq, batch, kv_dim) fp32 cache
        bindings[f"past_{kind}_{layer}"] = Binding(cache, base, (past, batch, kv_dim))
        bindings[f"new_{kind}_{layer}"] = Binding(cache, base + past * stride, (new, batch, kv_dim))
        bindings[f"present_{kind}_{layer}"] = Binding(cache, base, (past + new, batch, kv_dim))
    return bindings


@pytest.mark.parametrize("binding_path", ["pybind", "public"])
def test_decoder_appends_new_keys_in_place(decoder_onnx, binding_path):
    """Both ways the ORT backend binds by address (runtime.ort_backend._Binder): the pybind
    object directly (the fast path, which this onnxruntime must offer) and the public API. The
    present_* windows are bound over the cache they are concatenated from, as the generator
    binds them: the outputs must still be what an unbound run gives."""
    rng = np.random.default_rng(1)
    reference = ort.InferenceSession(str(decoder_onnx), providers=["CPUExecutionProvider"])
    with open_session(decoder_onnx) as session:
        assert session._binder._raw is not None  # the fast path is there to be tested
        if binding_path == "public":
            session._binder._raw = None
        layers = sum(name.startswith("past_key_") for name in session.inputs)
        kv_dim = session.inputs["past_key_0"].shape[2]
        batch, max_seq, prompt = 2, 16, 5
        cache_plan = BufferPlan()
        for layer in range(layers):
            for kind in ("key", "value"):
                cache_plan.add(f"{kind}_cache_{layer}", (max_seq, batch, kv_dim), np.float32)
        cache = session.allocate(cache_plan.nbytes)
        cache.host[...] = 0xAB  # sentinel: every byte the graph does not write keeps it
        specs = {**session.inputs, **session.outputs}
        step_plan = BufferPlan.from_shapes({
            name: (shape, specs[name].dtype)
            for name, shape in _step_shapes(session, batch, 0, max_seq).items()})
        step_arena = session.allocate(step_plan.nbytes)

        ids = _ids(rng, batch, prompt)
        feeds = {f"past_{k}_{layer}": np.zeros((0, batch, kv_dim), np.float32)
                 for layer in range(layers) for k in ("key", "value")}
        past = 0
        for new_ids in [ids] + [_ids(rng, batch, 1) for _ in range(3)]:  # prefill, 3 decodes
            new = new_ids.shape[1]
            bindings = _decoder_bindings(session, step_plan, step_arena, cache_plan, cache,
                                         batch, past, new)
            bindings["input_ids"].view(np.int32)[...] = new_ids
            bindings["position_ids"].view(np.int32)[...] = np.arange(past, past + new)
            bindings["attention_mask"].view(np.int32)[...] = 1
            session.run(bindings)
            feeds["input_ids"] = new_ids
            feeds["position_ids"] = np.tile(np.arange(past, past + new, dtype=np.int32),
                                            (batch, 1))
            feeds["attention_mask"] = np.ones((batch, past + new), np.int32)
            expected = dict(zip([o.name for o in reference.get_outputs()],
                                reference.run(None, feeds)))
            np.testing.assert_allclose(bindings["logits"].view(np.float32), expected["logits"],
                                       rtol=1e-4, atol=1e-5)
            np.testing.assert_array_equal(bindings["topk_indices"].view(np.int32),
                                          expected["topk_indices"])
            for layer in range(layers):
                for kind in ("key", "value"):
                    written = cache_plan.view(cache, f"{kind}_cache_{layer}")[past:past + new]
                    np.testing.assert_allclose(written, expected[f"new_{kind}_{layer}"],
                                               rtol=1e-5, atol=1e-6)
                    window = cache_plan.view(cache, f"{kind}_cache_{layer}")[:past + new]
                    np.testing.assert_allclose(window, expected[f"present_{kind}_{layer}"],
                                               rtol=1e-5, atol=1e-6)
                    name = f"past_{kind}_{layer}"
                    feeds[name] = np.concatenate([feeds[name], expected[f"new_{kind}_{layer}"]])
            past += new
        # Beyond the last written position every cache byte still holds the sentinel.
        used = past * batch * kv_dim * 4
        for name in cache_plan.names:
            offset, nbytes = cache_plan.span(name)
            assert np.all(cache.host[offset + used:offset + nbytes] == 0xAB)


def test_profile_ranges_give_prefill_and_decode_profiles(decoder_onnx):
    ranges = [{"new": (1, 16), "past": (0, 0), "total": (1, 16)},
              {"new": (1, 1), "past": (0, 15), "total": (1, 16)}]
    with open_session(decoder_onnx, profile_ranges=ranges) as session:
        assert len(session.profiles) == 2
        assert session.profiles[1]["input_ids"][2][1] == 1
        kv = session.inputs["past_key_0"].shape[2]
        prefill = {"input_ids": (1, 7), "attention_mask": (1, 7), "past_key_0": (0, 1, kv)}
        decode = {"input_ids": (1, 1), "attention_mask": (1, 8), "past_key_0": (7, 1, kv)}
        assert session.find_profile(prefill) == 0
        assert session.find_profile(decode) == 1
        with pytest.raises(ToolkitError, match="no optimization profile"):
            session.find_profile({"input_ids": (1, 2), "past_key_0": (3, 1, kv)})
        shapes = session.output_shapes({**session.max_input_shapes(1)}, 1)
        assert shapes["new_key_0"] == (1, session.max_input_shapes(1)["input_ids"][0], kv)


# --- opening -------------------------------------------------------------------------------
def test_missing_file_and_unknown_suffix(tmp_path):
    with pytest.raises(ToolkitError, match="model file not found: .*nope.onnx"):
        open_session(tmp_path / "nope.onnx")
    other = tmp_path / "model.bin"
    other.write_bytes(b"x")
    with pytest.raises(ToolkitError, match="expected a .onnx/.plan/.engine file"):
        open_session(other)


def test_onnx_without_sidecar_needs_profile_ranges(classifier_onnx, tmp_path):
    bare = tmp_path / "bare.onnx"
    bare.write_bytes(classifier_onnx.read_bytes())
    with pytest.raises(ToolkitError, match="no sidecar .*bare.onnx.json"):
        open_session(bare)
    with open_session(bare, profile_ranges=[{"batch": (1, 4), "seq": (1, 32)}]) as session:
        assert session.profiles[0]["input_ids"] == ((1, 1), (4, 32), (4, 32))
        out = session.run_simple({"input_ids": np.ones((2, 3), np.int32),
                                  "attention_mask": np.ones((2, 3), np.int32)})
        assert out["logits"].shape == (2, 2)


def test_corrupt_onnx_is_a_toolkit_error(classifier_onnx, tmp_path):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a protobuf")
    sidecar = json.loads((classifier_onnx.parent / (classifier_onnx.name + ".json")).read_text())
    sidecar["onnx_sha256"] = sha256_file(broken)  # past the stale-sidecar check, into ORT
    (tmp_path / "broken.onnx.json").write_text(json.dumps(sidecar))
    with pytest.raises(ToolkitError, match="onnxruntime cannot load .*broken.onnx"):
        open_session(broken)


def test_unavailable_provider_is_refused(classifier_onnx):
    with pytest.raises(ToolkitError, match="lacks providers \\['NoSuchExecutionProvider'\\]"):
        open_session(classifier_onnx, providers=["NoSuchExecutionProvider"])


def test_plan_without_tensorrt_is_a_clear_error(tmp_path):
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("TensorRT is installed here; tests/test_trt_backend.py covers engines")
    plan = tmp_path / "model.fp16.plan"
    plan.write_bytes(b"\0" * 64)
    with pytest.raises(ToolkitError, match="TensorRT is not installed"):
        open_session(plan)
