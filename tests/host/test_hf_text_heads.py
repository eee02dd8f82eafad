"""Text handling and heads of Hugging Face models (issue 23), on tiny random checkpoints built
here: prompts encoded as the model's tokenizer does, every eos id (config list,
generation_config.json) stops generation, no IMDB cleaning for HF classifiers, their
tokenizer's truncation side, multi-label (sigmoid) and regression heads, sentence pairs
(token_type_ids) and ELECTRA, each against transformers itself; ``--file -`` reads stdin."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("transformers")
import torch  # noqa: E402
from click.testing import CliRunner  # noqa: E402
from hf_tiny import make_head_folder, make_llama_bos_folder  # noqa: E402

from common.artifacts import OWN_TEXT, load_onnx_sidecar, text_rules  # noqa: E402
from export.hf import export_hf  # noqa: E402

PROMPT = "once upon a time the dog"
NEW = 40


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("hf_text")


@pytest.fixture(scope="module")
def exported(root):
    """name -> (folder, onnx path): each folder made and exported once for the module."""
    cache = {}

    def get(name, make, **export_options):
        if name not in cache:
            folder = make()
            cache[name] = (folder, export_hf(folder, root / "models" / f"{name}.onnx",
                                             max_batch=4, **export_options))
        return cache[name]

    return get


def hf_tokenizer(folder, **options):
    """The reference: transformers' own tokenizer of the folder, as a pipeline loads it."""
    import transformers

    return transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True,
                                                      **options)


def hf_logits(folder, **encoded) -> np.ndarray:
    import transformers

    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        str(folder), local_files_only=True).eval()
    with torch.no_grad():
        return model(**encoded).logits.numpy()


def classify_json(onnx_path, *args, stdin=None):
    from runtime.classify import main

    result = CliRunner().invoke(main, ["--model", str(onnx_path), "--json", "--batch-size", "4",
                                       *args], input=stdin)
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


# --- decoders: prompts and end of text ----------------------------------------------------
def greedy_reference(folder, ids, new_tokens, eos=None):
    """transformers' greedy tokens after ``ids`` (eos: stop ids; None switches them off)."""
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(folder), local_files_only=True).eval()
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=new_tokens, do_sample=False,
                             eos_token_id=eos, pad_token_id=0,
                             attention_mask=torch.ones(1, len(ids), dtype=torch.long))
    return out[0, len(ids):].tolist()


def first_new_token(tokens, start=3):
    """(index, id) of the first token at or after ``start`` not seen before it."""
    for i in range(start, len(tokens)):
        if tokens[i] not in tokens[:i] and tokens[i] not in (0, 1, 2):
            return i, tokens[i]
    raise AssertionError(f"no fresh token in {tokens}")


def test_prompt_is_encoded_as_the_tokenizer_does(exported, root):
    """A Llama tokenizer adds <s>: the CLI's text is transformers' generate(tokenizer(prompt)),
    with one <s> and no </s> (the old runtime fed </s> <s> ...)."""
    from runtime.generate import main, open_decoder

    folder, onnx_path = exported("llama_bos", lambda: make_llama_bos_folder(root, "llama_bos"),
                                 check_parity=False)
    sidecar = load_onnx_sidecar(onnx_path)
    assert sidecar["prompt"] == {"prefix_ids": [], "add_special_tokens": True}
    ids = hf_tokenizer(folder)(PROMPT)["input_ids"]
    assert ids[0] == 1 and ids.count(1) == 1 and 2 not in ids
    info, tok = open_decoder(str(onnx_path))
    assert info.encode_prompt(tok, PROMPT) == ids
    want = greedy_reference(folder, ids, NEW, eos=[2])
    result = CliRunner().invoke(main, ["--model", str(onnx_path), "--prompt", PROMPT,
                                       "--max-new-tokens", str(NEW)])
    assert result.exit_code == 0, result.output
    assert result.stdout == PROMPT + tok.decode(want) + "\n"


