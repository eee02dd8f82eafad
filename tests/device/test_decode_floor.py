"""benchmarks/decode_floor.py: the bare decode loop does the runtime's work, token for token."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from click.testing import CliRunner

from benchmarks.decode_floor import floor_generate, main, open_floor_session
from common.errors import ToolkitError

PROMPTS = ("the cat sat on", "a little girl loved the happy dog and the sun")


@pytest.fixture(scope="module")
def runtime_decoder(tiny_decoder_onnx):
    """The runtime's Generator with the end-of-text token ignored, as the floor loop does."""
    from runtime.generate import Generator, open_decoder
    from runtime.session import open_session

    info, tok = open_decoder(tiny_decoder_onnx)
    info = dataclasses.replace(info, eos_id=None)
    with open_session(tiny_decoder_onnx) as session:
        generator = Generator(session, tok, info, max_batch=1)
        yield generator
        generator.close()


@pytest.mark.parametrize("prompt", PROMPTS)
def test_floor_loop_generates_the_runtimes_greedy_tokens(runtime_decoder, tiny_decoder_onnx,
                                                         prompt):
    from runtime.generate import encode_prompt
    from runtime.sampling import Sampler

    info = runtime_decoder.info
    ids = encode_prompt(runtime_decoder.tokenizer, prompt, None)
    n = info.max_seq_len - len(ids)  # to the end of the context: every cache position written
    expected = runtime_decoder.generate_ids([ids], n, Sampler()).tokens[0]
    session = open_floor_session(str(tiny_decoder_onnx), threads=1)
    tokens, cache = floor_generate(session, info, ids, n)
    assert len(expected) == n and tokens == expected
    # The tiny model's tokens repeat, so a cache slot off by one could still give them: the
    # cache must also hold what one run over the whole sequence computes for each position.
    run = list(ids) + tokens[:-1]
    whole = _one_run(session, run, info.layers, info.kv_dim)
    for name, block in cache.items():
        np.testing.assert_allclose(block[:len(run)], whole["new_" + name], atol=1e-4)


def _one_run(session, ids, layers, kv_dim):
    feeds = {"input_ids": np.asarray([ids], np.int32),
             "position_ids": np.arange(len(ids), dtype=np.int32)[None],
             "attention_mask": np.ones((1, len(ids)), np.int32)}
    for layer in range(layers):
        for kind in ("key", "value"):
            feeds[f"past_{kind}_{layer}"] = np.zeros((0, 1, kv_dim), np.float32)
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))


def test_floor_loop_refuses_an_empty_prompt(runtime_decoder, tiny_decoder_onnx):
    session = open_floor_session(str(tiny_decoder_onnx), threads=1)
    with pytest.raises(ToolkitError, match="needs a prompt"):
        floor_generate(session, runtime_decoder.info, [], 5)


def test_floor_cli_reports_each_request_and_refuses_a_request_past_the_context(
        tiny_decoder_onnx):
    runner = CliRunner()
    ok = runner.invoke(main, ["--onnx", str(tiny_decoder_onnx), "--tokens", "20",
                              "--prompt-tokens", "4", "--requests", "2", "--threads", "1"])
    assert ok.exit_code == 0, ok.output
    assert ok.output.count("tokens/s") == 3 and "best of 2:" in ok.output
    long = runner.invoke(main, ["--onnx", str(tiny_decoder_onnx), "--tokens", "70",
                                "--prompt-tokens", "4"])
    assert long.exit_code == 1
    assert "exceed" in long.output and "tiny_decoder.onnx" in long.output
    assert "Traceback" not in long.output
