"""Build a calibration set: real tokenized batches from the TRAIN split, saved as ``.calib.npz``.

    python -m calibration.dataset --onnx models/imdb.onnx --data sample
        --output calibration/imdb.calib.npz [--batches 16] [--batch-size 8]

The batches cover the ONNX profile: their sequence lengths run geometrically from a short one
to the profile's maximum, so calibration sees the activation ranges of short and long inputs.
Rows are padded the way the runtime pads them (classifier: right, with a mask; decoder prompts:
left, with position ids counted from the first real token) and tokenized as in training.

Host-side (reads the text data through ``train.data``, which is pure Python); never torch. The
tokenizing helpers here are shared with ``calibration.gate``.
"""
from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

if __package__ in (None, ""):  # run as a script: python calibration/dataset.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import click
import numpy as np

from calibration.feature_data import is_feature_model
from calibration.loader import CalibrationSet, position_ids_for, save_calibration_set
from common.artifacts import (
    axis_range,
    check_single_text_inputs,
    load_onnx_sidecar,
    text_rules,
    tokenizer_path,
)
from common.errors import ToolkitError, exit_on_toolkit_error
from common.text import encode_classifier_texts, encode_for_model, story_token_ids

SPLIT = "train"  # calibration never sees the evaluation split
SHORTEST = 8  # tokens: the short end of the length schedule, when the profile allows it
POOL_PER_ROW = 4  # candidate texts tokenized per calibration row, to find rows of each length


def encode_reviews(tok, texts: Sequence[str], max_len: int, prepend_cls: bool,
                   rules: Dict[str, str] | None = None) -> List[List[int]]:
    """Classifier inputs exactly as the runtime builds them: by the sidecar's text rules
    (``common.artifacts.text_rules``: an HF classifier gets no IMDB cleaning and its tokenizer's
    own special tokens); without rules, as our IMDB training does."""
    cls_id = tok.token_to_id("<cls>") if prepend_cls else None
    if rules is None:
        return encode_classifier_texts(tok, texts, max_len, cls_id)
    return encode_for_model(tok, texts, max_len, rules, cls_id)[0]


def token_stream(tok, stories: Sequence[str], eos_id: int) -> np.ndarray:
    """All stories as one stream, each followed by end-of-text.  # (n_tokens,) int64"""
    return np.asarray(story_token_ids(tok, stories, eos_id), dtype=np.int64)


def length_schedule(shortest: int, longest: int, n_batches: int) -> List[int]:
    """Geometric lengths from ``shortest`` to ``longest`` (both included), one per batch."""
    if n_batches == 1:
        return [longest]
    ratio = (longest / shortest) ** (1.0 / (n_batches - 1))
    lengths = [int(round(shortest * ratio ** i)) for i in range(n_batches)]
    lengths[-1] = longest  # rounding must not miss the profile's maximum
    return [min(max(n, shortest), longest) for n in lengths]


def load_texts(kind: str, source: str) -> List[str]:
    """The TRAIN split's texts: reviews for the classifier, stories for the decoder."""
    from train import data

    if kind == "classifier":
        texts, _labels = data.imdb_splits(source)[SPLIT]
        return texts
    return data.tinystories_splits(source)[SPLIT]


def classifier_batches(tok, texts: Sequence[str], lengths: Sequence[int], batch_size: int,
                       prepend_cls: bool, pad_id: int, rng: random.Random,
                       rules: Dict[str, str] | None = None) -> List[Dict]:
    """One batch per length: rows whose tokens fill that length where the data allows."""
    pool = rng.sample(list(texts), min(len(texts), len(lengths) * batch_size * POOL_PER_ROW))
    pool_lengths = [len(enc.ids) + int(prepend_cls) for enc in tok.encode_batch(pool)]
    unused = set(range(len(pool)))
    batches = []
    for seq in lengths:
        chosen = _closest_rows(pool_lengths, unused, seq, batch_size)
        unused -= set(chosen)
        rows = encode_reviews(tok, [pool[i] for i in chosen], seq, prepend_cls, rules)
        input_ids = np.full((len(rows), seq), pad_id, np.int32)  # (batch, seq), right-padded
        attention_mask = np.zeros((len(rows), seq), np.int32)  # (batch, seq) 1 = token
        for r, row in enumerate(rows):
            input_ids[r, :len(row)] = row
            attention_mask[r, :len(row)] = 1
        batches.append({"input_ids": input_ids, "attention_mask": attention_mask})
    return batches