def test_llama3_eos_list_stops_on_its_second_id(root):
    """config.json eos_token_id [2, t]: generation stops at t, where transformers stops."""
    from runtime.generate import Generator, open_decoder
    from runtime.sampling import Sampler
    from runtime.session import open_session

    probe = make_llama_bos_folder(root, "llama_probe")
    ids = hf_tokenizer(probe)(PROMPT)["input_ids"]
    stop_at, token = first_new_token(greedy_reference(probe, ids, NEW))
    folder = make_llama_bos_folder(root, "llama3", eos_token_id=[2, token])
    onnx_path = export_hf(folder, root / "models" / "llama3.onnx", max_batch=1,
                          check_parity=False)
    assert load_onnx_sidecar(onnx_path)["eos_ids"] == [2, token]
    info, tok = open_decoder(str(onnx_path))
    with open_session(str(onnx_path)) as session:
        generator = Generator(session, tok, info, max_batch=1)
        result = generator.generate([PROMPT], NEW, Sampler(0.0))
        generator.close()
    want = greedy_reference(folder, ids, NEW, eos=[2, token])
    assert result.stop_reasons == ["eos"] and len(result.tokens[0]) == stop_at
    assert want == result.tokens[0] + [token]  # transformers returns the eos token, we do not


def test_generation_config_eos_is_honoured(root):
    """config.json says 2 only; generation_config.json adds t: generation stops at t."""
    from runtime.generate import Generator, open_decoder
    from runtime.sampling import Sampler
    from runtime.session import open_session

    probe = make_llama_bos_folder(root, "llama_probe2", seed=1)
    ids = hf_tokenizer(probe)(PROMPT)["input_ids"]
    stop_at, token = first_new_token(greedy_reference(probe, ids, NEW))
    folder = make_llama_bos_folder(root, "llama_gen", eos_token_id=2,
                                   generation_eos=[2, token], seed=1)
    onnx_path = export_hf(folder, root / "models" / "llama_gen.onnx", max_batch=1,
                          check_parity=False)
    assert load_onnx_sidecar(onnx_path)["eos_ids"] == [2, token]
    info, tok = open_decoder(str(onnx_path))
    with open_session(str(onnx_path)) as session:
        generator = Generator(session, tok, info, max_batch=1)
        result = generator.generate([PROMPT], NEW, Sampler(0.0))
        generator.close()
    assert result.stop_reasons == ["eos"] and len(result.tokens[0]) == stop_at


# --- classifiers: text, heads, pairs, ELECTRA ------------------------------------------------
def multi_label(exported, root):
    return exported("multi", lambda: make_head_folder(
        root, "multi", problem_type="multi_label_classification", truncation_side="left"),
        sentence_pairs=True)


def test_hf_classifier_text_is_not_imdb_cleaned(exported, root, tiny_classifier_onnx):
    """'my new Samsung phone' reaches an HF classifier as its tokenizer reads it; our own IMDB
    models (and sidecars written before the text key) keep the cleaning."""
    from common.text import clean_imdb_text
    from runtime.classify import open_classifier

    folder, onnx_path = multi_label(exported, root)
    text = "my new Samsung phone"
    assert clean_imdb_text(text) == "my new someone phone"
    session, classifier = open_classifier(str(onnx_path), batch_size=2)
    with session:
        rows = classifier.encode([text])
        classifier.close()
    assert rows == [hf_tokenizer(folder)(text)["input_ids"]]
    assert load_onnx_sidecar(tiny_classifier_onnx)["text"] == OWN_TEXT
    assert text_rules({}) == OWN_TEXT  # an old sidecar: one of our IMDB models
    session, own = open_classifier(str(tiny_classifier_onnx), batch_size=2)
    with session:
        cleaned, raw = own.encode([text])[0], own.tokenizer.encode(text).ids
        own.close()
    assert cleaned == own.tokenizer.encode("my new someone phone").ids != raw


