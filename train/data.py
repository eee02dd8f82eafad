"""Where the training and evaluation text comes from: generated sample data, the Hugging Face
hub, or a local folder (the layout of the project's shared data copies).

A *source* is one string: ``"sample"``, ``"hub"`` or a directory path.
``resolve_data_source`` picks it from the CLI value, then ``DATA_DIR``, then ``DATA``.
Local folders hold ``train.jsonl``/``test.jsonl`` (``{"text", "label"}`` a line) for IMDB and
``train.txt``/``valid.txt`` (stories separated by lines that are exactly ``<|endoftext|>``) for
TinyStories; a parent folder with ``imdb/`` and ``tinystories/`` inside works too, so one
``DATA_DIR`` serves both models.

Pure Python: no torch; ``datasets`` and ``huggingface_hub`` are imported only for the hub.
"""
from __future__ import annotations

import json
import os
import socket
import threading
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple
from urllib.parse import urlparse

from common.errors import ToolkitError
from common.text import clean_imdb_text  # noqa: F401  (re-exported for train.data users)

SAMPLE = "sample"
HUB = "hub"
DEFAULT_SOURCE = HUB
END_OF_TEXT_LINE = "<|endoftext|>"

IMDB_FILES = {"train": "train.jsonl", "test": "test.jsonl"}
STORY_FILES = {"train": "train.txt", "valid": "valid.txt"}
HUB_IMDB = "imdb"
HUB_TINYSTORIES = "roneneldan/TinyStories"
HUB_STORY_SPLITS = {"train": "train", "valid": "validation"}
HUB_CONNECT_TIMEOUT_S = 3.0
_TRUE_VALUES = {"1", "true", "yes", "on"}
_WAYS_OUT = "set DATA_DIR=<folder> (local copies) or DATA=sample (generated sample data)"


ImdbSplits = Dict[str, Tuple[List[str], List[int]]]
StorySplits = Dict[str, List[str]]


def resolve_data_source(cli_value: str | None = None) -> str:
    """The CLI value if given; else ``$DATA_DIR`` (a folder); else ``$DATA``; else ``"hub"``."""
    if cli_value:
        return _normalise(cli_value)
    data_dir = os.environ.get("DATA_DIR")
    if data_dir:
        return _normalise(data_dir)
    data = os.environ.get("DATA")
    if data:
        if data not in (SAMPLE, HUB):
            raise ToolkitError(
                f"DATA={data!r}: expected 'sample' or 'hub' (use DATA_DIR for a folder)"
            )
        return data
    return DEFAULT_SOURCE


def _normalise(value: str) -> str:
    return value if value in (SAMPLE, HUB) else os.path.expanduser(value)


def describe_source(source: str, dataset: str | None = None) -> str:
    """One line for logs; generated sample data is announced loudly."""
    name = dataset or "IMDB/TinyStories"
    if source == SAMPLE:
        return (
            f"using generated SAMPLE data (not {name}): figures are not comparable to real runs"
        )
    if source == HUB:
        hub_ids = {"IMDB": HUB_IMDB, "TinyStories": HUB_TINYSTORIES}
        hub_id = hub_ids.get(name, f"{HUB_IMDB} / {HUB_TINYSTORIES}")
        return f"using {name} from the Hugging Face hub ({hub_id})"
    return f"using local {name} data from {Path(source).resolve()}"


def imdb_splits(source: str) -> ImdbSplits:
    """``{"train": (texts, labels), "test": (texts, labels)}``; labels 0/1, 1 = positive."""
    if source == SAMPLE:
        from train.sample_data import sample_imdb

        return sample_imdb()
    if source == HUB:
        return _hub_imdb()
    folder = _data_folder(source, "imdb", IMDB_FILES)
    return {split: read_imdb_jsonl(folder / name) for split, name in IMDB_FILES.items()}


def tinystories_splits(source: str) -> StorySplits:
    """``{"train": stories, "valid": stories}``, one story per item."""
    if source == SAMPLE:
        from train.sample_data import sample_tinystories

        return sample_tinystories()
    if source == HUB:
        return _hub_tinystories()
    folder = _data_folder(source, "tinystories", STORY_FILES)
    return {split: read_stories(folder / name) for split, name in STORY_FILES.items()}


def _data_folder(source: str, subfolder: str, files: Dict[str, str]) -> Path:
    """The folder holding ``files``: ``source`` itself or its ``subfolder``."""
    folder = Path(source)
    if not folder.is_dir():
        raise ToolkitError(
            f"data folder {folder} does not exist: expected a folder with "
            f"{' and '.join(files.values())}, or 'sample' / 'hub'"
        )
    if not any((folder / name).exists() for name in files.values()):
        nested = folder / subfolder
        if all((nested / name).is_file() for name in files.values()):
            return nested
    for name in files.values():
        if not (folder / name).is_file():
            raise ToolkitError(
                f"{folder / name} not found: the data folder must hold "
                f"{' and '.join(files.values())} ({_layout_hint(name)})"
            )
    return folder


