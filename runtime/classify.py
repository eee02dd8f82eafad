"""Text classification with the IMDB classifier on either backend: texts in, labels out.

    python runtime/classify.py --model models/imdb.onnx "A wonderful film." "Dull and long."
    python runtime/classify.py --model engines/imdb.int8.plan --file reviews.txt --batch-size 8

    cat reviews.txt | python runtime/classify.py --model models/imdb.onnx --file -
    python runtime/classify.py --model models/nli.onnx --pairs "A man eats." "Someone eats."

Texts are made into ids by the model's sidecar ``text`` rules (``common.text.encode_for_model``):
our IMDB models as in training (``<br />`` tags and names cleaned, head+tail truncation, ``<cls>``
first for a cls-pooling model); a Hugging Face classifier exactly as its tokenizer does (no
cleaning, its truncation side, its [CLS]/[SEP] and token type ids). ``--pairs`` reads the texts
as sentence pairs (arguments two by two; ``--file`` lines ``FIRST<TAB>SECOND``) for
cross-encoders and NLI models, encoded as ``tokenizer(first, second)``. The sidecar's ``head``
says what the logits mean: single-label (softmax, one label), multi-label (sigmoid per label,
every label over the threshold, all labels reported) or regression (the raw score). Then run
in batches of at most ``--batch-size`` rows, each padded on the right to its longest row (never
below the profile's minimum shape, so a static-shape engine works too). The input and logits
buffers are allocated once at the largest batch and length, and reused for every batch.

Bad input is refused, never guessed at: a ``--file`` that is not UTF-8 (the error names the
file, the line and the byte offset of the first bad byte; convert it with ``iconv -t utf-8``),
and a text that is empty, or becomes empty once cleaned (whitespace, ``<br />`` tags only): a
row of padding would be classified like a review. ``--file`` skips blank lines; ``--file -``
reads standard input.
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
from typing import Any, Dict, List, Sequence, Tuple

import click
import numpy as np

from common.artifacts import MULTI_LABEL as MULTI
from common.artifacts import REGRESSION
from common.errors import ToolkitError, exit_on_toolkit_error
from runtime.buffers import BufferPlan
from runtime.tokenization import (
    clean_text,
    encode_for_model,
    fill_right_padded,
    special_token_ids,
)


@dataclass
class Prediction:
    label: str  # single-label: the top label; multi-label: those over the threshold, ","-joined
    probabilities: Dict[str, float]  # label -> softmax (single) / sigmoid (multi) probability
    labels: List[str] | None = None  # multi-label: every label over the threshold
    score: float | None = None  # regression: the raw output


def softmax(logits: np.ndarray) -> np.ndarray:
    """(rows, labels) -> (rows, labels) float64 probabilities."""
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    weights = np.exp(shifted)
    return weights / weights.sum(axis=1, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """(rows, labels) -> (rows, labels) float64, each label on its own (multi-label heads)."""
    x = logits.astype(np.float64)
    return np.exp(-np.logaddexp(0.0, -x))  # 1 / (1 + e^-x) without overflow


def predictions(logits: np.ndarray, labels: Sequence[str], head: Dict[str, Any]
                ) -> List[Prediction]:
    """(rows, labels) logits -> one Prediction per row, by the sidecar's head rules."""
    problem = head["problem_type"]
    if problem == REGRESSION:
        return [Prediction(labels[0], {}, score=float(row[0])) for row in logits]
    out = []
    if problem == MULTI:
        for row in sigmoid(logits):
            chosen = [lab for lab, p in zip(labels, row) if p > head["threshold"]]
            out.append(Prediction(",".join(chosen), dict(zip(labels, map(float, row))), chosen))
        return out
    for row in softmax(logits):
        out.append(Prediction(labels[int(np.argmax(row))], dict(zip(labels, map(float, row)))))
    return out


