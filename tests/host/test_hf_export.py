"""Hugging Face folders through export.hf: tiny random models of every supported architecture,
built with transformers here, exported, checked against transformers' forward and generate,
and decoded through our runtime; bad folders give their one-line errors."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

pytest.importorskip("transformers")
import torch  # noqa: E402
from click.testing import CliRunner  # noqa: E402
from hf_tiny import make_folder  # noqa: E402

from common.artifacts import load_onnx_sidecar  # noqa: E402
from common.errors import ToolkitError  # noqa: E402
from export.hf import export_hf, main  # noqa: E402
from export.hf_parity import hf_greedy  # noqa: E402

GREEDY = 110  # >= 100 tokens after an 8-token prompt, inside the 160 positions of the decoders
ENCODERS = ("bert", "bert_bare", "distilbert", "roberta")
DECODERS = ("gpt2", "gpt_neo", "llama")
KV_DIM = {"gpt2": 32, "gpt_neo": 32, "llama": 16}  # llama: 2 KV heads x head_dim 8


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """arch -> (folder, onnx path), each exported once for the module (parity included)."""
    root = tmp_path_factory.mktemp("hf")
    cache = {}

    def get(arch):
        if arch not in cache:
            folder = make_folder(root / "folders", arch)
            out = export_hf(folder, root / "models" / f"{arch}.onnx", max_batch=4,
                            greedy_tokens=GREEDY)
            cache[arch] = (folder, out)
        return cache[arch]

    return get


@pytest.mark.parametrize("arch", ENCODERS)
def test_encoder_export_matches_transformers(exported, arch):
    folder, onnx_path = exported(arch)
    sidecar = load_onnx_sidecar(onnx_path, kind="classifier", check_hash=True)
    parity = sidecar["parity"]
    assert parity["reference"] == "transformers"
    assert parity["max_abs_diff"] < 1e-4 and len(parity["cases"]) == 9
    assert [i["dtype"] for i in sidecar["inputs"]] == ["int32", "int32"]
    assert sidecar["model_config"]["hf_config"]["model_type"] == arch.replace("_bare", "")
    want_labels = {"bert": ["bad", "good"], "roberta": ["LABEL_0", "LABEL_1", "LABEL_2"]}
    assert sidecar["labels"] == want_labels.get(arch, ["negative", "positive"] if
                                                arch == "bert_bare" else ["LABEL_0", "LABEL_1"])
    head = sidecar["model_config"]["head"]
    assert head == ("mean-pooling+linear" if arch == "bert_bare" else "sequence-classification")
    import transformers
    from tokenizers import Tokenizer

    # The reference is transformers' tokenizer of the folder (AutoTokenizer rebuilds this
    # WordPiece tokenizer.json as RoBERTa's BPE for the roberta folder, as a pipeline would).
    copied = Tokenizer.from_file(str(onnx_path.with_name(f"{arch}.tokenizer.json")))
    auto = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    assert copied.get_vocab() == auto.backend_tokenizer.get_vocab()
    assert copied.padding is None and copied.truncation is None  # the runtime pads itself
    assert copied.encode("the dog ran").ids == auto("the dog ran")["input_ids"]
    assert sidecar["special_tokens"]["cls_id"] == 2 and sidecar["special_tokens"]["pad_id"] == 0
    assert sidecar["preflight"]["opset"] == 17 and sidecar["preflight"]["layernorm_nodes"] == 5


def test_encoder_through_runtime_equals_transformers(exported):
    """The runtime's own tokenizing, padding and ONNX Runtime run give transformers' logits."""
    import transformers

    from runtime.classify import open_classifier

    folder, onnx_path = exported("bert")
    texts = ["A wonderful film, the acting was great.", "dull", "the dog ran to the park " * 4]
    session, classifier = open_classifier(str(onnx_path), batch_size=4)
    with session:
        got = classifier.logits_for_rows(classifier.encode(texts))  # (3, 2)
        classifier.close()
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        str(folder), local_files_only=True).eval()
    tok = transformers.PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"),
                                               pad_token="[PAD]")
    batch = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        want = model(input_ids=batch["input_ids"],
                     attention_mask=batch["attention_mask"]).logits.numpy()
    assert np.max(np.abs(got - want)) < 1e-4


@pytest.mark.parametrize("arch", DECODERS)
def test_decoder_export_matches_transformers_generate(exported, arch):
    _, onnx_path = exported(arch)
    sidecar = load_onnx_sidecar(onnx_path, kind="decoder", check_hash=True)
    assert sidecar["kv_cache"] == {"layers": 2, "kv_dim": KV_DIM[arch],
                                   "layout": "position-major", "dtype": "float32"}
    past_key = next(i for i in sidecar["inputs"] if i["name"] == "past_key_1")
    assert past_key["shape"] == ["past", "batch", KV_DIM[arch]]
    parity = sidecar["parity"]
    assert parity["max_abs_diff"] < 1e-4  # tolerance is 5e-3; fp32 tiny models agree closely
    assert {c["past"] for c in parity["cases"]} >= {0, 32, 63}
    assert all(c["top1_match"] for c in parity["cases"])
    greedy = parity["greedy"]
    assert greedy["match"] and greedy["tokens"] == GREEDY and len(greedy["generated"]) == GREEDY
    assert sidecar["special_tokens"]["eos_id"] == 0 and sidecar["max_seq_len"] == 160


@pytest.mark.parametrize("arch", DECODERS)
def test_runtime_greedy_equals_transformers_generate(exported, arch):
    """Our Generator (preallocated cache bound in place, ONNX Runtime) decodes transformers'
    greedy tokens, alone and in a left-padded batch of two prompts of different lengths."""
    import transformers

    from runtime.generate import Generator, open_decoder
    from runtime.sampling import Sampler
    from runtime.session import open_session

    folder, onnx_path = exported(arch)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(folder),
                                                              local_files_only=True).eval()
    prompts = [[5, 17, 42, 99, 7, 250, 3, 11], [64, 8, 130]]
    want = [hf_greedy(model, p, GREEDY)[0] for p in prompts]
    info, tok = open_decoder(str(onnx_path))
    info = dataclasses.replace(info, eos_id=None)  # transformers ran without an end-of-text stop
    with open_session(str(onnx_path)) as session:
        generator = Generator(session, tok, info, max_batch=2)
        alone = generator.generate_ids(prompts[:1], GREEDY, Sampler(0.0))
        batched = generator.generate_ids(prompts, GREEDY, Sampler(0.0))
        generator.close()
    assert alone.tokens[0] == want[0]
    assert batched.tokens == want
    assert len(set(want[0])) > 5  # not a degenerate repetition a broken cache could also give


def test_gpt_neo_local_window_matters(exported):
    """The parity would also pass if local layers were global only when the window never
    bites: check the exported graph masks keys 8+ positions back."""
    from export.parity import ort_session

    _, onnx_path = exported("gpt_neo")
    session = ort_session(onnx_path)
    names = [o.name for o in session.get_outputs()]

    def last_logits(ids):
        n = len(ids)
        feeds = {"input_ids": np.array([ids], np.int32),
                 "position_ids": np.arange(n, dtype=np.int32)[None],
                 "attention_mask": np.ones((1, n), np.int32)}
        feeds.update({f"past_{kv}_{layer}": np.zeros((0, 1, 32), np.float32)
                      for layer in range(2) for kv in ("key", "value")})
        return dict(zip(names, session.run(names, feeds)))["logits"][0, -1]

    ids = list(range(20, 40))
    changed = [9] + ids[1:]  # token 0 is 19 positions back: only the global layer sees it
    assert not np.allclose(last_logits(ids), last_logits(changed))


def _cli_error(args):
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def test_bad_folders_give_one_line_errors(tmp_path):
    out = str(tmp_path / "m.onnx")
    assert "no config.json" in _cli_error(["--model", str(tmp_path), "--output", out])

    unsupported = tmp_path / "t5"
    unsupported.mkdir()
    (unsupported / "config.json").write_text(json.dumps({"model_type": "t5",
                                                         "architectures": ["T5Model"]}))
    assert "unsupported architecture model_type 't5'" in _cli_error(
        ["--model", str(unsupported), "--output", out])

    folder = make_folder(tmp_path, "gpt2")
    config = json.loads((folder / "config.json").read_text())
    remote = tmp_path / "remote"
    remote.mkdir()
    (remote / "config.json").write_text(json.dumps(
        {**config, "auto_map": {"AutoModelForCausalLM": "modeling_x.XForCausalLM"}}))
    assert "needs remote code" in _cli_error(["--model", str(remote), "--output", out])

    assert "a gpt2 model is a decoder, not a classifier" in _cli_error(
        ["--model", str(folder), "--output", out, "--task", "classifier"])

    (folder / "tokenizer.json").rename(tmp_path / "tokenizer.json")
    assert "no tokenizer.json" in _cli_error(["--model", str(folder), "--output", out])
    (folder / "model.safetensors").unlink()
    assert "no weights" in _cli_error(["--model", str(folder), "--output", out])
    assert not (tmp_path / "m.onnx").exists()


def test_tokenizer_larger_than_embedding_is_refused(tmp_path):
    folder = make_folder(tmp_path, "llama", vocab=200)  # tokenizer.json has 300 ids
    with pytest.raises(ToolkitError, match="token ids go up to 299 but the model's embedding "
                                           "has 200 rows"):
        export_hf(folder, tmp_path / "m.onnx")


def test_weights_that_leave_the_head_uninitialised_are_refused(tmp_path):
    """A BertModel folder whose config claims a classification head: transformers would
    initialise the classifier at random and only warn."""
    folder = make_folder(tmp_path, "bert_bare")
    config = json.loads((folder / "config.json").read_text())
    config["architectures"] = ["BertForSequenceClassification"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ToolkitError, match="the weights lack .* tensors the model needs"):
        export_hf(folder, tmp_path / "m.onnx")
