"""Data sources: generated sample data, local folders, the hub's fast failure, source precedence."""
from __future__ import annotations

import json
import socket
import time

import pytest

from common.errors import ToolkitError
from train import data
from train.sample_data import sample_imdb, sample_tinystories


def test_sample_imdb_is_deterministic_balanced_and_varied():
    first = sample_imdb(n_train=200, n_test=50, seed=3)
    assert first == sample_imdb(n_train=200, n_test=50, seed=3)
    assert first != sample_imdb(n_train=200, n_test=50, seed=4)
    for split, n in (("train", 200), ("test", 50)):
        texts, labels = first[split]
        assert len(texts) == len(labels) == n
        assert sorted(set(labels)) == [0, 1] and sum(labels) == n // 2
        lengths = [len(t.split()) for t in texts]
        assert min(lengths) >= 20 and max(lengths) <= 200
        assert max(lengths) - min(lengths) > 80  # varied, not one template length
    texts, labels = first["train"]
    # negations occur in both classes, so "not" alone does not give the label away
    assert {label for t, label in zip(texts, labels) if " not " in t} == {0, 1}


def test_sample_tinystories_is_deterministic_with_short_stories():
    stories = sample_tinystories(n_train=50, n_valid=10, seed=1)
    assert stories == sample_tinystories(n_train=50, n_valid=10, seed=1)
    assert len(stories["train"]) == 50 and len(stories["valid"]) == 10
    for story in stories["train"]:
        assert 3 <= story.count(".") <= 8
        assert data.END_OF_TEXT_LINE not in story
    assert len(set(stories["train"])) > 40


def write_imdb(folder, train_lines, test_lines=None):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.jsonl").write_text("\n".join(train_lines) + "\n", encoding="utf-8")
    test = test_lines if test_lines is not None else [json.dumps({"text": "ok", "label": 0})]
    (folder / "test.jsonl").write_text("\n".join(test) + "\n", encoding="utf-8")
    return folder


def test_local_imdb_cleans_br_tags_and_keeps_unicode_line_separators(tmp_path):
    lines = [
        json.dumps({"text": "Great film.<br /><br />Loved it.<BR>Really", "label": 1}),
        json.dumps({"text": "Dull\u2028and slow", "label": 0}),  # U+2028 is not a line break
    ]
    folder = write_imdb(tmp_path / "imdb", lines)
    splits = data.imdb_splits(str(folder))
    assert splits["train"] == (["Great film. Loved it. Really", "Dull and slow"], [1, 0])
    assert splits["test"] == (["ok"], [0])
    # a parent folder holding imdb/ works too, so one DATA_DIR serves both models
    assert data.imdb_splits(str(tmp_path)) == splits


@pytest.mark.parametrize("raw, cleaned", [
    ("I think Robert De Niro was great, and Gotham AWFUL.",
     "I think someone was great, and someone AWFUL."),
    ("Awful. The plot, Batman Begins: no.", "Awful. The plot, someone: no."),  # starts stay
    ("I loved it. I did.", "I loved it. I did."),
])
def test_names_become_one_placeholder_and_sentence_starts_stay(raw, cleaned):
    assert data.clean_imdb_text(raw) == cleaned
    assert data.clean_imdb_text(cleaned) == cleaned  # cleaning twice changes nothing


def test_local_tinystories_splits_at_end_of_text_lines(tmp_path):
    folder = tmp_path / "tinystories"
    folder.mkdir()
    (folder / "train.txt").write_text(
        "Once upon a time.\nThe end.\n<|endoftext|>\nA second <|endoftext|> story.\r\n"
        "<|endoftext|>\r\n\nA last one without a marker\n",
        encoding="utf-8",
    )
    (folder / "valid.txt").write_text("Only one.\n<|endoftext|>\n", encoding="utf-8")
    splits = data.tinystories_splits(str(folder))
    assert splits["train"] == [
        "Once upon a time.\nThe end.",
        "A second <|endoftext|> story.",
        "A last one without a marker",
    ]
    assert splits["valid"] == ["Only one."]