class Classifier:
    """Tokenize, batch, run and read back; one arena sized at ``max_batch`` x the longest row.

    max_batch: rows per run (default: the profile's largest batch).
    """

    def __init__(self, session, tokenizer, info: Dict[str, Any], max_batch: int | None = None):
        if info.get("kind") != "classifier":
            raise ToolkitError(f"classification needs a classifier model; this one is "
                               f"{info.get('kind')!r}")
        from common.artifacts import head_rules, text_rules

        self.session = session
        self.tokenizer = tokenizer
        self.labels = list(info["labels"])
        self.rules = text_rules(info)  # cleaning, truncation, special tokens
        self.head = head_rules(info)  # problem_type, threshold
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
        cls_prefix = pooling == "cls" and self.rules["special_tokens"] == "cls_prefix"
        self.cls_id = special["cls_id"] if cls_prefix else None
        if cls_prefix and self.cls_id is None:
            raise ToolkitError(f"{session.path.name} pools on <cls> but has no cls_id")
        specs = {**session.inputs, **session.outputs}
        self.dtypes = {name: spec.dtype for name, spec in specs.items()}
        self.plan = BufferPlan()
        shape = (self.max_batch, self.max_len)
        self.plan.add("input_ids", shape, self.dtypes["input_ids"])  # (batch, seq) int32
        self.plan.add("attention_mask", shape, self.dtypes["attention_mask"])  # (batch, seq) int32
        # Models that read sentence pairs (BERT-family config type_vocab_size > 1) take the
        # tokenizer's token type ids: 0 on the first text, 1 on the second.
        self.token_types = "token_type_ids" in session.inputs
        if self.token_types:
            self.plan.add("token_type_ids", shape,
                          self.dtypes["token_type_ids"])  # (batch, seq) int32
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
        return self.encode_with_types(texts)[0]

    def encode_with_types(self, texts: Sequence[str], pairs: Sequence[str] | None = None,
                          checked: bool = False) -> Tuple[List[List[int]], List[List[int]]]:
        """(id rows, token type rows) of ``texts`` (and their second texts ``pairs``).
        checked: the caller has already run ``check_texts`` on them."""
        if not checked:
            check_texts(list(texts) + list(pairs or []), self.rules["cleaning"])
        rows, types = encode_for_model(self.tokenizer, texts, self.max_len, self.rules,
                                       self.cls_id, pairs)
        # transformers feeds the second text's type ids (1 for BERT); a graph without the
        # input would read them as 0 and score another input. All-zero types (RoBERTa) pass.
        if not self.token_types and any(any(row) for row in types):
            raise ToolkitError(f"{self.session.path.name} has no token_type_ids input but its "
                               "tokenizer gives the second text type ids 1: re-export it with "
                               "python -m export.hf --sentence-pairs")
        return rows, types

    def logits_for_rows(self, rows: Sequence[Sequence[int]],
                        type_rows: Sequence[Sequence[int]] | None = None) -> np.ndarray:
        """Token id rows (each <= max_len) -> (len(rows), labels) float32 logits, in batches.
        type_rows: the token type ids of each row (default: all 0)."""
        out = np.empty((len(rows), len(self.labels)), np.float32)  # (rows, labels)
        for start in range(0, len(rows), self.max_batch):
            chunk = rows[start:start + self.max_batch]
            types = None if type_rows is None else type_rows[start:start + self.max_batch]
            out[start:start + len(chunk)] = self._run_batch(chunk, types)
        return out

    def classify(self, texts: Sequence[str], pairs: Sequence[str] | None = None,
                 checked: bool = False) -> List[Prediction]:
        """One Prediction per text (per pair when ``pairs`` gives each text's second text).
        checked: ``check_texts`` already ran on them."""
        if not texts:
            return []
        rows, types = self.encode_with_types(texts, pairs, checked)
        return predictions(self.logits_for_rows(rows, types), self.labels, self.head)

    def _run_batch(self, rows: Sequence[Sequence[int]],
                   type_rows: Sequence[Sequence[int]] | None = None) -> np.ndarray:
        batch = max(len(rows), self.min_batch)  # a static-batch engine gets padding rows
        seq = max(max((len(r) for r in rows), default=1), self.min_seq, 1)
        b = self.bindings
        inputs = ("input_ids", "attention_mask") + (("token_type_ids",) if self.token_types
                                                    else ())
        for name in inputs:
            b[name].shape = (batch, seq)
        b["logits"].shape = (batch, len(self.labels))
        fill_right_padded(rows, b["input_ids"].view(self.dtypes["input_ids"]),
                          b["attention_mask"].view(self.dtypes["attention_mask"]), self.pad_id)
        if self.token_types:
            types = b["token_type_ids"].view(self.dtypes["token_type_ids"])  # (batch, seq) int32
            types.fill(0)
            for r, row in enumerate(type_rows or ()):
                types[r, :len(row)] = row
        start = time.perf_counter()
        for name in inputs:
            b[name].upload(self.dtypes[name])
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
    refuse_feature_model(model, info)
    tok = load_model_tokenizer(model, info, tokenizer)
    session = open_session(model)
    try:
        return session, Classifier(session, tok, info, batch_size)
    except ToolkitError:
        session.close()
        raise


