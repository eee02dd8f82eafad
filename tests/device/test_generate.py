"""Sampling, the KV-cache layout and generation on the tiny decoder ONNX (ONNX Runtime, CPU)."""
from __future__ import annotations

import dataclasses
import tracemalloc

import numpy as np
import pytest
from tiny_data import load_reference

from common.errors import ToolkitError
from runtime.buffers import ALIGNMENT, HostArena
from runtime.kv_cache import KVCache, check_slot_stride, kv_cache_nbytes
from runtime.sampling import Sampler, StopConditions

ort = pytest.importorskip("onnxruntime")


# --- sampling ------------------------------------------------------------------------------
def _logits(seed: int, vocab: int = 300) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, 2.0, vocab).astype(np.float32)  # (vocab,)


def _topk(logits: np.ndarray, k: int, shuffle_seed: int | None = None):
    order = np.argsort(-logits, kind="stable")[:k]
    if shuffle_seed is not None:  # the top-K path must not depend on the graph's output order
        order = np.random.default_rng(shuffle_seed).permutation(order)
    return logits[order], order.astype(np.int32)  # (k,) fp32, (k,) int32


def test_greedy_is_argmax_on_both_paths_and_ties_pick_the_lowest_id():
    sampler = Sampler()
    for seed in range(5):
        logits = _logits(seed)
        assert sampler.sample_logits(logits) == int(np.argmax(logits))
        assert sampler.sample_topk(*_topk(logits, 16, shuffle_seed=seed)) == int(np.argmax(logits))
    tied = np.zeros(10, np.float32)
    tied[[7, 3]] = 5.0
    values, indices = np.array([5.0, 5.0, 1.0], np.float32), np.array([7, 3, 0], np.int32)
    assert sampler.sample_logits(tied) == 3
    assert sampler.sample_topk(values, indices) == 3


def test_top_k_never_leaves_the_k_best():
    logits = _logits(1)
    allowed = set(np.argsort(-logits)[:5].tolist())
    sampler = Sampler(temperature=2.0, top_k=5, seed=3)
    drawn = {sampler.sample_logits(logits) for _ in range(400)}
    assert drawn <= allowed and len(drawn) >= 3  # it samples, within the k


def test_top_p_keeps_the_smallest_prefix_reaching_the_mass():
    probs = np.array([0.5, 0.3, 0.15, 0.05])
    logits = np.log(probs).astype(np.float32)
    low = Sampler(temperature=1.0, top_p=0.75, seed=0)
    draws = np.array([low.sample_logits(logits) for _ in range(2000)])
    assert set(draws.tolist()) == {0, 1}
    assert abs(np.mean(draws == 0) - 0.5 / 0.8) < 0.05  # renormalised inside the nucleus
    high = Sampler(temperature=1.0, top_p=0.85, seed=0)
    assert {high.sample_logits(logits) for _ in range(2000)} == {0, 1, 2}


def test_seed_makes_draws_reproducible():
    logits = _logits(2)
    def draws(seed):
        sampler = Sampler(temperature=1.0, top_k=50, top_p=0.95, seed=seed)
        return [sampler.sample_logits(logits) for _ in range(50)]
    assert draws(7) == draws(7)
    assert draws(7) != draws(8)


@pytest.mark.parametrize("top_k,top_p", [(10, 1.0), (10, 0.8), (16, 0.9), (1, 1.0)])
def test_top_k_output_path_draws_what_the_full_logits_path_draws(top_k, top_p):
    full = Sampler(temperature=0.8, top_k=top_k, top_p=top_p, seed=11)
    graph = Sampler(temperature=0.8, top_k=top_k, top_p=top_p, seed=11)
    assert not graph.needs_full_logits(16)
    for step in range(60):
        logits = _logits(100 + step)
        assert graph.sample_topk(*_topk(logits, 16, shuffle_seed=step)) == \
            full.sample_logits(logits)


def test_sampler_says_when_the_graph_top_k_is_not_enough():
    assert Sampler(temperature=1.0).needs_full_logits(16)  # no top-k: the whole vocabulary
    assert Sampler(temperature=1.0, top_k=17).needs_full_logits(16)
    assert not Sampler().needs_full_logits(16)  # greedy needs only the best
    with pytest.raises(ToolkitError, match="needs the full logits"):
        Sampler(temperature=1.0, top_k=32).sample_topk(*_topk(_logits(0), 16))
    with pytest.raises(ToolkitError, match="top_p"):
        Sampler(top_p=0.0)