def test_tokenizer_truncation_side_is_kept(exported, root):
    """tokenizer_config.json truncation_side "left": a long text keeps its end, and [CLS]/[SEP],
    exactly as transformers' tokenizer(text, truncation=True, max_length=...) gives."""
    from runtime.classify import open_classifier

    folder, onnx_path = multi_label(exported, root)
    long_text = " ".join(["the dog ran to the park"] * 20) + " and found a red ball"
    session, classifier = open_classifier(str(onnx_path), batch_size=2)
    with session:
        rows = classifier.encode([long_text])
        classifier.close()
    want = hf_tokenizer(folder, truncation_side="left")(long_text, truncation=True,
                                                         max_length=64)["input_ids"]
    assert rows == [want] and len(want) == 64


def test_multi_label_head_is_sigmoid(exported, root):
    folder, onnx_path = multi_label(exported, root)
    sidecar = load_onnx_sidecar(onnx_path)
    assert sidecar["head"] == {"problem_type": "multi_label_classification", "threshold": 0.5}
    texts = ["a wonderful film", "the dog ran to the park and found a red ball"]
    got = classify_json(onnx_path, *texts)
    encoded = hf_tokenizer(folder, pad_token="[PAD]")(texts, padding=True, return_tensors="pt")
    want = torch.sigmoid(torch.from_numpy(hf_logits(folder, **encoded))).numpy()
    labels = sidecar["labels"]
    for row, probs in zip(got, want):
        assert [row["probabilities"][lab] for lab in labels] == pytest.approx(probs, abs=1e-5)
        assert row["labels"] == [lab for lab, p in zip(labels, probs) if p > 0.5]
    assert abs(sum(got[0]["probabilities"].values()) - 1.0) > 1e-3  # not a softmax


def test_sentence_pairs_match_transformers(exported, root):
    """--pairs (arguments two by two, --file lines FIRST<TAB>SECOND): tokenizer(a, b) with its
    [SEP] and token type ids, through the exported token_type_ids input."""
    folder, onnx_path = multi_label(exported, root)
    sidecar = load_onnx_sidecar(onnx_path)
    assert [i["name"] for i in sidecar["inputs"]] == ["input_ids", "attention_mask",
                                                      "token_type_ids"]
    assert sidecar["parity"]["max_abs_diff"] < 1e-4
    firsts = ["the cat sat in the sun", "a dull movie"]
    seconds = ["a little cat liked the sun", "the plot made no sense and the ending was awful"]
    got = classify_json(onnx_path, "--pairs", firsts[0], seconds[0],
                        "--file", "-", stdin=f"{firsts[1]}\t{seconds[1]}\n")
    encoded = hf_tokenizer(folder, pad_token="[PAD]")(firsts, seconds, padding=True,
                                                      return_tensors="pt")
    assert int(encoded["token_type_ids"].sum()) > 0
    logits = hf_logits(folder, **encoded)
    untyped = hf_logits(folder, **{**encoded, "token_type_ids": 0 * encoded["token_type_ids"]})
    assert np.abs(logits - untyped).max() > 1e-3  # the type ids matter
    want = torch.sigmoid(torch.from_numpy(logits)).numpy()
    single = torch.sigmoid(torch.from_numpy(hf_logits(
        folder, **hf_tokenizer(folder)(firsts[:1], return_tensors="pt")))).numpy()
    assert np.abs(want[0] - single[0]).max() > 1e-3  # the second text matters
    for row, probs, second in zip(got, want, seconds):
        assert row["text_pair"] == second
        assert [row["probabilities"][lab] for lab in sidecar["labels"]] == \
            pytest.approx(probs, abs=1e-5)


def test_sentence_pairs_are_opt_in(exported, root):
    """A BERT classifier with a two-row type table (MiniLM) keeps the two-input graph that
    calibration, the benchmarks and the Triton ensemble feed, unless --sentence-pairs asks."""
    from common.artifacts import load_onnx_sidecar as load

    _, onnx_path = exported("single", lambda: make_head_folder(root, "single"))
    assert [i["name"] for i in load(onnx_path)["inputs"]] == ["input_ids", "attention_mask"]