def test_missing_folder_and_missing_file_are_named(tmp_path):
    with pytest.raises(ToolkitError, match="does not exist"):
        data.imdb_splits(str(tmp_path / "nowhere"))
    folder = tmp_path / "imdb"
    folder.mkdir()
    (folder / "train.jsonl").write_text(json.dumps({"text": "a", "label": 1}) + "\n")
    with pytest.raises(ToolkitError, match=r"test\.jsonl not found.*train\.jsonl and test\.jsonl"):
        data.imdb_splits(str(folder))
    with pytest.raises(ToolkitError, match=r"train\.txt not found.*<\|endoftext\|>"):
        data.tinystories_splits(str(folder))


@pytest.mark.parametrize(
    "bad_line, message",
    [
        ('{"text": "cut off', r"train\.jsonl:2: malformed JSON"),
        (json.dumps({"text": "x", "label": 2}), r"train\.jsonl:2: label 2: expected 0 or 1"),
        (json.dumps({"text": "x", "label": True}), r"train\.jsonl:2: label True"),
        (json.dumps({"text": "x", "label": "1"}), r"train\.jsonl:2: label '1'"),
        (json.dumps({"review": "x", "label": 1}), r"train\.jsonl:2: expected an object"),
    ],
)
def test_bad_jsonl_lines_name_file_and_line(tmp_path, bad_line, message):
    good = json.dumps({"text": "fine", "label": 1})
    folder = write_imdb(tmp_path / "imdb", [good, bad_line])
    with pytest.raises(ToolkitError, match=message):
        data.imdb_splits(str(folder))


def test_empty_story_file_is_an_error(tmp_path):
    (tmp_path / "train.txt").write_text("<|endoftext|>\n\n")
    (tmp_path / "valid.txt").write_text("A story.\n")
    with pytest.raises(ToolkitError, match="holds no stories"):
        data.tinystories_splits(str(tmp_path))


@pytest.mark.parametrize("var", ["HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"])
def test_hub_offline_fails_at_once_naming_the_ways_out(monkeypatch, var):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv(var, "1")
    started = time.perf_counter()
    with pytest.raises(ToolkitError, match=f"unreachable.*{var}.*DATA_DIR=.*DATA=sample"):
        data.tinystories_splits("hub")
    assert time.perf_counter() - started < 2.0


def test_unreachable_hub_endpoint_fails_fast(monkeypatch):
    from huggingface_hub import constants

    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    started = time.perf_counter()
    with pytest.raises(ToolkitError, match=f"unreachable.*127.0.0.1:{port}.*DATA_DIR="):
        data.imdb_splits("hub")
    assert time.perf_counter() - started < 2.0


def test_resolve_data_source_precedence(monkeypatch, tmp_path):
    for var in ("DATA_DIR", "DATA"):
        monkeypatch.delenv(var, raising=False)
    assert data.resolve_data_source(None) == "hub"
    monkeypatch.setenv("DATA", "sample")
    assert data.resolve_data_source(None) == "sample"
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    assert data.resolve_data_source(None) == str(tmp_path)
    assert data.resolve_data_source("hub") == "hub"
    assert data.resolve_data_source("/some/folder") == "/some/folder"
    monkeypatch.delenv("DATA_DIR")
    monkeypatch.setenv("DATA", "imdb")
    with pytest.raises(ToolkitError, match="DATA='imdb': expected 'sample' or 'hub'"):
        data.resolve_data_source(None)


def test_describe_source_announces_sample_data(tmp_path):
    assert "SAMPLE" in data.describe_source("sample", "IMDB")
    assert "not comparable" in data.describe_source("sample")
    assert str(tmp_path.resolve()) in data.describe_source(str(tmp_path))
    assert "hub" in data.describe_source("hub")