def _closest_rows(lengths: Sequence[int], unused: set, seq: int, count: int) -> List[int]:
    """Rows at least ``seq`` long, shortest first (they fill the batch without padding); then
    the longest of the rest. Falls back to reusing rows when the pool runs dry."""
    candidates = sorted(unused or range(len(lengths)),
                        key=lambda i: (lengths[i] < seq, abs(lengths[i] - seq), i))
    return [candidates[i % len(candidates)] for i in range(count)]


def decoder_batches(tok, stories: Sequence[str], lengths: Sequence[int], batch_size: int,
                    eos_id: int, pad_id: int, rng: random.Random) -> List[Dict]:
    """Prompts that start where a story starts; per batch the first row fills the length and
    the others are shorter (left padding), as when the runtime batches prompts."""
    stream = token_stream(tok, stories, eos_id)  # (n_tokens,) int64
    story_starts = np.concatenate([[0], np.flatnonzero(stream == eos_id) + 1])  # (stories,)
    batches = []
    for seq in lengths:
        fits = story_starts[story_starts + seq <= len(stream)]
        if not len(fits):
            raise ToolkitError(f"the {SPLIT} stories hold {len(stream)} tokens: too few for one "
                               f"calibration prompt of {seq} tokens")
        input_ids = np.full((batch_size, seq), pad_id, np.int32)  # (batch, seq), left-padded
        attention_mask = np.zeros((batch_size, seq), np.int32)  # (batch, seq) 1 = token
        for r in range(batch_size):
            n = seq if r == 0 else rng.randint(max(1, seq // 2), seq)
            start = int(fits[rng.randrange(len(fits))])
            input_ids[r, seq - n:] = stream[start:start + n]
            attention_mask[r, seq - n:] = 1
        batches.append({"input_ids": input_ids, "position_ids": position_ids_for(attention_mask),
                        "attention_mask": attention_mask})
    return batches


def profile_lengths(sidecar: Dict[str, Any]) -> Tuple[int, int]:
    """(shortest, longest) prefill length the ONNX profile allows."""
    if sidecar["kind"] == "classifier":
        lo, hi = axis_range(sidecar, "seq")
    else:
        lo, hi = axis_range(sidecar, "new")
        hi = min(hi, axis_range(sidecar, "total")[1])  # prefill: total = new
    lo = max(lo, 1)
    return max(lo, min(SHORTEST, hi)), hi


def build_calibration_set(
    onnx_path: str | Path,
    source: str,
    output: str | Path,
    batches: int = 16,
    batch_size: int = 8,
    seed: int = 0,
) -> Path:
    """Tokenize TRAIN-split text for the graph at ``onnx_path`` and write ``output`` (.npz).
    A feature model: ``source`` is its train feature file (``build_feature_calibration_set``)."""
    from train.tokenizer import load_tokenizer

    sidecar = load_onnx_sidecar(onnx_path)
    if is_feature_model(sidecar):
        return build_feature_calibration_set(onnx_path, source, output, batches, batch_size, seed)
    kind = sidecar["kind"]
    check_single_text_inputs(sidecar, f"calibration of {onnx_path} on the IMDB reviews")
    b_lo, b_hi = axis_range(sidecar, "batch")
    if not b_lo <= batch_size <= b_hi:
        raise ToolkitError(f"--batch-size {batch_size} is outside the profile's batch range "
                           f"{b_lo}..{b_hi} ({onnx_path})")
    if batches < 1:
        raise ToolkitError(f"--batches {batches}: expected at least 1")
    tok = load_tokenizer(tokenizer_path(onnx_path, sidecar))
    special = sidecar["special_tokens"]
    pad_id = special["pad_id"] if special.get("pad_id") is not None else 0
    lengths = length_schedule(*profile_lengths(sidecar), batches)
    texts = load_texts(kind, source)
    rng = random.Random(seed)
    if kind == "classifier":
        prepend_cls = sidecar["model_config"].get("pooling") == "cls"
        token_batches = classifier_batches(tok, texts, lengths, batch_size, prepend_cls, pad_id,
                                           rng, text_rules(sidecar))
    else:
        token_batches = decoder_batches(tok, texts, lengths, batch_size, special["eos_id"],
                                        pad_id, rng)
    meta = {
        "kind": kind,
        "input_names": [t["name"] for t in sidecar["inputs"]],
        "source": source, "split": SPLIT, "seed": seed, "batch_size": batch_size,
        "lengths": lengths, "pad_id": pad_id,
        "onnx": Path(onnx_path).name, "onnx_sha256": sidecar["onnx_sha256"],
        "tokenizer_sha256": sidecar["tokenizer_sha256"],
        "profile": sidecar["dynamic_axes"],
    }
    if kind == "decoder":
        meta.update(kv_layers=sidecar["kv_cache"]["layers"], kv_dim=sidecar["kv_cache"]["kv_dim"])
    return save_calibration_set(output, token_batches, meta)


def build_feature_calibration_set(onnx_path: str | Path, data_file: str | Path,
                                  output: str | Path, batches: int = 16, batch_size: int = 8,
                                  seed: int = 0) -> Path:
    """Real feature windows of the TRAIN file ``data_file`` (.npz/.npy), cut to a geometric
    length schedule over the profile (a prefix of a real window is a real shorter input),
    right-padded under a mask as the runtime pads them; written as ``output`` (.npz)."""
    from calibration.feature_data import norm_digest, pad_rows, read_feature_file
    from common.fileio import sha256_file

    sidecar = load_onnx_sidecar(onnx_path)
    b_lo, b_hi = axis_range(sidecar, "batch")
    if not b_lo <= batch_size <= b_hi:
        raise ToolkitError(f"--batch-size {batch_size} is outside the profile's batch range "
                           f"{b_lo}..{b_hi} ({onnx_path})")
    if batches < 1:
        raise ToolkitError(f"--batches {batches}: expected at least 1")
    feature_dim = int(sidecar["feature_dim"])
    lo, hi = profile_lengths(sidecar)
    data = read_feature_file(data_file, feature_dim, sidecar.get("labels"), max_seq=hi)
    longest = min(hi, int(data.lengths.max()))
    lengths = length_schedule(min(lo, longest), longest, batches)
    rng = np.random.default_rng(seed)
    feature_batches = []
    for seq in lengths:
        # windows at least seq long first (their prefix fills the row), then the longest others
        order = rng.permutation(len(data))
        order = sorted(order, key=lambda i: data.lengths[i] < seq)[:batch_size]
        rows = [data.row(int(order[r % len(order)]))[:seq] for r in range(batch_size)]
        features, mask = pad_rows(rows, seq, feature_dim)  # (batch, seq, F), (batch, seq)
        feature_batches.append({"features": features, "attention_mask": mask})
    meta = {
        "kind": "feature_classifier", "feature_dim": feature_dim,
        "input_names": [t["name"] for t in sidecar["inputs"]],
        "source": str(data_file), "source_sha256": sha256_file(data_file), "split": SPLIT,
        "seed": seed, "batch_size": batch_size, "lengths": lengths,
        "onnx": Path(onnx_path).name, "onnx_sha256": sidecar["onnx_sha256"],
        "feature_norm_sha256": norm_digest(sidecar), "profile": sidecar["dynamic_axes"],
    }
    return save_calibration_set(output, feature_batches, meta)


@click.command(context_settings={"show_default": True})
@click.option("--onnx", "onnx_path", required=True, type=click.Path(path_type=Path),
              help="exported model (its sidecar and tokenizer lie beside it)")
@click.option("--data", "data_source", default=None,
              help="sample | hub | DIR (default: $DATA_DIR, $DATA, hub); the train split is used."
                   " A feature model: its TRAIN .npz/.npy file")
@click.option("--output", required=True, type=click.Path(path_type=Path),
              help="calibration set to write, e.g. calibration/imdb.calib.npz")
@click.option("--batches", type=int, default=16, help="number of batches (one length each)")
@click.option("--batch-size", type=int, default=8, help="rows per batch")
@click.option("--seed", type=int, default=0)
@exit_on_toolkit_error
def main(onnx_path: Path, data_source: str | None, output: Path, batches: int,
         batch_size: int, seed: int) -> None:
    """Write real tokenized calibration batches covering the ONNX profile's lengths."""
    from train.data import describe_source, resolve_data_source

    if is_feature_model(load_onnx_sidecar(onnx_path)):
        if not data_source:
            raise ToolkitError(f"--data: {onnx_path} takes features; give its train .npz/.npy")
        path = build_feature_calibration_set(onnx_path, data_source, output, batches,
                                             batch_size, seed)
        click.echo(f"wrote {path}: {batches} batches of {batch_size} feature windows from "
                   f"{data_source}, lengths {sorted({s[1] for s in CalibrationSet(path).shapes})}")
        return
    source = resolve_data_source(data_source)
    click.echo(describe_source(source))
    path = build_calibration_set(onnx_path, source, output, batches, batch_size, seed)
    calib = CalibrationSet(path)
    lengths = sorted({s[1] for s in calib.shapes})
    click.echo(f"wrote {path}: {len(calib)} batches of {batch_size}, lengths {lengths}")


if __name__ == "__main__":
    main()
