"""Export to ONNX: graph structure, sidecar, parity with PyTorch, pre-flight, CLI errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from common.artifacts import axis_range, load_onnx_sidecar, sidecar_path
from common.errors import ToolkitError
from common.fileio import sha256_file

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

TINY_LAYERNORMS = 5  # 2 blocks x 2 + the final one


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: a second thread only contends on 2 shared cores
    yield
    torch.set_num_threads(threads)


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _graph_facts(path):
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    ops = [n.op_type for n in model.graph.node]
    dtypes = {i.name: i.type.tensor_type.elem_type for i in model.graph.input}
    return opset, ops, dtypes


# --- classifier -------------------------------------------------------------------------------

def test_classifier_graph_and_sidecar(tiny_classifier_onnx, tiny_classifier_checkpoint):
    opset, ops, dtypes = _graph_facts(tiny_classifier_onnx)
    assert opset == 17
    assert ops.count("LayerNormalization") == TINY_LAYERNORMS
    assert "ReduceMean" not in ops and "Pow" not in ops  # LayerNorm not decomposed
    assert dtypes == {"input_ids": onnx.TensorProto.INT32, "attention_mask": onnx.TensorProto.INT32}

    sc = load_onnx_sidecar(tiny_classifier_onnx, kind="classifier", check_hash=True)
    assert sc["opset"] == 17 and sc["kind"] == "classifier"
    assert [t["name"] for t in sc["inputs"]] == ["input_ids", "attention_mask"]
    assert sc["outputs"] == [{"name": "logits", "dtype": "float32", "shape": ["batch", 2]}]
    assert axis_range(sc, "batch") == (1, 8) and axis_range(sc, "seq") == (1, 64)
    assert sc["labels"] == ["negative", "positive"]
    assert sc["special_tokens"] == {"pad_id": 0, "eos_id": 1, "cls_id": 2}
    assert sc["checkpoint_sha256"] == sha256_file(tiny_classifier_checkpoint)
    tokenizer = tiny_classifier_onnx.parent / "tiny_classifier.tokenizer.json"
    assert sc["tokenizer"] == tokenizer.name
    assert sc["tokenizer_sha256"] == sha256_file(tokenizer)
    assert sc["simplifier"] == "onnxsim" and sc["preflight"]["fp16_hazards"] == []


@pytest.mark.parametrize("batch,seq", [(1, 1), (3, 17), (8, 64)])
def test_classifier_axes_are_dynamic(tiny_classifier_onnx, tiny_classifier_checkpoint, batch, seq):
    from train.checkpoint import load_checkpoint

    model = load_checkpoint(tiny_classifier_checkpoint).model
    rng = np.random.default_rng(batch)
    ids = rng.integers(0, 300, (batch, seq), dtype=np.int32)  # (batch, seq)
    mask = np.ones((batch, seq), dtype=np.int32)
    mask[0, seq // 2 + 1:] = 0
    (logits,) = _session(tiny_classifier_onnx).run(None, {"input_ids": ids, "attention_mask": mask})
    with torch.no_grad():
        expected = model(torch.from_numpy(ids).long(), torch.from_numpy(mask)).numpy()
    assert logits.shape == (batch, 2)
    np.testing.assert_allclose(logits, expected, atol=1e-5)


def test_classifier_export_with_parity_on_texts(tmp_path, tiny_classifier_checkpoint):
    from export.onnx_model import export_checkpoint

    texts = ["the film was very good", "awful story", "a happy little girl sat on the mat"]
    out = export_checkpoint(tiny_classifier_checkpoint, tmp_path / "imdb.onnx", max_batch=4,
                            parity_texts=texts)
    parity = load_onnx_sidecar(out)["parity"]
    assert parity["tolerance"] == 1e-4 and parity["max_abs_diff"] < 1e-4
    shapes = {(c["batch"], c["seq"]) for c in parity["cases"] if c["source"] == "random"}
    assert shapes == {(b, s) for b in (1, 3, 4) for s in (1, 17, 64)}  # batch capped at 4
    assert any(c["source"] == "text" and c["batch"] == 3 for c in parity["cases"])


def test_classifier_with_ngram_convolution_exports_with_parity(tmp_path):
    import torch

    from export.onnx_model import export_checkpoint
    from train.checkpoint import TOKENIZER_FILE, save_checkpoint
    from train.model import ClassifierConfig, build_model
    from train.tokenizer import save_tokenizer, train_bpe

    tok = train_bpe(["the film was very good", "awful story, not good at all"] * 20, 300)
    save_tokenizer(tok, tmp_path / TOKENIZER_FILE)
    cfg = ClassifierConfig(vocab_size=tok.get_vocab_size(), max_seq_len=64, d_model=32,
                           n_layers=1, n_heads=4, d_ff=64, pooling="meanmax", ngram_width=3)
    torch.manual_seed(0)
    model = build_model(cfg)
    torch.nn.init.normal_(model.ngram.weight, std=0.1)  # a trained one is not zero
    checkpoint = save_checkpoint(tmp_path / "best.pt", cfg, model)
    out = export_checkpoint(checkpoint, tmp_path / "imdb.onnx", max_batch=4,
                            parity_texts=["the film was very good", "not good"])
    parity = load_onnx_sidecar(out)["parity"]
    assert parity["max_abs_diff"] < 1e-4 and len(parity["cases"]) > 5


def test_parity_catches_a_different_model(tiny_classifier_onnx, tiny_classifier_checkpoint):
    from export.parity import check_classifier_parity
    from train.checkpoint import load_checkpoint

    model = load_checkpoint(tiny_classifier_checkpoint).model
    with torch.no_grad():
        model.head.bias += 1e-3  # a drift the tolerance (1e-4) must catch
    with pytest.raises(ToolkitError, match="classifier logits differ from PyTorch"):
        check_classifier_parity(model, tiny_classifier_onnx, batches=(2,), seqs=(5,))


def test_onnxslim_fallback_is_recorded(tmp_path, tiny_classifier_checkpoint, monkeypatch):
    import export.simplify
    from export.onnx_model import export_checkpoint

    def broken_onnxsim(model):
        raise RuntimeError("simulated onnxsim failure")

    monkeypatch.setattr(export.simplify, "_with_onnxsim", broken_onnxsim)
    out = export_checkpoint(tiny_classifier_checkpoint, tmp_path / "m.onnx", max_batch=2)
    sc = load_onnx_sidecar(out)
    assert sc["simplifier"] == "onnxslim"
    assert "simulated onnxsim failure" in sc["simplifier_note"]
    assert sc["parity"]["max_abs_diff"] < 1e-4  # the onnxslim graph passed parity too


# --- decoder ----------------------------------------------------------------------------------

def test_decoder_graph_and_sidecar(tiny_decoder_onnx):
    opset, ops, dtypes = _graph_facts(tiny_decoder_onnx)
    assert opset == 17 and ops.count("LayerNormalization") == TINY_LAYERNORMS
    assert onnx.TensorProto.INT64 not in dtypes.values()
    sc = load_onnx_sidecar(tiny_decoder_onnx, kind="decoder", check_hash=True)
    assert [t["name"] for t in sc["inputs"]] == [
        "input_ids", "position_ids", "attention_mask",
        "past_key_0", "past_value_0", "past_key_1", "past_value_1"]
    assert [t["name"] for t in sc["outputs"]] == [
        "logits", "topk_values", "topk_indices",
        "new_key_0", "new_value_0", "new_key_1", "new_value_1",
        "present_key_0", "present_value_0", "present_key_1", "present_value_1"]
    outputs = {t["name"]: t for t in sc["outputs"]}
    assert outputs["topk_indices"] == {"name": "topk_indices", "dtype": "int32",
                                       "shape": ["batch", 16]}
    assert outputs["new_key_1"]["shape"] == ["new", "batch", 32]
    assert outputs["present_key_1"]["shape"] == ["total", "batch", 32]
    assert sc["kv_cache"] == {"layers": 2, "kv_dim": 32, "layout": "position-major",
                              "dtype": "float32"}
    assert sc["topk"] == 16
    assert [axis_range(sc, a) for a in ("batch", "new", "past", "total")] == \
        [(1, 8), (1, 64), (0, 63), (1, 64)]


def test_decoder_prefill_with_empty_past_and_decode_step(tiny_decoder_onnx):
    from export.parity import decoder_feeds

    session = _session(tiny_decoder_onnx)
    ids = np.array([[5, 6, 7], [8, 9, 10]], dtype=np.int32)  # (batch 2, new 3)
    empty = [np.zeros((0, 2, 32), np.float32)] * 4  # past = 0
    out = session.run(None, decoder_feeds(ids, 0, np.ones((2, 3), np.int32), empty))
    assert out[0].shape == (2, 3, 300) and out[2].dtype == np.int32 and out[3].shape == (3, 2, 32)
    np.testing.assert_array_equal(out[2][:, 0], out[0][:, -1].argmax(-1))
    step = session.run(None, decoder_feeds(out[2][:, :1], 3, np.ones((2, 4), np.int32),
                                           out[3:7]))
    assert step[0].shape == (2, 1, 300) and step[3].shape == (1, 2, 32)
    # present_* is past + new: the prompt's keys, then this step's
    np.testing.assert_array_equal(step[7], np.concatenate([out[3], step[3]]))
    np.testing.assert_array_equal(out[7], out[3])


def test_a_decoder_without_window_outputs_generates_the_same_tokens(tmp_path,
                                                                    tiny_decoder_onnx):
    """The interface an engine has (engines.build_steps drops present_*): the generator binds
    only past_*/new_* and gives the tokens it gives with the windows bound over the cache."""
    from common.artifacts import write_onnx_sidecar
    from engines.build_steps import engine_outputs
    from runtime.generate import Generator, open_decoder
    from runtime.sampling import Sampler
    from runtime.session import open_session

    model = onnx.load(str(tiny_decoder_onnx))
    kept = [o for o in model.graph.output if not o.name.startswith("present_")]
    del model.graph.output[:]
    model.graph.output.extend(kept)
    path = tmp_path / "no_windows.onnx"
    onnx.save(model, str(path))
    sidecar = load_onnx_sidecar(tiny_decoder_onnx)
    sidecar.update(outputs=engine_outputs(sidecar["outputs"]), onnx_sha256=sha256_file(path))
    tokenizer = tiny_decoder_onnx.parent / sidecar["tokenizer"]
    (tmp_path / sidecar["tokenizer"]).write_bytes(tokenizer.read_bytes())
    write_onnx_sidecar(path, sidecar)
    tokens = {}
    for model_path in (tiny_decoder_onnx, path):
        info, tok = open_decoder(model_path)
        with open_session(model_path) as session:
            generator = Generator(session, tok, info, max_batch=2)
            assert generator.kv.windows == (model_path == tiny_decoder_onnx)
            prompts = [generator.encode(["the cat sat on"])[0], [1, 7, 9]]
            tokens[model_path] = generator.generate_ids(prompts, 30, Sampler()).tokens
    assert tokens[path] == tokens[tiny_decoder_onnx] and len(tokens[path][0]) == 30


def test_decoder_export_parity_and_greedy(tmp_path, tiny_decoder_checkpoint):
    from export.onnx_model import export_checkpoint

    out = export_checkpoint(tiny_decoder_checkpoint, tmp_path / "stories.onnx", max_batch=3,
                            topk=8, parity_texts=["the little girl played in the sun"])
    parity = load_onnx_sidecar(out)["parity"]
    assert parity["max_abs_diff"] < 1e-3
    assert {(c["past"], c["new"]) for c in parity["cases"] if c["batch"] == 3} >= {
        (0, 17), (8, 9), (16, 1), (0, 64), (63, 1)}
    greedy = parity["greedy"]
    assert greedy["match"] and greedy["tokens"] == 64 - greedy["prompt_tokens"]
    assert len(greedy["generated"]) == greedy["tokens"]


def test_greedy_parity_catches_a_different_model(tiny_decoder_onnx, tiny_decoder_checkpoint):
    from export.parity import check_decoder_parity
    from train.checkpoint import load_checkpoint

    model = load_checkpoint(tiny_decoder_checkpoint).model
    with torch.no_grad():
        weight = model.blocks[0].mlp.fc_out.weight  # (d_model, d_ff)
        weight += 0.1 * torch.randn(weight.shape, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ToolkitError, match="differ from PyTorch|greedy token"):
        check_decoder_parity(model, tiny_decoder_onnx, batches=(1,), seqs=(4,),
                             greedy_tokens=5)


# --- pre-flight -------------------------------------------------------------------------------

def _hazardous_graph(path):
    """Hand-made decomposed LayerNorm (ReduceMean/Sub/Pow/Sqrt) times a 1e9 constant."""
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(np.array(2.0, np.float32), "two"),
             numpy_helper.from_array(np.array(1e-5, np.float32), "eps"),
             numpy_helper.from_array(np.array([1e9], np.float32), "huge")]
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["mean"], name="ln_mean", axes=[-1]),
        helper.make_node("Sub", ["x", "mean"], ["centred"], name="ln_sub"),
        helper.make_node("Pow", ["centred", "two"], ["sq"], name="ln_pow"),
        helper.make_node("ReduceMean", ["sq"], ["var"], name="ln_var", axes=[-1]),
        helper.make_node("Add", ["var", "eps"], ["var_eps"]),
        helper.make_node("Sqrt", ["var_eps"], ["std"]),
        helper.make_node("Div", ["centred", "std"], ["normed"]),
        helper.make_node("Mul", ["normed", "huge"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "hazards", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_preflight_flags_fp16_hazards_and_dla_fallback(tmp_path):
    from export.preflight import preflight_report

    report = preflight_report(_hazardous_graph(tmp_path / "bad.onnx"))
    hazards = {(h["kind"], h["node"]) for h in report["fp16_hazards"]}
    assert hazards == {("decomposed_layernorm", "ln_mean"), ("pow", "ln_pow"),
                       ("large_constant", "huge")}
    assert report["dla_fallback_ops"] == {"ReduceMean": 2, "Sqrt": 1}
    assert report["dynamic_axes"] == ["batch"] and report["opset"] == 17


def test_preflight_of_exported_graph_is_clean(tiny_decoder_onnx):
    from export.preflight import format_preflight, preflight_report

    report = preflight_report(tiny_decoder_onnx)
    assert report["fp16_hazards"] == [] and report["layernorm_nodes"] == TINY_LAYERNORMS
    assert report["dynamic_axes"] == ["batch", "new", "past", "total"]
    assert "TopK" in report["dla_fallback_ops"] and "MatMul" not in report["dla_fallback_ops"]
    assert "FP16 hazards: none" in format_preflight(report)


def test_preflight_cli(tmp_path, tiny_classifier_onnx):
    from export.preflight import main

    ok = CliRunner().invoke(main, [str(tiny_classifier_onnx), "--json"])
    assert ok.exit_code == 0 and json.loads(ok.output)["layernorm_nodes"] == TINY_LAYERNORMS
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00not an onnx file at all")
    bad = CliRunner().invoke(main, [str(junk)])
    assert bad.exit_code == 2 and "not a readable ONNX model" in bad.output
    missing = CliRunner().invoke(main, [str(tmp_path / "none.onnx")])
    assert missing.exit_code == 2 and "ONNX file not found" in missing.output


# --- export CLI and errors --------------------------------------------------------------------

def test_export_cli_writes_and_reports(tmp_path, tiny_classifier_checkpoint):
    from export.onnx_model import main

    out = tmp_path / "models" / "imdb.onnx"
    result = CliRunner().invoke(main, ["--checkpoint", str(tiny_classifier_checkpoint),
                                       "--output", str(out), "--kind", "classifier",
                                       "--no-parity", "--no-simplify", "--max-batch", "2"])
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.output and "parity: skipped" in result.output
    assert "simplifier: none" in result.output and "FP16 hazards: none" in result.output
    assert sidecar_path(out).is_file() and (out.parent / "imdb.tokenizer.json").is_file()
    assert sorted(p.name for p in out.parent.iterdir()) == [
        "imdb.onnx", "imdb.onnx.json", "imdb.tokenizer.json"]  # no temp files left


@pytest.mark.parametrize("args,message", [
    (["--checkpoint", "{tmp}/missing.pt"], "checkpoint not found"),
    (["--checkpoint", "{decoder}", "--kind", "classifier"],
     "holds a decoder model; expected a classifier"),
    (["--checkpoint", "{decoder}", "--output", "{tmp}/m.txt"], "expected a path ending in .onnx"),
    (["--checkpoint", "{decoder}", "--topk", "0"], "topk=0: expected 1..vocab_size (300)"),
])
def test_export_cli_errors(tmp_path, tiny_decoder_checkpoint, args, message):
    from export.onnx_model import main

    args = [a.format(tmp=tmp_path, decoder=tiny_decoder_checkpoint) for a in args]
    if "--output" not in args:
        args += ["--output", str(tmp_path / "m.onnx")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and message in result.output
    assert not (tmp_path / "m.onnx").exists()


# --- sidecar validation -----------------------------------------------------------------------

def test_sidecar_validation_errors(tmp_path, tiny_classifier_onnx):
    onnx_copy = tmp_path / "m.onnx"
    onnx_copy.write_bytes(tiny_classifier_onnx.read_bytes())
    with pytest.raises(ToolkitError, match="ONNX sidecar not found"):
        load_onnx_sidecar(onnx_copy)
    good = json.loads(sidecar_path(tiny_classifier_onnx).read_text())
    cases = [({"version": 99}, "version 99"), ({"kind": "vision"}, "kind 'vision'"),
             ({"labels": None}, None)]
    for change, message in cases[:2]:
        sidecar_path(onnx_copy).write_text(json.dumps({**good, **change}))
        with pytest.raises(ToolkitError, match=message):
            load_onnx_sidecar(onnx_copy)
    del good["onnx_sha256"]
    sidecar_path(onnx_copy).write_text(json.dumps(good))
    with pytest.raises(ToolkitError, match=r"missing keys \['onnx_sha256'\]"):
        load_onnx_sidecar(onnx_copy)
    with pytest.raises(ToolkitError, match="expected a decoder"):
        load_onnx_sidecar(tiny_classifier_onnx, kind="decoder")
    with pytest.raises(ToolkitError, match="no dynamic axis 'past'"):
        axis_range(load_onnx_sidecar(tiny_classifier_onnx), "past")


def test_sidecar_hash_catches_a_replaced_graph(tmp_path, tiny_classifier_onnx, tiny_decoder_onnx):
    onnx_copy = tmp_path / "m.onnx"
    onnx_copy.write_bytes(tiny_decoder_onnx.read_bytes())  # another graph under this name
    sidecar_path(onnx_copy).write_text(sidecar_path(tiny_classifier_onnx).read_text())
    assert load_onnx_sidecar(onnx_copy)["kind"] == "classifier"  # no hash check: accepted
    with pytest.raises(ToolkitError, match="onnx_sha256 differs"):
        load_onnx_sidecar(onnx_copy, check_hash=True)
