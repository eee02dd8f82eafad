"""The committed tiny models of the device suite are what tests/fixtures/make_fixtures.py makes
today: same tokenizer, same graph interface and sidecar, same outputs, same PyTorch reference.

Bytes are not compared (a new onnx or onnxsim release may serialise the same graph
differently); behaviour is. When this fails after a change to train/ or export/, rerun
``python tests/fixtures/make_fixtures.py`` and commit the files it writes.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from make_fixtures import FIXTURES, make_all, reference_path

from common.artifacts import sidecar_path

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("torch")

# Volatile sidecar fields: where and how fast the export ran, and the versions it ran with.
VOLATILE = {"checkpoint", "export_seconds", "onnx_sha256", "onnx_version", "torch_version",
            "simplifier", "simplifier_note"}


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    return make_all(tmp_path_factory.mktemp("fresh_fixtures"))


def _committed(name):
    from pathlib import Path

    return Path(__file__).resolve().parents[1] / "fixtures" / f"{name}.onnx"


def _feeds(session, sidecar, rng):
    """Random valid inputs at a shape inside the profile: batch 2, 7 new positions, 5 past."""
    feeds = {}
    for spec in session.get_inputs():
        name = spec.name
        if name in ("input_ids",):
            feeds[name] = rng.integers(3, sidecar["vocab_size"], (2, 7)).astype(np.int32)
        elif name == "position_ids":
            feeds[name] = np.tile(np.arange(5, 12, dtype=np.int32), (2, 1))
        elif name == "attention_mask":
            total = 12 if sidecar["kind"] == "decoder" else 7
            feeds[name] = np.ones((2, total), np.int32)
        else:  # past_key_l / past_value_l: (past, batch, kv_dim) fp32
            kv_dim = sidecar["kv_cache"]["kv_dim"]
            feeds[name] = rng.normal(size=(5, 2, kv_dim)).astype(np.float32)
    return feeds


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_committed_fixture_is_what_the_script_makes(fresh, name):
    committed, made = _committed(name), fresh[name]
    assert committed.is_file(), f"{committed} missing: run python tests/fixtures/make_fixtures.py"
    old = json.loads(sidecar_path(committed).read_text())
    new = json.loads(sidecar_path(made).read_text())
    assert {k: v for k, v in old.items() if k not in VOLATILE} == \
        {k: v for k, v in new.items() if k not in VOLATILE}
    tokenizer = old["tokenizer"]
    assert (committed.parent / tokenizer).read_bytes() == (made.parent / tokenizer).read_bytes()
    _assert_same_reference(json.loads(reference_path(committed).read_text()),
                           json.loads(reference_path(made).read_text()))
    sessions = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
                for p in (committed, made)]
    feeds = _feeds(sessions[0], old, np.random.default_rng(0))
    outputs = [s.run(None, feeds) for s in sessions]
    for a, b, spec in zip(*outputs, sessions[0].get_outputs()):
        np.testing.assert_allclose(a, b, atol=1e-6, err_msg=spec.name)


def _assert_same_reference(old, new):
    """Token ids and greedy tokens exactly; PyTorch's logits to float rounding, which differs
    between CPUs (AVX-512 and AVX2 kernels round the last bits differently)."""
    assert sorted(old) == sorted(new)
    for key in old:
        if key == "logits":
            np.testing.assert_allclose(np.array(old[key]), np.array(new[key]), atol=1e-6,
                                       err_msg="reference logits")
        else:
            assert old[key] == new[key], key