def test_stop_conditions_order_eos_then_token_limit_then_context():
    stop = StopConditions(eos_id=1, max_new_tokens=3, context_limit=10)
    assert stop.reason(1, 3, 10) == "eos"
    assert stop.reason(5, 3, 10) == "max_new_tokens"
    assert stop.reason(5, 2, 10) == "context"
    assert stop.reason(5, 2, 9) is None


# --- KV cache layout -----------------------------------------------------------------------
def test_kv_blocks_are_aligned_disjoint_and_slots_follow_the_stride():
    layers, max_seq, batch, kv_dim = 3, 10, 2, 24  # 192-byte stride: fine on ONNX Runtime
    nbytes = kv_cache_nbytes(layers, max_seq, batch, kv_dim)
    arena = HostArena(nbytes + 256)
    kv = KVCache(arena, 256, layers, max_seq, batch, kv_dim, aligned_slots=False)
    bases = sorted(kv.base.values())
    assert len(bases) == 2 * layers and all(b % ALIGNMENT == 0 for b in bases)
    assert all(b2 - b1 >= max_seq * batch * kv_dim * 4 for b1, b2 in zip(bases, bases[1:]))
    assert bases[-1] + kv.block_nbytes <= arena.nbytes
    bindings = kv.make_bindings()
    kv.update_bindings(bindings, past=4, new=2)
    stride = batch * kv_dim * 4
    assert bindings["past_key_1"].offset == kv.base[(1, "key")]
    assert bindings["past_key_1"].shape == (4, batch, kv_dim)
    assert bindings["new_value_2"].offset == kv.base[(2, "value")] + 4 * stride
    assert bindings["new_value_2"].shape == (2, batch, kv_dim)
    # What the graph writes through new_value_2 lands at positions 4..5 of that block.
    bindings["new_value_2"].view(np.float32)[...] = 7.0
    block = kv.block(2, "value")  # (max_seq, batch, kv_dim)
    assert np.all(block[4:6] == 7.0) and not block[:4].any() and not block[6:].any()
    with pytest.raises(ToolkitError, match="max_seq"):
        kv.update_bindings(bindings, past=9, new=2)


def test_windows_cover_the_prefix_and_decode_steps_write_new_to_a_scratch_slot():
    layers, max_seq, batch, kv_dim = 2, 10, 2, 24
    plain = kv_cache_nbytes(layers, max_seq, batch, kv_dim)
    nbytes = kv_cache_nbytes(layers, max_seq, batch, kv_dim, windows=True)
    assert nbytes > plain  # one more position a block: the scratch slot
    kv = KVCache(HostArena(nbytes), 0, layers, max_seq, batch, kv_dim, aligned_slots=False,
                 windows=True)
    bindings = kv.make_bindings()
    stride, base = batch * kv_dim * 4, kv.base[(1, "value")]
    kv.update_bindings(bindings, past=0, new=4)  # prefill: new_* written in place
    assert (bindings["new_value_1"].offset, bindings["new_value_1"].shape) == \
        (base, (4, batch, kv_dim))
    assert (bindings["present_value_1"].offset, bindings["present_value_1"].shape) == \
        (base, (4, batch, kv_dim))
    for past in (4, 9):  # decode steps: new_* fixed after the last position, windows grow
        kv.update_bindings(bindings, past=past, new=1)
        assert bindings["new_value_1"].offset == base + max_seq * stride
        assert bindings["present_value_1"].shape == (past + 1, batch, kv_dim)
        assert bindings["present_value_1"].offset == bindings["past_value_1"].offset == base
    scratch = bindings["new_value_1"]
    assert scratch.offset + scratch.nbytes(np.float32) <= kv.base[(1, "value")] + kv.block_nbytes
    scratch.view(np.float32)[...] = 3.0  # outside every window: no cached position changes
    assert not kv.block(1, "value").any()


def test_slot_stride_must_be_256_aligned_for_tensorrt():
    check_slot_stride(1, 64, np.float32)  # 256 bytes
    check_slot_stride(4, 32, np.float16)  # 256 bytes
    with pytest.raises(ToolkitError, match=r"1\*32\*4 = 128 bytes.*kv_dim 64 or batch 2"):
        check_slot_stride(1, 32, np.float32)
    with pytest.raises(ToolkitError, match=r"2\*32\*2 = 128 bytes.*kv_dim 64 or batch 4"):
        check_slot_stride(2, 32, np.float16)
    arena = HostArena(kv_cache_nbytes(2, 8, 1, 32))
    with pytest.raises(ToolkitError, match="not a multiple of 256"):
        KVCache(arena, 0, 2, 8, 1, 32, aligned_slots=True)


