"""Tiny text made in the tests (no downloads, no torch): shared by fixtures and tests."""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import List

FIXTURES = Path(__file__).resolve().parent / "fixtures"

WORDS = ("the cat dog ran sat on mat happy sad good bad film story was very not a and "
         "great awful loved hated little girl boy tree sun played").split()

# What the reference files beside the fixtures hold PyTorch's answers for.
REFERENCE_TEXTS = ["great film", "awful<br /><br/>bad story", "the cat sat on the mat",
                   "not good not bad " * 12, "a little girl loved the happy dog"]
REFERENCE_PROMPTS = ["the cat sat on", "a little girl loved the happy dog and the sun"]
REFERENCE_NEW_TOKENS = 40


def load_reference(onnx_path) -> dict:
    """PyTorch's answers for a committed tiny model (tests/fixtures/make_fixtures.py wrote them
    beside it; tests/host/test_fixtures.py checks them against PyTorch today)."""
    return json.loads(Path(onnx_path).with_suffix(".reference.json").read_text())


def tiny_texts(n: int = 200, seed: int = 0) -> List[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 30))) for _ in range(n)]


# Test-split reviews use upper-case words only: the tokenizer (trained on lower-case text)
# splits them into byte tokens that no train-split text produces.
TEST_WORDS = "ZEBRA QUANTUM VELVET JUKEBOX".split()


def _text(rng: random.Random, words, lo: int, hi: int) -> str:
    return " ".join(rng.choice(words) for _ in range(rng.randint(lo, hi)))


def write_data_dir(root: Path) -> Path:
    """A DATA_DIR in the layout of the shared copies: imdb/*.jsonl and tinystories/*.txt."""
    rng = random.Random(0)
    (root / "imdb").mkdir(parents=True)
    (root / "tinystories").mkdir()
    for split, n, words in (("train", 300, WORDS), ("test", 60, TEST_WORDS)):
        lines = [json.dumps({"text": _text(rng, words, 3, 120), "label": rng.randint(0, 1)})
                 for _ in range(n)]
        (root / "imdb" / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    for split, n in (("train", 200), ("valid", 40)):
        stories = [_text(rng, WORDS, 10, 60) for _ in range(n)]
        (root / "tinystories" / f"{split}.txt").write_text(
            "".join(f"{s}\n<|endoftext|>\n" for s in stories))
    return root


def copy_committed_model(name: str, directory: Path) -> Path:
    """Copy tests/fixtures/<name>.onnx with its sidecar, tokenizer and reference into
    ``directory``: tests may write beside a model (engines, Q/DQ copies), never into git."""
    for suffix in (".onnx", ".onnx.json", ".tokenizer.json", ".reference.json"):
        shutil.copy(FIXTURES / f"{name}{suffix}", directory / f"{name}{suffix}")
    return directory / f"{name}.onnx"
