"""train.feature_convert: CSV/Parquet feature tables -> the .npz files calibration, runtime and
Triton read. A model trained on the CSV classifies the converted test file with the runtime
exactly as PyTorch classifies the CSV; errors are one line naming the file."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from common.errors import ToolkitError

TINY = ["--d-model", "16", "--n-layers", "1", "--n-heads", "2", "--d-ff", "32",
        "--epochs", "2", "--threads", "1", "--batch-size", "8", "--warmup-steps", "5",
        "--no-amp"]


@pytest.fixture(scope="module")
def csv_sample(tmp_path_factory) -> Path:
    from train import feature_sample

    out = tmp_path_factory.mktemp("csv") / "sample"
    result = CliRunner().invoke(feature_sample.main, [
        "--out", str(out), "--format", "csv", "--seed", "3", "--train", "48", "--valid", "12",
        "--test", "16"])
    assert result.exit_code == 0, result.output
    return out


def test_csv_to_npz_to_runtime_predicts_as_pytorch_on_the_csv(csv_sample, tmp_path, capsys):
    from calibration.feature_data import read_feature_file
    from export.onnx_model import export_checkpoint
    from runtime.classify import main as classify
    from train import feature_convert, features
    from train.checkpoint import load_checkpoint
    from train.feature_data import load_feature_data, normalize, read_split

    run = tmp_path / "run"
    trained = CliRunner().invoke(features.main, ["--data", str(csv_sample), "--out-dir",
                                                 str(run), *TINY])
    assert trained.exit_code == 0, trained.output
    onnx = export_checkpoint(run / "best.pt", tmp_path / "waves.onnx")
    converted = CliRunner().invoke(feature_convert.main, ["--data", str(csv_sample),
                                                          "--out", str(tmp_path / "npz")])
    assert converted.exit_code == 0, converted.output
    assert sorted(p.name for p in (tmp_path / "npz").iterdir()) == [
        "test.npz", "train.npz", "valid.npz"]

    test_npz = tmp_path / "npz" / "test.npz"
    table = read_split(csv_sample / "test.csv")
    with np.load(test_npz) as npz:
        assert npz["features"].dtype == np.float32 and npz["labels"].dtype.kind == "U"
        np.testing.assert_array_equal(npz["features"], table.features)
        np.testing.assert_array_equal(npz["lengths"], table.lengths)
        assert list(npz["feature_names"]) == table.feature_names

    ckpt = load_checkpoint(run / "best.pt")
    names = ckpt.state["labels"]
    windows = read_feature_file(test_npz, 3, names)  # the device-side reader takes it
    data = load_feature_data(csv_sample)
    split = data.splits["test"]
    np.testing.assert_array_equal(windows.labels, split.labels)
    mask = (np.arange(split.features.shape[1])[None, :] < split.lengths[:, None])
    with torch.no_grad():
        logits = ckpt.model(torch.from_numpy(normalize(split.features, split.lengths,
                                                       ckpt.state["feature_norm"])),
                            torch.from_numpy(mask.astype(np.int32))).numpy()
    want = [names[i] for i in logits.argmax(axis=1)]

    with pytest.raises(SystemExit) as done:
        classify(["--model", str(onnx), "--features", str(test_npz), "--batch-size", "4"])
    assert done.value.code == 0
    out, err = capsys.readouterr()
    got = [line.split("\t")[1] for line in out.splitlines()]
    assert got == want and len(got) == 16
    assert "accuracy" in err


def test_one_file_keeps_its_name_and_errors_name_the_file(csv_sample, tmp_path):
    from train.feature_convert import convert, main

    single = tmp_path / "held_out.csv"
    single.write_text((csv_sample / "test.csv").read_text())
    written = convert(single, tmp_path / "out", labels=["sawtooth", "sine", "square"])
    assert list(written) == ["held_out"] and written["held_out"].name == "held_out.npz"
    with np.load(written["held_out"]) as npz:
        assert list(npz["label_names"]) == ["sawtooth", "sine", "square"]
    with pytest.raises(ToolkitError, match=r"held_out\.csv: label '\w+' at sequence '\w+' is "
                                           r"not one of the training labels \['sine'\]"):
        convert(single, tmp_path / "out2", labels=["sine"])
    bad = tmp_path / "bad.csv"
    bad.write_text("sequence_id,step,a,label\ns1,0,1.0,x\ns1,1,1e39,x\n")
    result = CliRunner().invoke(main, ["--data", str(bad), "--out", str(tmp_path / "o3")])
    assert result.exit_code == 2
    assert [line for line in result.output.splitlines() if line.startswith("error:")] == [
        f"error: {bad}: column 'a' is 1e+39 (beyond float32's +-3.4e38) at line 3 (sequence "
        "'s1'): expected finite float32 numbers"]
    assert not (tmp_path / "o3").exists()