def test_pairs_are_refused_by_our_own_models(tiny_classifier_onnx):
    from runtime.classify import main

    result = CliRunner().invoke(main, ["--model", str(tiny_classifier_onnx), "--pairs", "a b",
                                       "c d"])
    assert result.exit_code != 0 and "single texts, not sentence pairs" in result.output
    result = CliRunner().invoke(main, ["--model", str(tiny_classifier_onnx), "--pairs", "odd"])
    assert result.exit_code != 0 and "even number" in result.output


def test_regression_head_prints_the_raw_score(exported, root):
    from runtime.classify import main

    folder, onnx_path = exported("regression", lambda: make_head_folder(
        root, "regression", num_labels=1, seed=2))
    assert load_onnx_sidecar(onnx_path)["head"]["problem_type"] == "regression"
    texts = ["a wonderful film", "a dull and boring movie"]
    want = hf_logits(folder, **hf_tokenizer(folder, pad_token="[PAD]")(
        texts, padding=True, return_tensors="pt"))[:, 0]
    got = [row["score"] for row in classify_json(onnx_path, *texts)]
    assert got == pytest.approx(want, abs=1e-5) and abs(got[0] - got[1]) > 1e-4
    result = CliRunner().invoke(main, ["--model", str(onnx_path), "--batch-size", "4", *texts])
    assert result.exit_code == 0, result.output
    assert [float(line.split("\t")[0]) for line in result.stdout.splitlines()] == \
        pytest.approx(want, abs=1e-5)


def test_electra_classifier_matches_transformers(exported, root):
    """ElectraForSequenceClassification: embeddings 16 projected to 32, dense -> gelu ->
    out_proj on the first token; parity at export and through the runtime."""
    folder, onnx_path = exported("electra", lambda: make_head_folder(
        root, "electra", arch="electra", seed=3))
    sidecar = load_onnx_sidecar(onnx_path, check_hash=True)
    assert sidecar["model_config"]["model_type"] == "electra"
    assert sidecar["parity"]["max_abs_diff"] < 1e-4
    assert sidecar["head"]["problem_type"] == "single_label_classification"
    texts = ["a wonderful film", "the dog ran to the park and found a red ball"]
    got = classify_json(onnx_path, *texts)
    logits = hf_logits(folder, **hf_tokenizer(folder, pad_token="[PAD]")(
        texts, padding=True, return_tensors="pt"))
    want = torch.softmax(torch.from_numpy(logits), dim=-1).numpy()
    assert np.abs(logits[0] - logits[1]).max() > 1e-3
    for row, probs in zip(got, want):
        assert [row["probabilities"][lab] for lab in sidecar["labels"]] == \
            pytest.approx(probs, abs=1e-5)


def test_file_dash_reads_stdin(tiny_classifier_onnx):
    """cat reviews.txt | python runtime/classify.py --model m.onnx --file -"""
    rows = classify_json(tiny_classifier_onnx, "--file", "-",
                         stdin="a great film\n\n  a dull film  \n")
    assert [r["text"] for r in rows] == ["a great film", "a dull film"]
    from runtime.classify import main

    bad = CliRunner().invoke(main, ["--model", str(tiny_classifier_onnx), "--file", "-"],
                             input=b"caf\xe9\n")
    assert bad.exit_code != 0 and "<stdin>: byte 3" in bad.output


