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