# --- generation on the tiny decoder --------------------------------------------------------
@pytest.fixture(scope="module")
def decoder(tiny_decoder_onnx):
    from runtime.generate import Generator, open_decoder
    from runtime.session import open_session

    info, tok = open_decoder(tiny_decoder_onnx)
    with open_session(tiny_decoder_onnx) as session:
        generator = Generator(session, tok, info, max_batch=2)
        yield generator
        generator.close()


def _prompt(decoder, text):
    from runtime.generate import encode_prompt

    return encode_prompt(decoder.tokenizer, text, decoder.info.eos_id)


PROMPTS = ("the cat sat on", "a little girl loved the happy dog and the sun")


def test_greedy_tokens_equal_the_pytorch_reference(decoder, tiny_decoder_onnx):
    """PyTorch's greedy tokens were recorded when the fixture was made (make_fixtures.py);
    tests/host/test_fixtures.py checks the record against PyTorch today."""
    reference = load_reference(tiny_decoder_onnx)["greedy"]
    assert [r["prompt"] for r in reference] == list(PROMPTS)
    for ref in reference:
        ids = _prompt(decoder, ref["prompt"])
        assert ids == ref["prompt_ids"]
        ours = decoder.generate_ids([ids], len(ref["tokens"]), Sampler())
        assert ours.tokens[0] == ref["tokens"] and len(ref["tokens"]) > 0
        assert ours.stop_reasons[0] == ref["stop_reason"]


def test_generation_stops_at_each_limit(decoder):
    ids = _prompt(decoder, PROMPTS[0])
    limited = decoder.generate_ids([ids], 5, Sampler())
    assert len(limited.tokens[0]) == 5 and limited.stop_reasons == ["max_new_tokens"]
    full = decoder.generate_ids([ids], 1000, Sampler())
    assert full.stop_reasons == ["context"]
    assert len(ids) + len(full.tokens[0]) == decoder.context_limit == 64
    # End-of-text: make the third greedy token the eos id; it is neither returned nor counted.
    third = full.tokens[0][2]
    original = decoder.info
    decoder.info = dataclasses.replace(original, eos_id=third)
    try:
        stopped = decoder.generate_ids([ids], 1000, Sampler())
    finally:
        decoder.info = original
    first_eos = full.tokens[0].index(third)
    assert stopped.tokens[0] == full.tokens[0][:first_eos] and stopped.stop_reasons == ["eos"]
    assert decoder.generate_ids([ids], 0, Sampler()).tokens == [[]]


def test_streaming_callback_order_and_text(decoder):
    calls = []
    ids = [_prompt(decoder, text) for text in PROMPTS]
    result = decoder.generate_ids(ids, 12, Sampler(),
                                  lambda r, t, piece: calls.append((r, t, piece)))
    for row in (0, 1):
        mine = [(t, piece) for r, t, piece in calls if r == row]
        assert [t for t, _ in mine] == result.tokens[row]
        assert "".join(p for _, p in mine) == decoder.tokenizer.decode(result.tokens[row])
    # Rows are visited in order at every step: the call sequence interleaves 0, 1, 0, 1, ...
    assert [r for r, _, _ in calls] == [0, 1] * 12


def test_batch_of_two_prompt_lengths_equals_single_runs(decoder):
    ids = [_prompt(decoder, text) for text in PROMPTS]
    assert len(ids[0]) != len(ids[1])
    batched = decoder.generate_ids(ids, 20, Sampler())
    singles = [decoder.generate_ids([row], 20, Sampler()).tokens[0] for row in ids]
    assert batched.tokens == singles
    assert batched.prefill_ms > 0 and len(batched.decode_ms) == 19
    assert batched.decode_past.tolist() == list(range(len(ids[1]), len(ids[1]) + 19))


class CopyingArena(HostArena):
    """A host arena that says it needs copies, as a CudaArena does; it records them."""

    copies = True

    def __init__(self, nbytes):
        super().__init__(nbytes)
        self.uploads, self.downloads = [], []  # (offset, nbytes) per call

    def upload(self, offset=0, nbytes=None):
        super().upload(offset, nbytes)
        self.uploads.append((offset, nbytes))

    def download(self, offset=0, nbytes=None):
        super().download(offset, nbytes)
        self.downloads.append((offset, nbytes))


