"""Text classification with the IMDB classifier on either backend: texts in, labels out.

    python runtime/classify.py --model models/imdb.onnx "A wonderful film." "Dull and long."
    python runtime/classify.py --model engines/imdb.int8.plan --file reviews.txt --batch-size 8

Texts are cleaned and truncated exactly as in training (``runtime.tokenization``: ``<br />`` tags,
head+tail truncation to the model's length, ``<cls>`` first for a cls-pooling model), then run
in batches of at most ``--batch-size`` rows, each padded on the right to its longest row (never
below the profile's minimum shape, so a static-shape engine works too). The input and logits
buffers are allocated once at the largest batch and length, and reused for every batch.

Bad input is refused, never guessed at: a ``--file`` that is not UTF-8 (the error names the
file, the line and the byte offset of the first bad byte; convert it with ``iconv -t utf-8``),
and a text that is empty, or becomes empty once cleaned (whitespace, ``<br />`` tags only): a
row of padding would be classified like a review. ``--file`` skips blank lines.
"""
from __future__ import annotations

if __package__ in (None, ""):  # run by path: the repository root replaces runtime/ on sys.path
    import os  # (so no module in runtime/ can shadow a standard-library module)
    import sys

    _HERE = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
    sys.path.insert(0, os.path.dirname(_HERE))

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Sequence

import click
import numpy as np

from common.errors import ToolkitError, exit_on_toolkit_error
from runtime.buffers import BufferPlan
from runtime.tokenization import (
    clean_imdb_text,
    encode_classifier_texts,
    fill_right_padded,
    special_token_ids,
)


@dataclass
class Prediction:
    label: str
    probabilities: Dict[str, float]  # label -> softmax probability


def softmax(logits: np.ndarray) -> np.ndarray:
    """(rows, labels) -> (rows, labels) float64 probabilities."""
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    weights = np.exp(shifted)
    return weights / weights.sum(axis=1, keepdims=True)


class Classifier:
    """Tokenize, batch, run and read back; one arena sized at ``max_batch`` x the longest row.

    max_batch: rows per run (default: the profile's largest batch).
    """

    def __init__(self, session, tokenizer, info: Dict[str, Any], max_batch: int | None = None):
        if info.get("kind") != "classifier":
            raise ToolkitError(f"classification needs a classifier model; this one is "
                               f"{info.get('kind')!r}")
        self.session = session
        self.tokenizer = tokenizer
        self.labels = list(info["labels"])
        ids_min, _, ids_max = session.profiles[0]["input_ids"]
        self.min_batch, self.min_seq = ids_min
        profile_batch, profile_seq = ids_max
        self.max_batch = profile_batch if max_batch is None else int(max_batch)
        if not self.min_batch <= self.max_batch <= profile_batch:
            raise ToolkitError(f"batch size {max_batch}: the profile of {session.path.name} "
                               f"allows {self.min_batch}..{profile_batch}")
        # Training truncated to the model's max_seq_len; a shorter profile truncates further.
        self.max_len = min(int(info["max_seq_len"]), profile_seq)
        special = special_token_ids(info, tokenizer)
        self.pad_id = special["pad_id"] if special["pad_id"] is not None else 0
        pooling = (info.get("model_config") or {}).get("pooling", "mean")
        self.cls_id = special["cls_id"] if pooling == "cls" else None
        if pooling == "cls" and self.cls_id is None:
            raise ToolkitError(f"{session.path.name} pools on <cls> but has no cls_id")
        specs = {**session.inputs, **session.outputs}
        self.dtypes = {name: spec.dtype for name, spec in specs.items()}
        self.plan = BufferPlan()
        shape = (self.max_batch, self.max_len)
        self.plan.add("input_ids", shape, self.dtypes["input_ids"])  # (batch, seq) int32
        self.plan.add("attention_mask", shape, self.dtypes["attention_mask"])  # (batch, seq) int32
        self.plan.add("logits", (self.max_batch, len(self.labels)),
                      self.dtypes["logits"])  # (batch, labels) fp32
        self.arena = session.allocate(self.plan.nbytes)
        self.bindings = {name: self.plan.binding(self.arena, name) for name in self.plan.names}
        # Wall time of runs (upload, run, download; tokenizing excluded), kept as running sums so
        # a long-lived classifier (a server) does not grow.
        self.last_batch_ms = 0.0
        self.total_batch_ms = 0.0
        self.n_batches = 0

    def encode(self, texts: Sequence[str]) -> List[List[int]]:
        """Token rows of ``texts``; an empty text (after cleaning) is refused."""
        check_texts(texts)
        return encode_classifier_texts(self.tokenizer, texts, self.max_len, self.cls_id)

    def logits_for_rows(self, rows: Sequence[Sequence[int]]) -> np.ndarray:
        """Token id rows (each <= max_len) -> (len(rows), labels) float32 logits, in batches."""
        out = np.empty((len(rows), len(self.labels)), np.float32)  # (rows, labels)
        for start in range(0, len(rows), self.max_batch):
            chunk = rows[start:start + self.max_batch]
            out[start:start + len(chunk)] = self._run_batch(chunk)
        return out

    def classify(self, texts: Sequence[str]) -> List[Prediction]:
        if not texts:
            return []
        probabilities = softmax(self.logits_for_rows(self.encode(texts)))
        predictions = []
        for row in probabilities:
            predictions.append(Prediction(self.labels[int(np.argmax(row))],
                                          dict(zip(self.labels, map(float, row)))))
        return predictions

    def _run_batch(self, rows: Sequence[Sequence[int]]) -> np.ndarray:
        batch = max(len(rows), self.min_batch)  # a static-batch engine gets padding rows
        seq = max(max((len(r) for r in rows), default=1), self.min_seq, 1)
        b = self.bindings
        b["input_ids"].shape = b["attention_mask"].shape = (batch, seq)
        b["logits"].shape = (batch, len(self.labels))
        fill_right_padded(rows, b["input_ids"].view(self.dtypes["input_ids"]),
                          b["attention_mask"].view(self.dtypes["attention_mask"]), self.pad_id)
        start = time.perf_counter()
        b["input_ids"].upload(self.dtypes["input_ids"])
        b["attention_mask"].upload(self.dtypes["attention_mask"])
        self.session.run(b, 0)
        b["logits"].download(self.dtypes["logits"])
        self.session.synchronize()
        self.last_batch_ms = (time.perf_counter() - start) * 1e3
        self.total_batch_ms += self.last_batch_ms
        self.n_batches += 1
        return b["logits"].view(self.dtypes["logits"])[:len(rows)].astype(np.float32)

    def close(self) -> None:
        self.arena.close()


