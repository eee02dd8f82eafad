"""Tokenizers: byte-level BPE trained with the ``tokenizers`` library, or GPT-2's from a folder.

Special tokens have fixed ids in the trained tokenizers, so configs and the runtime agree:
``<pad>`` = 0, ``<|endoftext|>`` = 1, ``<cls>`` = 2. A small vocabulary keeps the embedding and
the tied LM head small on the device.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterable, Optional

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from common.errors import ToolkitError

PAD, EOS, CLS = "<pad>", "<|endoftext|>", "<cls>"
SPECIAL_TOKENS = [PAD, EOS, CLS]


def train_bpe(texts: Iterable[str], vocab_size: int, lowercase: bool = False) -> Tokenizer:
    """Train a byte-level BPE tokenizer (no unknown tokens: every byte has an id)."""
    min_size = len(SPECIAL_TOKENS) + 256
    if vocab_size < min_size:
        raise ToolkitError(f"vocab_size={vocab_size}: a byte-level BPE needs at least {min_size}")
    tok = Tokenizer(models.BPE())
    steps = [normalizers.NFKC()] + ([normalizers.Lowercase()] if lowercase else [])
    tok.normalizer = normalizers.Sequence(steps)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return tok


def load_tokenizer(path: str | Path) -> Tokenizer:
    path = Path(path)
    if not path.is_file():
        raise ToolkitError(f"tokenizer not found: {path}")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises plain Exception subclasses from Rust
        raise ToolkitError(f"tokenizer {path} is unreadable ({exc})") from None


def gpt2_tokenizer(folder: str | Path) -> Tokenizer:
    """GPT-2's byte-level BPE from a local folder holding ``tokenizer.json``."""
    return load_tokenizer(Path(folder) / "tokenizer.json")


def special_ids(tok: Tokenizer) -> Dict[str, Optional[int]]:
    """Ids of the special tokens this tokenizer has (GPT-2 has only ``<|endoftext|>``)."""
    return {
        "pad_id": tok.token_to_id(PAD),
        "eos_id": tok.token_to_id(EOS),
        "cls_id": tok.token_to_id(CLS),
    }


def save_tokenizer(tok: Tokenizer, path: str | Path) -> Path:
    from common.fileio import atomic_write_text

    return atomic_write_text(path, tok.to_str(pretty=False))