# --- review of issue 23: the tokenizer is AutoTokenizer's, heads and pairs refused where wrong --
@pytest.mark.parametrize("config", [
    {"add_bos_token": False}, {"add_eos_token": True},
    {"additional_special_tokens": ["<|user|>"]},  # AutoTokenizer adds it as id 300
])
def test_prompt_ids_are_auto_tokenizers(root, config):
    """The exported tokenizer is the one AutoTokenizer.from_pretrained(folder) builds: prompt
    ids equal transformers' whatever tokenizer_config.json changes (transformers 5.24 keeps
    tokenizer.json's post-processor over add_bos_token/add_eos_token; a version that rewrites
    it is followed too)."""
    from runtime.generate import open_decoder

    name = "llama_cfg_" + "_".join(config)
    folder = make_llama_bos_folder(root, name, model_vocab=304)
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", **config}))
    onnx_path = export_hf(folder, root / "models" / f"{name}.onnx", max_batch=1,
                          check_parity=False)
    info, tok = open_decoder(str(onnx_path))
    prompt = "<|user|> " + PROMPT
    want = hf_tokenizer(folder)(prompt)["input_ids"]
    assert info.encode_prompt(tok, prompt) == want
    if "additional_special_tokens" in config:
        assert 300 in want


def test_truncation_side_from_tokenizer_json(root):
    """tokenizer.json's truncation.direction is the default side; tokenizer_config.json's
    truncation_side wins over it (transformers' precedence)."""
    from tokenizers import Tokenizer

    for name, config, want in (("trunc_json", None, "left"), ("trunc_both", "right", "right")):
        folder = make_head_folder(root, name, truncation_side=config)
        tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        tok.enable_truncation(32, direction="left")
        tok.save(str(folder / "tokenizer.json"))
        assert hf_tokenizer(folder).truncation_side == want
        sidecar = load_onnx_sidecar(export_hf(folder, root / "models" / f"{name}.onnx",
                                              max_batch=2, check_parity=False))
        assert sidecar["text"]["truncation"] == want


def test_regression_head_with_two_outputs_is_refused(root):
    from common.errors import ToolkitError

    folder = make_head_folder(root, "regression2", num_labels=2, problem_type="regression")
    with pytest.raises(ToolkitError, match="regression head with num_labels 2 is not supported"):
        export_hf(folder, root / "models" / "regression2.onnx", max_batch=2)
    assert not (root / "models" / "regression2.onnx").exists()


def test_pairs_on_a_graph_without_token_types_are_refused(exported, root):
    """BERT's second text has type ids 1; a graph exported without --sentence-pairs would read
    them as 0 and give another score than transformers."""
    from runtime.classify import main

    _, onnx_path = exported("single", lambda: make_head_folder(root, "single"))
    result = CliRunner().invoke(main, ["--model", str(onnx_path), "--batch-size", "4",
                                       "--pairs", "a dull movie", "the plot made no sense"])
    assert result.exit_code != 0 and "--sentence-pairs" in result.output, result.output
    assert "no token_type_ids input" in result.output and "Traceback" not in result.output
    assert len(classify_json(onnx_path, "a dull movie")) == 1  # single texts still work
    # RoBERTa's pair template gives type ids 0 throughout: nothing is lost, pairs are read
    from hf_tiny import make_folder

    roberta = export_hf(make_folder(root, "roberta"), root / "models" / "roberta.onnx",
                        max_batch=4, check_parity=False)
    rows = classify_json(roberta, "--pairs", "a dull movie", "the plot made no sense")
    assert rows[0]["text_pair"] == "the plot made no sense"


def test_gate_and_calibration_refuse_pairs_and_regression(exported, root, tmp_path):
    """Calibration data and the gate's split are single IMDB texts with class labels: a pair
    model and a regression head are refused in one line before any data is read."""
    from calibration import gate
    from calibration.dataset import build_calibration_set
    from common.errors import ToolkitError

    _, pairs = multi_label(exported, root)
    with pytest.raises(ToolkitError, match="pair models need pair data"):
        gate.load_eval_data(pairs, load_onnx_sidecar(pairs), "no_such_data", None, 4)
    with pytest.raises(ToolkitError, match="pair models need pair data"):
        build_calibration_set(pairs, "no_such_data", tmp_path / "calib.npz")
    _, regression = exported("regression", lambda: make_head_folder(
        root, "regression", num_labels=1, seed=2))
    with pytest.raises(ToolkitError, match="regression head"):
        gate.load_eval_data(regression, load_onnx_sidecar(regression), "no_such_data", None, 4)