def refuse_feature_model(model: str, info: Dict[str, Any]) -> None:
    """Texts given to a continuous-feature classifier: say which option it takes (its sidecar
    names no tokenizer, and a --tokenizer would not give it its ``features`` input)."""
    from calibration.feature_data import is_feature_model

    if is_feature_model(info) or info.get("input_kind") == "features":
        raise ToolkitError(f"{model} takes features: use --features FILE")


def check_texts(texts: Sequence[str], cleaning: str = "imdb") -> None:
    """Refuse a text with nothing to classify: empty, whitespace (or, for a model trained on
    cleaned IMDB text, ``<br />`` tags) only."""
    for index, text in enumerate(texts):
        if not clean_text(text, cleaning).strip():
            raise ToolkitError(f"text {index + 1} ({text[:30]!r}) is empty once cleaned: "
                               "nothing to classify (give a text with words in it)")


def read_text_file(path: str) -> List[str]:
    """One text per non-blank line of a UTF-8 file (a UTF-8 byte-order mark is allowed);
    ``-`` reads standard input (as bytes, so a bad byte is found as in a file)."""
    if path == "-":
        import sys

        data, p = sys.stdin.buffer.read(), Path("<stdin>")
    else:
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


def split_pairs(texts: Sequence[str], from_file: int) -> Tuple[List[str], List[str]]:
    """``--pairs``: the argument texts two by two, then each file line ``FIRST<TAB>SECOND``.
    from_file: how many of ``texts`` (the last ones) are file lines."""
    args, lines = list(texts[:len(texts) - from_file]), texts[len(texts) - from_file:]
    if len(args) % 2:
        raise ToolkitError(f"--pairs: {len(args)} texts given as arguments; expected an even "
                           "number (first and second text of each pair)")
    firsts, seconds = args[0::2], args[1::2]
    for number, line in enumerate(lines, 1):
        parts = line.split("\t")
        if len(parts) != 2:
            raise ToolkitError(f"--pairs --file: non-blank line {number} has {len(parts) - 1} "
                               "tabs; expected FIRST<TAB>SECOND")
        firsts.append(parts[0].strip())
        seconds.append(parts[1].strip())
    return firsts, seconds


def format_prediction(pred: Prediction, text: str, head: Dict[str, Any]) -> str:
    """One line: ``label<TAB>probability<TAB>text`` (single-label), ``labels<TAB>every
    label=probability<TAB>text`` (multi-label), ``score<TAB>text`` (regression)."""
    if head["problem_type"] == REGRESSION:
        return f"{pred.score:.6g}\t{text[:70]}"
    if head["problem_type"] == MULTI:
        every = " ".join(f"{lab}={p:.4f}" for lab, p in pred.probabilities.items())
        return f"{pred.label or '(none)'}\t{every}\t{text[:70]}"
    return f"{pred.label}\t{pred.probabilities[pred.label]:.4f}\t{text[:70]}"


