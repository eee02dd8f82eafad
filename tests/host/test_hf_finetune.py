"""train.hf_finetune on a tiny random BERT folder: our checkpoints, exact resume, validation
history and curves, and the export of the fine-tuned checkpoint against its PyTorch model."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("transformers")
import torch  # noqa: E402
from click.testing import CliRunner  # noqa: E402
from hf_tiny import make_folder  # noqa: E402

from common.artifacts import load_onnx_sidecar  # noqa: E402
from export.hf import export_hf  # noqa: E402
from train import hf_finetune  # noqa: E402
from train.checkpoint import load_checkpoint  # noqa: E402
from train.hf_model import HFEncoderClassifier  # noqa: E402

# 96 reviews - 32 held out = 64 training reviews = 4 steps of 16
RUN = ["--data", "sample", "--limit", "96", "--val-size", "32", "--max-seq-len", "32",
       "--batch-size", "16", "--epochs", "1", "--threads", "1", "--warmup-steps", "2",
       "--word-dropout", "0.2"]


def _run(folder, out, *extra):
    result = CliRunner().invoke(hf_finetune.main, ["--init-from", str(folder), "--out-dir",
                                                   str(out), *RUN, *extra])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("hf_ft"), "bert_bare")


def test_finetune_checkpoints_resume_exactly_and_export(folder, tmp_path):
    whole, split = tmp_path / "whole", tmp_path / "split"
    _run(folder, whole)
    assert "stopped at step 2" in _run(folder, split, "--max-steps", "2")
    assert load_checkpoint(split / "last.pt").state["step"] == 2
    assert "resumed from" in _run(folder, split, "--resume")

    done = load_checkpoint(split / "last.pt", kind="classifier")
    assert isinstance(done.model, HFEncoderClassifier) and done.state["step"] == 4
    assert done.config.model_type == "bert" and done.config.max_seq_len == 32
    reference = load_checkpoint(whole / "last.pt").model.state_dict()
    for name, tensor in done.model.state_dict().items():  # 2 + 2 steps == 4 steps
        assert torch.equal(tensor, reference[name]), name
    init = load_checkpoint(split / "init.pt").model.state_dict()
    assert not torch.equal(init["head.weight"], reference["head.weight"])  # it did train
    history = json.loads((split / "history.json").read_text())
    assert len(history["epochs"]) == 1 and 0.0 <= history["epochs"][0]["val_accuracy"] <= 1.0
    assert (split / "best.pt").is_file() and (split / "loss_curve.png").stat().st_size > 0
    tokenizer = json.loads((split / "tokenizer.json").read_text())
    assert tokenizer["padding"] is None and tokenizer["truncation"] is None

    from train import validate

    result = CliRunner().invoke(validate.main, [
        "--checkpoint", str(split / "best.pt"), "--data", "sample", "--split", "test",
        "--output-dir", str(tmp_path / "val"), "--max-samples", "40"])
    assert result.exit_code == 0, result.output

    onnx_path = export_hf(split / "best.pt", tmp_path / "ft.onnx", max_batch=4)
    sidecar = load_onnx_sidecar(onnx_path, kind="classifier")
    assert sidecar["labels"] == ["negative", "positive"] and sidecar["max_seq_len"] == 32
    assert sidecar["parity"]["max_abs_diff"] < 1e-4
    assert sidecar["model_config"]["head"] == "mean-pooling+linear"


def test_folder_without_weights_is_one_line(folder, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text((folder / "config.json").read_text())
    result = CliRunner().invoke(hf_finetune.main, ["--init-from", str(empty), "--out-dir",
                                                   str(tmp_path / "out"), *RUN])
    assert result.exit_code == 2
    assert result.output.startswith("error: --init-from") and len(result.output.splitlines()) == 1
    assert "no weights" in result.output


# -- issue 23: folders refused first, labels from the data, an existing head continued --------
LOCAL = ["--val-size", "12", "--max-seq-len", "32", "--batch-size", "16", "--epochs", "1",
         "--threads", "1", "--warmup-steps", "1"]
TEXTS = ["this film was wonderful and the acting was great", "a dull and boring movie",
         "the dog ran to the park", "once upon a time there was a little cat"]


def _data(tmp_path, labels, n=48):
    """tmp_path/data/train.jsonl: n texts, label i % len(labels)."""
    folder = tmp_path / "data"
    folder.mkdir(exist_ok=True)
    lines = [json.dumps({"text": f"{TEXTS[i % len(TEXTS)]} {i}", "label": labels[i % len(labels)]})
             for i in range(n)]
    (folder / "train.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def _refused(folder, out, data, *extra, data_read=True):
    """The one error line of a refused run, which left no --out-dir; data_read=False: refused
    before the data was looked at."""
    result = CliRunner().invoke(hf_finetune.main, ["--init-from", str(folder), "--out-dir",
                                                   str(out), "--data", str(data), *LOCAL, *extra])
    errors = [ln for ln in result.output.splitlines() if ln.startswith("error: ")]
    assert result.exit_code == 2 and len(errors) == 1, result.output
    assert "Traceback" not in result.output and not out.exists(), result.output
    assert data_read or "using local" not in result.output, result.output
    return errors[0]


def test_bad_folders_are_refused_before_the_data_and_the_out_dir(tmp_path):
    no_data = tmp_path / "no_such_data"  # reading it first would be another error
    out = tmp_path / "out"
    gpt2 = make_folder(tmp_path, "gpt2")
    line = _refused(gpt2, out, no_data, data_read=False)
    assert f"--init-from {gpt2}: model_type 'gpt2'" in line and "cannot be fine-tuned" in line
    assert "no config.json" in _refused(tmp_path / "nothing", out, no_data, data_read=False)

    bert = make_folder(tmp_path, "bert_bare")
    weights = bert / "model.safetensors"
    intact = weights.read_bytes()
    weights.write_bytes(intact[:1000])
    assert f"weight file {weights} is not a readable safetensors file" in \
        _refused(bert, out, no_data, data_read=False)
    weights.write_bytes(intact)

    # The config claims a head the weights lack: found only when transformers loads the
    # model, after the data: still no --out-dir left behind.
    config = json.loads((bert / "config.json").read_text())
    (bert / "config.json").write_text(json.dumps(
        {**config, "architectures": ["BertForSequenceClassification"]}))
    assert "the weights lack" in _refused(bert, out, _data(tmp_path, [0, 1]))


def test_labels_and_their_names_come_from_the_data(tmp_path, folder):
    data = _data(tmp_path, ["sports", "business", "world"])
    out = tmp_path / "out"
    _run_local(folder, out, data)
    best = load_checkpoint(out / "best.pt")
    assert best.config.num_labels == 3 and best.config.head == "mean-pooling+linear"
    assert best.state["train_config"]["labels"] == ["business", "sports", "world"]  # sorted
    sidecar = load_onnx_sidecar(export_hf(out / "best.pt", tmp_path / "m.onnx", max_batch=2))
    assert sidecar["labels"] == ["business", "sports", "world"]

    ints = tmp_path / "ints"
    ints.mkdir()
    _run_local(folder, tmp_path / "out_int", _data(ints, [0, 1, 2, 3]))
    assert load_checkpoint(tmp_path / "out_int" / "best.pt").state["train_config"]["labels"] \
        == ["label_0", "label_1", "label_2", "label_3"]

    mixed = tmp_path / "mixed"
    mixed.mkdir()
    line = _refused(folder, tmp_path / "out_mixed", _data(mixed, [0, "x"]))
    assert "train.jsonl:2: label 'x'" in line and "mixes integer and string" in line


def _run_local(folder, out, data, *extra):
    result = CliRunner().invoke(hf_finetune.main, ["--init-from", str(folder), "--out-dir",
                                                   str(out), "--data", str(data), *LOCAL, *extra])
    assert result.exit_code == 0, result.output
    return result.output


def test_an_existing_classification_head_is_kept_and_continued(tmp_path):
    from transformers import AutoModelForSequenceClassification

    folder = make_folder(tmp_path, "bert")  # BertForSequenceClassification, labels bad/good
    data = _data(tmp_path, ["good", "bad"])
    out = tmp_path / "out"
    assert "head: sequence-classification" in _run_local(folder, out, data)
    original = AutoModelForSequenceClassification.from_pretrained(str(folder)).state_dict()
    init = load_checkpoint(out / "init.pt")
    assert init.config.head == "sequence-classification"
    assert torch.equal(init.model.encoder.classifier.weight, original["classifier.weight"])
    best = load_checkpoint(out / "best.pt")
    assert best.state["train_config"]["labels"] == ["bad", "good"]  # the head's order
    assert not torch.equal(best.model.encoder.classifier.weight, original["classifier.weight"])

    onnx_path = export_hf(out / "best.pt", tmp_path / "kept.onnx", max_batch=2)
    sidecar = load_onnx_sidecar(onnx_path, kind="classifier")
    assert sidecar["model_config"]["head"] == "sequence-classification"
    assert sidecar["labels"] == ["bad", "good"] and sidecar["max_seq_len"] == 32
    assert sidecar["parity"]["max_abs_diff"] < 1e-4

    three = tmp_path / "three"
    three.mkdir()
    line = _refused(folder, tmp_path / "out3", _data(three, [0, 1, 2]))
    assert f"--init-from {folder}: its classification head has 2 labels" in line
    other = tmp_path / "other"
    other.mkdir()
    line = _refused(folder, tmp_path / "out4", _data(other, ["pos", "neg"]))
    assert "are not the names of" in line and "['bad', 'good']" in line


# -- review of issue 23: text cleaning is the data's, recorded and exported; --num-labels -----
def test_text_cleaning_is_chosen_recorded_and_exported(tmp_path, folder, monkeypatch):
    """A user's train.jsonl is trained on as written (no IMDB name masking, cleaned once at
    most), the choice is in the checkpoint and export.hf gives it to the runtime."""
    seen = {}
    task = hf_finetune.ImdbTask

    def spy(encoded, *args):  # the ids training sees
        seen["rows"] = encoded
        return task(encoded, *args)

    monkeypatch.setattr(hf_finetune, "ImdbTask", spy)
    data = tmp_path / "data"
    data.mkdir()
    text = "my new Samsung phone"
    (data / "train.jsonl").write_text("\n".join(
        json.dumps({"text": text, "label": i % 2}) for i in range(24)) + "\n")
    raw = hf_finetune.read_tokenizer(folder / "tokenizer.json").encode(text).ids
    cleaned = hf_finetune.read_tokenizer(folder / "tokenizer.json").encode(
        "my new someone phone").ids
    assert raw != cleaned
    for option, want, ids in ((), "none", raw), (("--text-cleaning", "imdb"), "imdb", cleaned):
        out = tmp_path / f"out_{want}"
        _run_local(folder, out, data, "--val-size", "4", *option)
        assert seen["rows"][0] == ids
        assert load_checkpoint(out / "best.pt").state["train_config"]["text_cleaning"] == want
        sidecar = load_onnx_sidecar(export_hf(out / "best.pt", tmp_path / f"{want}.onnx",
                                              max_batch=2, check_parity=False))
        assert sidecar["text"]["cleaning"] == want
    line = _refused(folder, tmp_path / "out_x", "sample", "--text-cleaning", "none")
    assert "--text-cleaning none: IMDB (sample) is read cleaned" in line


def test_num_labels_overrides_the_data(tmp_path, folder):
    data = _data(tmp_path, [0, 1])
    out = tmp_path / "out"
    _run_local(folder, out, data, "--num-labels", "4")
    best = load_checkpoint(out / "best.pt")
    assert best.config.num_labels == 4
    assert best.state["train_config"]["labels"] == ["label_0", "label_1", "label_2", "label_3"]
    three = tmp_path / "three"
    three.mkdir()
    line = _refused(folder, tmp_path / "out3", _data(three, [0, 1, 2]), "--num-labels", "2")
    assert "--num-labels 2:" in line and "needs at least 3 labels" in line