def open_classifier(model: str, batch_size: int | None = None, tokenizer: str | None = None):
    """(session, Classifier) for a classifier ``.onnx`` or engine; close the session after."""
    from runtime.session import open_session
    from runtime.tokenization import load_model_tokenizer, model_info

    info = model_info(model)
    tok = load_model_tokenizer(model, info, tokenizer)
    session = open_session(model)
    try:
        return session, Classifier(session, tok, info, batch_size)
    except ToolkitError:
        session.close()
        raise


def check_texts(texts: Sequence[str]) -> None:
    """Refuse a text with nothing to classify: empty, whitespace or ``<br />`` tags only."""
    for index, text in enumerate(texts):
        if not clean_imdb_text(text):
            raise ToolkitError(f"text {index + 1} ({text[:30]!r}) is empty once cleaned: "
                               "nothing to classify (give a review with words in it)")


def read_text_file(path: str) -> List[str]:
    """One text per non-blank line of a UTF-8 file (a UTF-8 byte-order mark is allowed)."""
    p = Path(path)
    if not p.is_file():
        raise ToolkitError(f"--file {p}: not found")
    data = p.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        offset = exc.start + (3 if data.startswith(b"\xef\xbb\xbf") else 0)
        line = data.count(b"\n", 0, offset) + 1
        raise ToolkitError(
            f"--file {p}: byte {offset} (line {line}, 0x{data[offset]:02x}) is not UTF-8; "
            f"convert the file, e.g. iconv -f latin1 -t utf-8 {p.name} > {p.stem}.utf8.txt"
        ) from None
    return [line.strip() for line in text.splitlines() if line.strip()]


@click.command()
@click.option("--model", required=True, type=click.Path(dir_okay=False),
              help="Classifier .onnx (ONNX Runtime) or .plan/.engine (TensorRT).")
@click.argument("texts", nargs=-1)
@click.option("--file", "text_file", type=click.Path(dir_okay=False), default=None,
              help="Texts to classify, one per line, UTF-8 (added after the arguments; blank "
                   "lines skipped; a byte that is not UTF-8 is an error naming its offset).")
@click.option("--batch-size", type=int, default=8, show_default=True,
              help="Rows per run, within the model's profile.")
@click.option("--tokenizer", type=click.Path(dir_okay=False), default=None,
              help="Tokenizer file, when the model's description names none.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per text.")
@exit_on_toolkit_error
def main(model: str, texts: Sequence[str], text_file: str | None, batch_size: int,
         tokenizer: str | None, as_json: bool) -> None:
    """Classify texts: a label and the probability of every label per text.

    An empty text (or one of whitespace or <br /> tags only) is refused.
    """
    texts = list(texts) + (read_text_file(text_file) if text_file else [])
    if not texts:
        where = f" (--file {text_file} has only blank lines)" if text_file else ""
        raise ToolkitError(f"no texts: give them as arguments or with --file{where}")
    check_texts(texts)
    session, classifier = open_classifier(model, batch_size, tokenizer)
    with session:
        predictions = classifier.classify(texts)
    for text, pred in zip(texts, predictions):
        if as_json:
            click.echo(json.dumps({"text": text, "label": pred.label,
                                   "probabilities": pred.probabilities}))
        else:
            click.echo(f"{pred.label}\t{pred.probabilities[pred.label]:.4f}\t{text[:70]}")
    click.echo(f"[{session.backend}: {len(texts)} texts in {classifier.n_batches} batches, "
               f"{classifier.total_batch_ms / classifier.n_batches:.2f} ms per batch]", err=True)


if __name__ == "__main__":
    main()