def prediction_json(pred: Prediction, text: str, pair: str | None) -> str:
    row: Dict[str, Any] = {"text": text}
    if pair is not None:
        row["text_pair"] = pair
    if pred.score is not None:
        row["score"] = pred.score
    else:
        row.update(label=pred.label, probabilities=pred.probabilities)
        if pred.labels is not None:
            row["labels"] = pred.labels
    return json.dumps(row)


@click.command()
@click.option("--model", required=True, type=click.Path(dir_okay=False),
              help="Classifier .onnx (ONNX Runtime) or .plan/.engine (TensorRT).")
@click.argument("texts", nargs=-1)
@click.option("--file", "text_file", type=click.Path(dir_okay=False, allow_dash=True),
              default=None,
              help="Texts to classify, one per line, UTF-8 (added after the arguments; blank "
                   "lines skipped; a byte that is not UTF-8 is an error naming its offset); "
                   "- reads standard input.")
@click.option("--pairs", is_flag=True,
              help="Sentence pairs (cross-encoders, NLI): the arguments two by two, --file "
                   "lines FIRST<TAB>SECOND; encoded as the tokenizer encodes (a, b).")
@click.option("--batch-size", type=int, default=8, show_default=True,
              help="Rows per run, within the model's profile.")
@click.option("--tokenizer", type=click.Path(dir_okay=False), default=None,
              help="Tokenizer file, when the model's description names none.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per text.")
@click.option("--features", "feature_file", type=click.Path(dir_okay=False), default=None,
              help="Feature classifier: windows from a .npz (features, lengths, labels) or "
                   ".npy (N, seq, F) file, instead of texts (runtime/features.py).")
@exit_on_toolkit_error
def main(model: str, texts: Sequence[str], text_file: str | None, pairs: bool,
         batch_size: int, tokenizer: str | None, as_json: bool,
         feature_file: str | None) -> None:
    """Classify texts: a label and the probability of every label per text (multi-label: the
    labels over the threshold and every label's probability; regression: the score).

    An empty text (or one of whitespace or, for our IMDB models, <br /> tags only) is refused.
    """
    from common.artifacts import head_rules, text_rules
    from runtime.tokenization import model_info

    if feature_file is not None:  # continuous features: runtime/features.py
        if texts or text_file or pairs:
            raise ToolkitError("--features classifies feature windows: give no texts with it")
        from runtime.features import classify_file

        *rows, summary = classify_file(model, feature_file, batch_size, as_json)
        click.echo("\n".join(rows))
        click.echo(summary, err=True)
        return
    lines = read_text_file(text_file) if text_file else []
    texts = list(texts) + lines
    if not texts:
        where = f" (--file {text_file} has only blank lines)" if text_file else ""
        raise ToolkitError(f"no texts: give them as arguments or with --file{where}")
    seconds = None
    if pairs:
        texts, seconds = split_pairs(texts, len(lines))
    info = model_info(model)  # checked before the (slow) session opens
    refuse_feature_model(model, info)
    check_texts(texts + (seconds or []), text_rules(info)["cleaning"])
    head = head_rules(info)
    session, classifier = open_classifier(model, batch_size, tokenizer)
    with session:
        predictions = classifier.classify(texts, seconds, checked=True)
    for i, (text, pred) in enumerate(zip(texts, predictions)):
        pair = None if seconds is None else seconds[i]
        if as_json:
            click.echo(prediction_json(pred, text, pair))
        else:
            shown = text if pair is None else f"{text} | {pair}"
            click.echo(format_prediction(pred, shown, head))
    click.echo(f"[{session.backend}: {len(texts)} texts in {classifier.n_batches} batches, "
               f"{classifier.total_batch_ms / classifier.n_batches:.2f} ms per batch]", err=True)


if __name__ == "__main__":
    main()
