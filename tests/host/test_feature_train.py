"""Continuous-feature classifiers: reading users' files (npz, CSV, Parquet) with one-line errors,
training from them, the normalization statistics the checkpoint keeps, and their evaluation."""
import json
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from common.errors import ToolkitError
from train import feature_sample, features, validate
from train.checkpoint import load_checkpoint
from train.feature_data import load_feature_data, normalization_stats, read_split
from train.feature_table import TableColumns

TINY = ["--d-model", "16", "--n-layers", "1", "--n-heads", "2", "--d-ff", "32",
        "--epochs", "1", "--threads", "1", "--batch-size", "8", "--warmup-steps", "5"]
SIZES = ["--train", "48", "--valid", "12", "--test", "12"]


def make_sample(tmp_path, fmt):
    out = tmp_path / f"sample_{fmt}"
    result = CliRunner().invoke(feature_sample.main, ["--out", str(out), "--format", fmt,
                                                      "--seed", "3", *SIZES])
    assert result.exit_code == 0, result.output
    return out


def train_cli(args):
    return CliRunner().invoke(features.main, [*args, *TINY])


def one_error_line(result):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.output
    return lines[0]


def write_npz(path, **fields):
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **fields)
    return path


def waves(n=12, seq=10, dim=2, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, seq, dim)).astype(np.float32), np.arange(n) % 3


def test_trains_from_npz_and_keeps_normalization_labels_and_metrics(tmp_path):
    data, out = make_sample(tmp_path, "npz"), tmp_path / "run"
    result = train_cli(["--data", str(data), "--out-dir", str(out)])
    assert result.exit_code == 0, result.output
    ckpt = load_checkpoint(out / "best.pt", kind="classifier")
    assert ckpt.config.feature_dim == 3 and ckpt.config.num_labels == 3
    assert ckpt.config.max_seq_len == load_feature_data(data).longest  # from the data
    assert ckpt.state["labels"] == ["sawtooth", "sine", "square"]
    assert ckpt.state["feature_names"] == ["signal", "derivative", "noise"]
    raw = np.load(data / "train.npz")
    real = np.arange(raw["features"].shape[1])[None, :] < raw["lengths"][:, None]
    steps = raw["features"][real].astype(np.float64)  # (real steps, 3) of train only
    np.testing.assert_allclose(ckpt.state["feature_norm"]["mean"], steps.mean(0), rtol=1e-6)
    np.testing.assert_allclose(ckpt.state["feature_norm"]["std"], steps.std(0), rtol=1e-6)
    assert load_checkpoint(out / "last.pt").state["feature_norm"] == ckpt.state["feature_norm"]
    assert not (out / "tokenizer.json").exists()
    for split in ("valid", "test"):
        metrics = json.loads((out / f"{split}_metrics.json").read_text())
        assert np.asarray(metrics["confusion_matrix"]).sum() == 12
        assert set(metrics["per_class"]) == {"sawtooth", "sine", "square"}
        assert (out / f"{split}_confusion_matrix.png").stat().st_size > 0


def test_normalization_comes_from_the_training_split_only(tmp_path):
    x, y = waves(n=30)
    write_npz(tmp_path / "d" / "train.npz", features=x + 5.0, labels=y)
    write_npz(tmp_path / "d" / "valid.npz", features=x[:9] - 50.0, labels=y[:9])
    data = load_feature_data(tmp_path / "d")
    stats = normalization_stats(data.splits["train"])
    np.testing.assert_allclose(stats["mean"], (x + 5.0).reshape(-1, 2).mean(0), rtol=1e-5)
    const = np.ones((6, 4, 2), np.float32)  # a constant feature: std floored, no division by 0
    write_npz(tmp_path / "c.npz", features=const, labels=np.arange(6) % 2)
    assert normalization_stats(load_feature_data(tmp_path / "c.npz").splits["train"])[
        "std"] == [1e-6, 1e-6]


