"""The training CLIs end to end on generated sample data, and their errors."""
import json

import pytest
from click.testing import CliRunner

from train import imdb, tinystories
from train.checkpoint import load_checkpoint

TINY = ["--d-model", "16", "--n-layers", "1", "--n-heads", "2", "--d-ff", "32",
        "--max-seq-len", "64", "--vocab-size", "300", "--epochs", "1", "--threads", "1"]


def test_imdb_cli_trains_on_sample_data_and_says_so(tmp_path):
    out = tmp_path / "imdb"
    result = CliRunner().invoke(imdb.main, ["--data", "sample", "--out-dir", str(out), "--limit",
                                            "300", "--val-size", "50", *TINY])
    assert result.exit_code == 0, result.output
    assert "SAMPLE" in result.output
    ckpt = load_checkpoint(out / "best.pt", kind="classifier")
    assert ckpt.config.vocab_size == 300 and ckpt.state["train_config"]["labels"]
    history = json.loads((out / "history.json").read_text())
    assert len(history["epochs"]) == 1 and 0.0 <= history["epochs"][0]["val_accuracy"] <= 1.0
    assert (out / "loss_curve.png").stat().st_size > 0


def test_stories_cli_trains_and_saves_its_window(tmp_path):
    out = tmp_path / "stories"
    result = CliRunner().invoke(tinystories.main, ["--data", "sample", "--out-dir", str(out),
                                                   "--limit", "200", "--val-stories", "20",
                                                   "--seq-len", "32", *TINY])
    assert result.exit_code == 0, result.output
    ckpt = load_checkpoint(out / "best.pt", kind="decoder")
    assert ckpt.state["train_config"]["seq_len"] == 32
    assert ckpt.state["metrics"]["bits_per_byte"] > 0


@pytest.mark.parametrize("cli", [imdb.main, tinystories.main])
def test_missing_data_directory_is_one_line_and_exit_code_2(cli, tmp_path):
    result = CliRunner().invoke(cli, ["--data", str(tmp_path / "nowhere"), *TINY])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "nowhere" in lines[0]


def test_bad_option_values_are_refused(tmp_path):
    result = CliRunner().invoke(imdb.main, ["--data", "sample", "--word-dropout", "1.5",
                                            "--out-dir", str(tmp_path), *TINY])
    assert result.exit_code == 2 and "--word-dropout" in result.output


def test_holdout_is_the_last_reviews_of_each_label_so_movies_stay_apart():
    labels = [1, 0] * 8 + [1] * 4  # the tail is one-sided: the quota walks back to the 0s
    texts = [f"review {i}" for i in range(len(labels))]
    tr_texts, tr_labels, val_texts, val_labels = imdb.split_holdout(texts, labels, 6)
    assert val_labels.count(0) == val_labels.count(1) == 3
    assert val_texts == ["review 11", "review 13", "review 15", "review 17", "review 18",
                         "review 19"]
    assert sorted(tr_texts + val_texts) == sorted(texts) and len(tr_labels) == len(labels) - 6


@pytest.mark.parametrize("val_size, message", [(0, "expected 1..19"), (14, "too few reviews")])
def test_impossible_holdout_names_the_option(val_size, message):
    labels = [1] * 16 + [0] * 4
    with pytest.raises(imdb.ToolkitError, match=f"--val-size {val_size}: .*{message}"):
        imdb.split_holdout([str(i) for i in range(20)], labels, val_size)