@pytest.mark.parametrize("sampler", [Sampler(), Sampler(temperature=1e-6, seed=0)],
                         ids=["top-k outputs", "full logits"])
def test_arenas_that_need_copies_get_every_step_uploaded_and_downloaded(
        decoder, tiny_decoder_onnx, monkeypatch, sampler):
    """The host arena skips its no-op copies; a device arena (CUDA) must still get the step's
    inputs uploaded and the sampler's outputs downloaded, every step, before it is read."""
    from runtime.generate import Generator
    from runtime.session import open_session

    ids = [_prompt(decoder, PROMPTS[0])]
    expected = decoder.generate_ids(ids, 10, sampler).tokens
    with open_session(tiny_decoder_onnx) as session:
        monkeypatch.setattr(session, "allocate", CopyingArena)
        generator = Generator(session, decoder.tokenizer, decoder.info, max_batch=1)
        result = generator.generate_ids(ids, 10, sampler)
        arena, plan = generator.arena, generator.plan
    assert result.tokens == expected
    runs = 1 + len(result.decode_ms)  # the prefill, then each decode step
    uploaded = [offset for offset, _ in arena.uploads]
    for name in ("input_ids", "position_ids", "attention_mask"):
        assert uploaded.count(plan.offset(name)) == runs, name
    if sampler.needs_full_logits(generator.graph_k):
        assert len(arena.downloads) == runs  # one row of logits per run (batch 1)
    else:
        downloaded = [offset for offset, _ in arena.downloads]
        assert downloaded.count(plan.offset("topk_values")) == runs
        assert downloaded.count(plan.offset("topk_indices")) == runs


def test_cache_windows_are_bound_over_the_cache_itself(decoder):
    """present_* (past + new) is bound over positions [0:past+new] of its layer's cache block,
    the bytes its Concat reads, so ONNX Runtime copies nothing; no step buffer is planned for
    it. The greedy reference test checks the tokens this gives."""
    ids = [_prompt(decoder, PROMPTS[0])]
    result = decoder.generate_ids(ids, 6, Sampler())
    total = int(result.decode_past[-1]) + 1  # the last step's past + new
    assert decoder.kv.windows and not any(n.startswith("present_") for n in decoder.plan.names)
    slot = decoder.kv.slot_nbytes
    for layer in range(decoder.info.layers):
        for kind in ("key", "value"):
            window = decoder.bindings[f"present_{kind}_{layer}"]
            assert window.arena is decoder.arena
            assert window.offset == decoder.bindings[f"past_{kind}_{layer}"].offset \
                == decoder.kv.base[(layer, kind)]
            assert window.shape == (total, 1, decoder.info.kv_dim)
            scratch = decoder.bindings[f"new_{kind}_{layer}"].offset  # where decode wrote new_*
            assert scratch == window.offset + decoder.context_limit * slot


def test_window_outputs_on_a_backend_that_cannot_overlap_them_are_refused(tiny_decoder_onnx):
    """TensorRT promises nothing for an output over an input: an engine that still has the
    present_* outputs is refused with the way out, not run on overlapping buffers."""
    from runtime.generate import Generator, open_decoder
    from runtime.session import open_session

    info, tok = open_decoder(tiny_decoder_onnx)
    with open_session(tiny_decoder_onnx) as session:
        session.overlapping_outputs = False
        with pytest.raises(ToolkitError, match=r"present_key_0.*engines\.build"):
            Generator(session, tok, info, max_batch=1)


def test_full_logits_path_at_tiny_temperature_matches_greedy(decoder):
    ids = [_prompt(decoder, PROMPTS[1])]
    greedy = decoder.generate_ids(ids, 15, Sampler()).tokens
    sharp = Sampler(temperature=1e-6, seed=0)  # no top-k: reads the last logits row instead
    assert sharp.needs_full_logits(decoder.graph_k)
    assert decoder.generate_ids(ids, 15, sharp).tokens == greedy
    seeded = [decoder.generate_ids(ids, 15, Sampler(1.0, top_k=8, seed=5)).tokens
              for _ in range(2)]
    assert seeded[0] == seeded[1]


