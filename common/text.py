"""Text rules shared by training, calibration and the device runtime (no torch).

One definition of how a review is cleaned and truncated and how stories become a token stream,
so a model sees on the device exactly what it saw in training.
"""
from __future__ import annotations

import re
from typing import Iterable, List, Optional, Sequence

_BR_TAG = re.compile(r"<br\s*/?>", re.IGNORECASE)
_WHITESPACE = re.compile(r"\s+")
# A capitalised run after a lowercase word or a comma: a name ("Robert De Niro", "Gotham").
# Sentence starts and all-caps words ("AWFUL") are left alone: they carry sentiment.
_MID_SENTENCE_NAME = re.compile(r"(?<=[a-z,;:] )[A-Z][a-z]+(?: [A-Z][a-z]+)*")
NAME_PLACEHOLDER = "someone"


def clean_imdb_text(text: str) -> str:
    """Replace the ``<br />`` tags of the raw reviews by spaces, collapse whitespace, and replace
    names by one placeholder word. Names carry no sentiment, but IMDB's train split has up to 30
    reviews of a movie and its test split other movies: a model that can read the cast and the
    title learns which movies were liked, which does not carry over (docs/DESIGN.md)."""
    text = _WHITESPACE.sub(" ", _BR_TAG.sub(" ", text)).strip()
    return _MID_SENTENCE_NAME.sub(NAME_PLACEHOLDER, text)


def truncate_head_tail(ids: Sequence[int], max_len: int) -> List[int]:
    """Keep the first quarter and the last three quarters of the budget: reviews often state
    the verdict at the end."""
    if len(ids) <= max_len:
        return list(ids)
    head = max_len // 4
    return list(ids[:head]) + list(ids[len(ids) - (max_len - head):])


def encode_classifier_texts(tokenizer, texts: Iterable[str], max_len: int,
                            cls_id: Optional[int] = None) -> List[List[int]]:
    """Cleaned, tokenized, head+tail truncated rows of at most ``max_len`` ids; ``cls_id`` is
    prepended (after truncating to ``max_len - 1``) when the model pools on ``<cls>``."""
    budget = max_len - 1 if cls_id is not None else max_len
    if budget < 1:
        raise ValueError(f"max_len={max_len}: too short to hold any token")
    rows = []
    for enc in tokenizer.encode_batch([clean_imdb_text(t) for t in texts]):
        ids = truncate_head_tail(enc.ids, budget)
        rows.append([cls_id] + ids if cls_id is not None else ids)
    return rows


def story_token_ids(tokenizer, stories: Iterable[str], eos_id: int) -> List[int]:
    """All stories as one id stream, each followed by end-of-text."""
    stream: List[int] = []
    for enc in tokenizer.encode_batch(list(stories)):
        stream.extend(enc.ids)
        stream.append(eos_id)
    return stream