def test_trains_from_csv_with_the_same_data_as_the_npz(tmp_path):
    csv_dir, npz_dir = make_sample(tmp_path, "csv"), make_sample(tmp_path, "npz")
    a, b = load_feature_data(npz_dir), load_feature_data(csv_dir)
    for split in ("train", "valid", "test"):
        width = b.splits[split].features.shape[1]  # the npz pads to 128 steps
        np.testing.assert_allclose(a.splits[split].features[:, :width],
                                   b.splits[split].features, atol=1e-4)  # CSV: 6 digits
        assert (a.splits[split].labels == b.splits[split].labels).all()
    result = train_cli(["--data", str(csv_dir), "--out-dir", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    ckpt = load_checkpoint(tmp_path / "run" / "best.pt")
    assert ckpt.state["feature_names"] == ["signal", "derivative", "noise"]
    assert ckpt.state["train_config"]["data"]["source"] == str(csv_dir)


def test_rows_are_grouped_by_id_and_ordered_by_step(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("sequence_id,step,a,b,label\n"
                    "q,1,3,30,x\np,0,1,10,y\nq,0,2,20,x\np,1,4,40,y\nq,2,5,50,x\n")
    raw = read_split(path)
    assert raw.seq_ids.tolist() == ["q", "p"] and raw.lengths.tolist() == [3, 2]
    assert raw.features[0, :, 0].tolist() == [2.0, 3.0, 5.0]  # q by step
    assert raw.features[1, :, 1].tolist() == [10.0, 40.0, 0.0]  # p, zero-padded
    assert raw.labels.tolist() == ["x", "y"] and raw.feature_names == ["a", "b"]
    no_step = read_split(path, TableColumns(features=("b",), step=None))
    assert no_step.features.shape == (2, 3, 1)  # "step" is still found by default
    ordered = read_split(path, TableColumns(features=("a",), step="b"))
    assert ordered.features[0, :, 0].tolist() == [2.0, 3.0, 5.0]


def test_parquet_reads_like_csv_or_says_to_install_pyarrow(tmp_path, monkeypatch):
    pytest.importorskip("pyarrow")
    data = make_sample(tmp_path, "parquet")
    npz = load_feature_data(make_sample(tmp_path, "npz"))
    pq = load_feature_data(data).splits["test"].features
    np.testing.assert_allclose(pq, npz.splits["test"].features[:, :pq.shape[1]], atol=1e-6)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)  # as if not installed
    with pytest.raises(ToolkitError, match=r"train\.parquet: reading Parquet needs pyarrow"):
        load_feature_data(data)


def _bad_npz(tmp_path, case):
    x, y = waves()
    fields = {"features": x, "labels": y}
    if case == "shape":
        fields["features"] = x[:, :, 0]
    elif case == "nan":
        fields["features"] = x.copy()
        fields["features"][4, 7, 1] = np.nan
    elif case == "mixed":
        fields["features"] = np.array([x[0], x[1, :5]], dtype=object)
        fields["labels"] = y[:2]
    elif case == "lengths":
        fields["lengths"] = np.full(12, 11)
    elif case == "labels":
        fields["labels"] = y[:5]
    return write_npz(tmp_path / "d" / "train.npz", **fields)


@pytest.mark.parametrize("case, message", [
    ("shape", r"train\.npz: field 'features' has shape \(12, 10\): expected \(N, seq, F\)"),
    ("nan", r"train\.npz: field 'features' has nan at sequence 4, step 7, feature 1"),
    ("mixed", r"train\.npz: field 'features' is an object array \(sequences of different "
              r"lengths\?\).*'lengths'"),
    ("lengths", r"train\.npz: field 'lengths' has 11 at sequence 0: expected 1\.\.10"),
    ("labels", r"train\.npz: field 'labels' has shape \(5,\): expected \(12,\)"),
])
def test_bad_npz_fields_are_named(tmp_path, case, message):
    path = _bad_npz(tmp_path, case)
    with pytest.raises(ToolkitError, match=message):
        load_feature_data(path.parent)


def test_nan_in_padding_past_a_length_is_ignored(tmp_path):
    x, y = waves()
    x[2, 6:] = np.nan
    lengths = np.full(12, 10)
    lengths[2] = 6
    write_npz(tmp_path / "train.npz", features=x, labels=y, lengths=lengths)
    split = load_feature_data(tmp_path / "train.npz", val_fraction=0.25).splits
    assert all(np.isfinite(s.features).all() for s in split.values())


CSV_HEAD = "sequence_id,step,a,label\n"


@pytest.mark.parametrize("body, columns, message", [
    ("s1,0,1.0,x\ns1,1,nan,x\n", {}, r"t\.csv: column 'a' is nan at line 3 \(sequence 's1'\)"),
    ("s1,0,1.0,x\ns1,1,1e39,x\n", {},
     r"t\.csv: column 'a' is 1e\+39 \(beyond float32's \+-3\.4e38\) at line 3 \(sequence "
     r"'s1'\): expected finite float32"),
    ("s1,0,1.0,x\ns1,1,-3.5e38,x\n", {}, r"column 'a' is -3\.5e\+38 \(beyond float32"),
    ("s1,0,1.0,x\ns1,1,,x\n", {}, r"t\.csv: column 'a' has '' at line 3: expected a number"),
    ("s1,0,1.0,x\ns1,1,2.0,y\n", {},
     r"t\.csv: sequence 's1' has label 'x' at line 2 and 'y' at line 3: the label column "
     r"'label' must be constant"),
    ("s1,0,1.0,x\ns1,0,2.0,x\n", {}, r"t\.csv: sequence 's1' has step 0 twice"),
    ("s1,0,1.0,x\n", {"features": ("a", "b")}, r"t\.csv: no feature column 'b'"),
    ("s1,0,1.0,x\n", {"id": "track"}, r"t\.csv: no sequence id column 'track'"),
    ("s1,0,1.0\n", {}, r"t\.csv: line 2 has 3 cells; the header has 4"),
])
def test_bad_csv_rows_are_named(tmp_path, body, columns, message):
    path = tmp_path / "t.csv"
    path.write_text(CSV_HEAD + body)
    with pytest.raises(ToolkitError, match=message):
        load_feature_data(path, TableColumns(**columns))


def test_unknown_labels_in_valid_and_test_are_named(tmp_path):
    x, y = waves()
    names = np.array(["a", "b", "c"])[y]
    write_npz(tmp_path / "train.npz", features=x, labels=names)
    write_npz(tmp_path / "test.npz", features=x[:3],
              labels=np.array(["a", "triangle", "b"]))
    with pytest.raises(ToolkitError, match=r"test\.npz: label 'triangle' at sequence 1 is not "
                                           r"one of the training labels \['a', 'b', 'c'\]"):
        load_feature_data(tmp_path)
    write_npz(tmp_path / "test.npz", features=x[:3], labels=np.array([0, 1, 2]))
    with pytest.raises(ToolkitError, match="test.npz: labels are int64.*strings or integers"):
        load_feature_data(tmp_path)


def test_holdout_is_seeded_and_keeps_every_class(tmp_path):
    x, y = waves(n=60)
    write_npz(tmp_path / "one.npz", features=x, labels=y)
    a = load_feature_data(tmp_path / "one.npz", val_fraction=0.2, split_seed=1)
    b = load_feature_data(tmp_path / "one.npz", val_fraction=0.2, split_seed=1)
    c = load_feature_data(tmp_path / "one.npz", val_fraction=0.2, split_seed=2)
    assert np.array_equal(a.splits["valid"].features, b.splits["valid"].features)
    assert not np.array_equal(a.splits["valid"].features, c.splits["valid"].features)
    assert sorted(a.splits["valid"].labels.tolist()) == [0] * 4 + [1] * 4 + [2] * 4
    assert len(a.splits["train"].labels) == 48 and "held out" in a.splits["valid"].name


def test_cli_errors_are_one_line_with_exit_code_2(tmp_path):
    path = _bad_npz(tmp_path, "nan")
    assert "sequence 4, step 7" in one_error_line(train_cli(["--data", str(path.parent)]))
    make_sample(tmp_path, "npz")
    both = tmp_path / "sample_npz"
    (both / "train.csv").write_text(CSV_HEAD)
    assert "keep one file per split" in one_error_line(train_cli(["--data", str(both)]))
    missing = one_error_line(train_cli(["--data", str(tmp_path / "nowhere")]))
    assert "nowhere" in missing and "train.feature_sample" in missing
    x, y = waves()
    good = write_npz(tmp_path / "good" / "train.npz", features=x, labels=y)
    long = one_error_line(train_cli(["--data", str(good), "--max-seq-len", "8"]))
    assert "sequences up to 10 steps exceed --max-seq-len 8" in long


def test_validate_reads_the_data_the_checkpoint_records(tmp_path):
    data, out = make_sample(tmp_path, "npz"), tmp_path / "run"
    assert train_cli(["--data", str(data), "--out-dir", str(out)]).exit_code == 0
    result = CliRunner().invoke(validate.main, ["--checkpoint", str(out / "best.pt"),
                                                "--output-dir", str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "eval" / "test_metrics.json").read_text())
    trained = json.loads((out / "test_metrics.json").read_text())
    assert metrics["kind"] == "feature_classifier" and metrics["n_samples"] == 12
    assert metrics["confusion_matrix"] == trained["confusion_matrix"]
    bad = CliRunner().invoke(validate.main, ["--checkpoint", str(out / "best.pt"), "--split",
                                             "dev", "--output-dir", str(tmp_path / "eval")])
    assert "expected one of train, valid, test" in one_error_line(bad)


def test_a_stopped_run_resumes_to_the_same_result_with_its_metadata(tmp_path):
    data = make_sample(tmp_path, "npz")
    out, full = tmp_path / "run", tmp_path / "full"
    assert train_cli(["--data", str(data), "--out-dir", str(out), "--max-steps", "3"]
                     ).exit_code == 0
    stopped = load_checkpoint(out / "last.pt").state
    assert stopped["step"] == 3 and stopped["labels"] == ["sawtooth", "sine", "square"]
    other = make_sample(tmp_path, "csv")  # the same waves, rounded to 6 digits: other stats
    changed = train_cli(["--data", str(other), "--out-dir", str(out), "--resume"])
    assert "was trained on data with other feature_norm" in one_error_line(changed)
    assert train_cli(["--data", str(data), "--out-dir", str(out), "--resume"]).exit_code == 0
    assert train_cli(["--data", str(data), "--out-dir", str(full)]).exit_code == 0
    rows = [json.loads((d / "history.json").read_text())["epochs"][-1] for d in (out, full)]
    assert rows[0]["step"] == rows[1]["step"] == 6
    assert rows[0]["val_loss"] == pytest.approx(rows[1]["val_loss"], abs=1e-6)
    assert load_checkpoint(out / "best.pt").state["feature_norm"] == stopped["feature_norm"]


def test_resume_from_a_corrupt_or_foreign_last_checkpoint_is_one_line_naming_it(tmp_path):
    from train.checkpoint import save_checkpoint
    from train.hf_model import build_model
    from train.model import ClassifierConfig

    data = make_sample(tmp_path, "npz")
    out = tmp_path / "run"
    out.mkdir()
    (out / "last.pt").write_bytes(b"not a checkpoint")
    corrupt = one_error_line(train_cli(["--data", str(data), "--out-dir", str(out), "--resume"]))
    assert str(out / "last.pt") in corrupt and "corrupt or unreadable" in corrupt
    cfg = ClassifierConfig(vocab_size=4, max_seq_len=8, d_model=8, n_layers=1, n_heads=2,
                           d_ff=16, num_labels=3)
    save_checkpoint(out / "last.pt", cfg, build_model(cfg))  # a token classifier's
    foreign = one_error_line(train_cli(["--data", str(data), "--out-dir", str(out), "--resume"]))
    assert f"--resume: {out / 'last.pt'}: the checkpoint has no feature_norm" in foreign


def test_the_sample_is_deterministic_balanced_and_variable_length():
    sizes = {"train": 30, "valid": 0, "test": 0}
    (x, lengths, y), = feature_sample.make_sample(1, sizes).values()
    (x2, _, y2), = feature_sample.make_sample(1, sizes).values()
    (x3, _, _), = feature_sample.make_sample(2, sizes).values()
    assert np.array_equal(x, x2) and np.array_equal(y, y2) and not np.array_equal(x, x3)
    assert sorted(y.tolist()) == sorted(["sawtooth", "sine", "square"] * 10)
    assert lengths.min() >= 32 and lengths.max() <= 128 and len(set(lengths.tolist())) > 5
    assert not x[lengths < 128][:, -1].any()  # zero past each length