def test_requests_outside_the_profile_are_refused(decoder):
    from runtime.generate import Generator

    with pytest.raises(ToolkitError, match="1..2 at once"):
        decoder.generate_ids([[1, 5]] * 3, 5, Sampler())
    with pytest.raises(ToolkitError, match="at most 64"):
        decoder.generate_ids([[1] * 65], 5, Sampler())
    with pytest.raises(ToolkitError, match="vocabulary"):
        decoder.generate_ids([[1, 300]], 5, Sampler())
    with pytest.raises(ToolkitError, match="allow 1..8"):
        Generator(decoder.session, decoder.tokenizer, decoder.info, max_batch=9)


def test_decode_loop_does_not_grow_allocations(tiny_decoder_long_onnx):
    from runtime.generate import Generator, encode_prompt, open_decoder
    from runtime.session import open_session

    info, tok = open_decoder(tiny_decoder_long_onnx)
    with open_session(tiny_decoder_long_onnx) as session:
        generator = Generator(session, tok, dataclasses.replace(info, eos_id=None), max_batch=1)
        prompt = encode_prompt(tok, "the cat", info.eos_id)
        traced = np.zeros(111, np.int64)  # (111,) bytes traced after each token
        count = np.zeros(1, np.int64)

        def on_token(_row, _token, _piece):  # stores nothing that grows
            traced[count[0]] = tracemalloc.get_traced_memory()[0]
            count[0] += 1

        generator.generate_ids([prompt], 20, Sampler(), on_token)  # warm every code path
        tracemalloc.start()
        try:
            result = generator.generate_ids([prompt], 111, Sampler(), on_token=None)
            count[0] = 0
            generator.generate_ids([prompt], 111, Sampler(), on_token)
        finally:
            tracemalloc.stop()
        generator.close()
    assert len(result.tokens[0]) == 111
    growth_10_to_110 = int(traced[110] - traced[10])  # 100 decode steps
    growth_10_to_20 = int(traced[20] - traced[10])  # 10 decode steps
    assert abs(growth_10_to_110) < 1024, growth_10_to_110
    assert abs(growth_10_to_110 - growth_10_to_20) < 1024


def test_generate_cli_streams_and_reports(tiny_decoder_onnx, tiny_classifier_onnx):
    from click.testing import CliRunner

    from runtime.generate import main

    runner = CliRunner()
    result = runner.invoke(main, ["--model", str(tiny_decoder_onnx), "--prompt", "the cat",
                                  "--max-new-tokens", "6"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("the cat") and "6 tokens" in result.output
    batch = runner.invoke(main, ["--model", str(tiny_decoder_onnx), "--prompt", "the dog",
                                 "--batch", "2", "--max-new-tokens", "3", "--temperature", "1",
                                 "--top-k", "5"])
    assert batch.exit_code == 0 and "[0] the dog" in batch.output and "[1] the dog" in batch.output
    wrong = runner.invoke(main, ["--model", str(tiny_classifier_onnx), "--prompt", "x"])
    assert wrong.exit_code == 2 and "needs a decoder model" in wrong.output


@pytest.mark.trt
@pytest.mark.gpu
def test_tensorrt_engine_generates_like_onnxruntime(tmp_path, tiny_decoder_long_onnx):
    """Prefill and decode profiles of a real engine, KV slots bound in device memory."""
    pytest.importorskip("tensorrt", reason="TensorRT is not installed: engine tests run on a "
                                           "Jetson or a GPU box with TensorRT")
    pytest.importorskip("pycuda.driver", reason="pycuda is not installed (TensorRT buffers)")
    from engines.build import build_engine
    from runtime.generate import Generator, encode_prompt, open_decoder
    from runtime.session import open_session

    # d_model 64: a KV slot is 64 * 4 = 256 bytes at batch 1, as TensorRT's alignment needs.
    onnx_path = tiny_decoder_long_onnx
    plan = tmp_path / "decoder.fp32.plan"
    build_engine(onnx_path, plan)
    info, tok = open_decoder(onnx_path)
    prompts = [encode_prompt(tok, text, info.eos_id) for text in PROMPTS]
    tokens = {}
    for path in (onnx_path, plan):
        with open_session(path) as session:
            generator = Generator(session, tok, info, max_batch=2)
            tokens[session.backend] = [generator.generate_ids([p], 16, Sampler()).tokens[0]
                                       for p in prompts]
            assert generator.generate_ids(prompts, 16, Sampler()).tokens == \
                tokens[session.backend]
            generator.close()
    for ours, reference in zip(tokens["tensorrt"], tokens["onnxruntime"]):
        # TF32 kernels may flip a near tie of a random model late; the start must agree.
        assert ours[:8] == reference[:8]