def _layout_hint(name: str) -> str:
    if name.endswith(".jsonl"):
        return 'one {"text": str, "label": 0|1} object a line'
    return f"stories separated by lines that are exactly {END_OF_TEXT_LINE}"


def text_label_records(path: Path) -> Iterator[Tuple[int, str, Any]]:
    """(line number, text, raw label) of each ``{"text", "label"}`` line; errors name
    ``file:line``. The label is the caller's to check."""
    # split on "\n" only: str.splitlines() would also cut at U+2028/U+0085 inside a review
    for lineno, line in enumerate(_read_text(path).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ToolkitError(f"{path}:{lineno}: malformed JSON ({exc.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise ToolkitError(f'{path}:{lineno}: expected an object with "text" and "label"')
        yield lineno, record["text"], record.get("label")


def read_imdb_jsonl(path: Path) -> Tuple[List[str], List[int]]:
    """Read ``{"text", "label"}`` lines; errors name ``file:line``."""
    texts: List[str] = []
    labels: List[int] = []
    for lineno, text, label in text_label_records(path):
        if type(label) is not int or label not in (0, 1):  # bool is an int: reject it too
            raise ToolkitError(f"{path}:{lineno}: label {label!r}: expected 0 or 1")
        texts.append(clean_imdb_text(text))
        labels.append(label)
    if not texts:
        raise ToolkitError(f"{path} holds no reviews: expected {_layout_hint(path.name)}")
    return texts, labels


def read_stories(path: Path) -> List[str]:
    """Split a text file into stories at lines that are exactly ``<|endoftext|>``."""
    stories: List[str] = []
    current: List[str] = []
    for line in _read_text(path).split("\n"):
        line = line.rstrip("\r")
        if line == END_OF_TEXT_LINE:
            _append_story(stories, current)
            current = []
        else:
            current.append(line.rstrip())
    _append_story(stories, current)
    if not stories:
        raise ToolkitError(f"{path} holds no stories: expected {_layout_hint(path.name)}")
    return stories


def _append_story(stories: List[str], lines: List[str]) -> None:
    story = "\n".join(lines).strip()
    if story:
        stories.append(story)


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ToolkitError(f"{path} is not UTF-8 text (byte {exc.start})") from None


def check_hub_reachable(timeout_s: float = HUB_CONNECT_TIMEOUT_S) -> None:
    """Fail at once when offline mode is set or the hub endpoint (or the HTTPS proxy) does not
    accept a TCP connection within ``timeout_s``, name lookup included.

    ``datasets`` alone would retry for about 20 s before failing with a long traceback.
    """
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in _TRUE_VALUES:
            raise ToolkitError(f"the Hugging Face hub is unreachable ({var} is set): {_WAYS_OUT}")
    from huggingface_hub import constants

    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    url = urlparse(proxy or constants.ENDPOINT)
    address = (url.hostname or "", url.port or (443 if url.scheme == "https" else 80))
    outcome: Dict[str, str] = {}

    def probe() -> None:
        try:
            with socket.create_connection(address, timeout=timeout_s):
                outcome["ok"] = ""
        except OSError as exc:
            outcome["error"] = str(exc)

    # getaddrinfo ignores the socket timeout, so the whole probe runs under a thread's deadline
    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout_s)
    if "ok" not in outcome:
        reason = outcome.get("error", f"no connection within {timeout_s:g} s")
        via = f" via proxy {proxy}" if proxy else ""
        raise ToolkitError(
            f"the Hugging Face hub is unreachable ({constants.ENDPOINT}{via}: {reason}): "
            f"{_WAYS_OUT}"
        )


def _load_hub_dataset(name: str):
    check_hub_reachable()
    import datasets

    try:
        return datasets.load_dataset(name)
    except (ConnectionError, OSError) as exc:  # requests' errors derive from OSError
        raise ToolkitError(f"downloading {name} from the hub failed ({exc}): {_WAYS_OUT}") from None


def _hub_imdb() -> ImdbSplits:
    dataset = _load_hub_dataset(HUB_IMDB)
    return {
        split: ([clean_imdb_text(t) for t in dataset[split]["text"]], list(dataset[split]["label"]))
        for split in IMDB_FILES
    }


def _hub_tinystories() -> StorySplits:
    dataset = _load_hub_dataset(HUB_TINYSTORIES)
    return {
        split: [s.strip() for s in dataset[hub_split]["text"] if s.strip()]
        for split, hub_split in HUB_STORY_SPLITS.items()
    }
