"""Text rules shared by training, calibration and the device runtime (no torch).

One definition of how a review is cleaned and truncated and how stories become a token stream,
so a model sees on the device exactly what it saw in training. Which rules a model gets is in
its sidecar (``common.artifacts.text_rules``): our IMDB models clean names and ``<br />`` tags,
truncate head + tail and put ``<cls>`` first; a Hugging Face classifier gets exactly its
tokenizer's behaviour (no cleaning, its truncation side, its post-processor's special tokens
and token type ids), as transformers' pipeline does (``encode_for_model``).
"""
from __future__ import annotations

import re
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from common.errors import ToolkitError

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
                            cls_id: Optional[int] = None, clean: bool = True) -> List[List[int]]:
    """Cleaned (``clean``), tokenized, head+tail truncated rows of at most ``max_len`` ids;
    ``cls_id`` is prepended (after truncating to ``max_len - 1``) when the model pools on
    ``<cls>``."""
    budget = max_len - 1 if cls_id is not None else max_len
    if budget < 1:
        raise ValueError(f"max_len={max_len}: too short to hold any token")
    rows = []
    for enc in tokenizer.encode_batch([clean_imdb_text(t) if clean else t for t in texts]):
        ids = truncate_head_tail(enc.ids, budget)
        rows.append([cls_id] + ids if cls_id is not None else ids)
    return rows


def clean_text(text: str, cleaning: str) -> str:
    """The text a model reads: IMDB-cleaned (``cleaning == "imdb"``) or as given."""
    return clean_imdb_text(text) if cleaning == "imdb" else text


def encode_for_model(tokenizer, texts: Sequence[str], max_len: int, rules: Dict[str, str],
                     cls_id: Optional[int] = None, pairs: Optional[Sequence[str]] = None
                     ) -> Tuple[List[List[int]], List[List[int]]]:
    """(id rows, token type rows) of at most ``max_len`` ids, by the sidecar's text rules.

    rules["special_tokens"] "cls_prefix": our models, ``encode_classifier_texts``.
    "tokenizer": the tokenizer's post-processor adds [CLS]/[SEP] (and the type ids), and
    truncation is its own (``longest_first`` over a pair, on rules["truncation"]'s side,
    keeping the special tokens), as transformers' ``tokenizer(a, b, truncation=True)``; with
    "head_tail" (a ``train.hf_finetune`` model) the encoded row is cut head + tail as in its
    training. pairs[i] is text i's second text (sentence pairs: cross-encoders, NLI).
    """
    cleaned = [clean_text(t, rules["cleaning"]) for t in texts]
    if rules["special_tokens"] == "cls_prefix" or rules["truncation"] == "head_tail":
        if pairs is not None:
            raise ToolkitError("this model reads single texts, not sentence pairs (its sidecar "
                               f"text rules are {rules})")
        if rules["special_tokens"] == "cls_prefix":
            rows = encode_classifier_texts(tokenizer, cleaned, max_len, cls_id, clean=False)
        else:
            rows = [truncate_head_tail(e.ids, max_len) for e in tokenizer.encode_batch(cleaned)]
        return rows, [[0] * len(r) for r in rows]
    inputs = cleaned if pairs is None else \
        list(zip(cleaned, [clean_text(t, rules["cleaning"]) for t in pairs]))
    saved = tokenizer.truncation
    tokenizer.enable_truncation(max_len, strategy="longest_first",
                                direction=rules["truncation"])
    try:
        encoded = tokenizer.encode_batch(inputs, add_special_tokens=True)
    except Exception as exc:  # the Rust bindings raise plain Exception (e.g. a pair too long)
        raise ToolkitError(f"the tokenizer cannot encode these texts "
                           f"({str(exc).splitlines()[0]})") from None
    finally:
        if saved is None:
            tokenizer.no_truncation()
        else:
            tokenizer.enable_truncation(**saved)
    return [e.ids for e in encoded], [e.type_ids for e in encoded]


def story_token_ids(tokenizer, stories: Iterable[str], eos_id: int) -> List[int]:
    """All stories as one id stream, each followed by end-of-text."""
    stream: List[int] = []
    for enc in tokenizer.encode_batch(list(stories)):
        stream.extend(enc.ids)
        stream.append(eos_id)
    return stream
