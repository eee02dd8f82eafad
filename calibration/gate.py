"""The INT8 accuracy gate: FP32 and Q/DQ graphs side by side on the evaluation split.

    python -m calibration.gate --fp32 models/imdb.onnx --int8 models/imdb.qdq.onnx --data DIR
        --split test --report reports/imdb.int8.json [--max-drop 0.5] [--max-samples N] [--fp16]

Both graphs run in ONNX Runtime on the CPU over the same inputs:
- classifier: accuracy, per-class precision/recall, prediction agreement and the N samples
  with the largest |logit difference| (with their index in the split);
- decoder: next-token loss and perplexity on non-overlapping windows of the validation
  stories, prefill only (past = 0), from the ``logits`` output.

``--max-drop`` is in accuracy POINTS for the classifier (0.5 = 86.0% -> 85.5% passes) and in
PERCENT OF THE FP32 LOSS for the decoder (0.5 = loss may grow by 0.5%, e.g. 2.000 -> 2.010).
The report is written (atomically) either way; a larger drop then exits non-zero.

Host-only (reads text through ``train.data``); never torch.
"""
from __future__ import annotations

import math
import random
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Sequence

if __package__ in (None, ""):  # run as a script: python calibration/gate.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import click
import numpy as np

from calibration import fp16 as fp16_estimate
from calibration.dataset import encode_reviews, token_stream
from calibration.feature_data import is_feature_model
from common.artifacts import (
    axis_range,
    check_class_head,
    check_single_text_inputs,
    load_onnx_sidecar,
    text_rules,
    tokenizer_path,
)
from common.errors import ToolkitError, exit_on_toolkit_error
from common.fileio import atomic_write_json, sha256_file

DEFAULT_SPLIT = {"classifier": "test", "decoder": "valid"}
DROP_UNIT = {"classifier": "accuracy points", "decoder": "percent of FP32 loss"}
TOP_DIFFERENCES = 10


@dataclass
class EvalData:
    """Tokenized evaluation inputs shared by every graph under test."""

    kind: str
    split: str
    rows: List[List[int]]  # classifier: one token list per sample; decoder: windows of seq+1
    labels: List[int]  # classifier only
    indices: List[int]  # each row's index in the split (classifier) or window start (decoder)
    label_names: List[str]
    pad_id: int
    batch_size: int
    feature_dim: int = 0  # > 0: rows are (steps, F) float32 feature windows, not token lists


def open_session(onnx_path: str | Path):
    """An ONNX Runtime CPU session with one-line errors for missing or unreadable files."""
    import onnxruntime as ort
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

    path = Path(onnx_path)
    if not path.is_file():
        raise ToolkitError(f"ONNX file not found: {path}")
    try:
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except (ort_errors.InvalidProtobuf, ort_errors.InvalidGraph, ort_errors.Fail,
            ort_errors.NotImplemented, ort_errors.NoSuchFile) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ToolkitError(f"{path} cannot be loaded by ONNX Runtime ({first})") from None


def load_eval_data(onnx_path: str | Path, sidecar: Dict[str, Any], source: str,
                   split: str | None, max_samples: int | None,
                   batch_size: int = 16) -> EvalData:
    """Tokenize the evaluation split as training does. ``max_samples``: a fixed random subset
    of the reviews (classifier), the first windows of the stories (decoder)."""
    from train import data
    from train.tokenizer import load_tokenizer

    kind = sidecar["kind"]
    if is_feature_model(sidecar):
        if split is not None:
            raise ToolkitError(f"--split {split!r}: a feature model is evaluated on the --data "
                               "file itself (give the labelled test .npz)")
        return load_feature_eval_data(sidecar, source, max_samples, batch_size)
    if kind == "classifier":  # refused before the split is read and tokenized
        check_class_head(sidecar)
        check_single_text_inputs(sidecar, f"{onnx_path} on the IMDB reviews")
    split = split or DEFAULT_SPLIT[kind]
    splits = data.imdb_splits(source) if kind == "classifier" else data.tinystories_splits(source)
    if split not in splits:
        raise ToolkitError(f"--split {split!r}: the {kind} data has splits {sorted(splits)}")
    tok = load_tokenizer(tokenizer_path(onnx_path, sidecar))
    special = sidecar["special_tokens"]
    pad_id = special["pad_id"] if special.get("pad_id") is not None else 0
    batch_size = min(batch_size, axis_range(sidecar, "batch")[1])
    if kind == "classifier":
        texts, labels = splits[split]
        indices = _subset(len(texts), max_samples)
        max_len = min(sidecar["max_seq_len"], axis_range(sidecar, "seq")[1])
        prepend_cls = sidecar["model_config"].get("pooling") == "cls"
        rows = encode_reviews(tok, [texts[i] for i in indices], max_len, prepend_cls,
                              text_rules(sidecar))
        return EvalData(kind, split, rows, [labels[i] for i in indices], indices,
                        list(sidecar["labels"]), pad_id, batch_size)
    starts, rows = _story_windows(tok, splits[split], sidecar, max_samples)
    return EvalData(kind, split, rows, [], starts, [], pad_id, batch_size)


def load_feature_eval_data(sidecar: Dict[str, Any], source: str, max_samples: int | None,
                           batch_size: int = 16) -> EvalData:
    """The labelled feature windows of ``source`` (the evaluation split's .npz)."""
    from calibration.feature_data import read_feature_file

    labels = list(sidecar["labels"])
    windows = read_feature_file(source, int(sidecar["feature_dim"]), labels, need_labels=True,
                                max_seq=axis_range(sidecar, "seq")[1])
    indices = _subset(len(windows), max_samples)
    return EvalData("classifier", str(source), windows.rows(indices),
                    [int(windows.labels[i]) for i in indices], indices, labels, 0,
                    min(batch_size, axis_range(sidecar, "batch")[1]), windows.feature_dim)


def _story_windows(tok, stories: Sequence[str], sidecar: Dict[str, Any],
                   max_samples: int | None):
    """Non-overlapping windows of seq + 1 tokens (inputs and shifted targets), seq the longest
    prefill the profile allows."""
    seq = min(sidecar["max_seq_len"], axis_range(sidecar, "new")[1],
              axis_range(sidecar, "total")[1])
    stream = token_stream(tok, stories, sidecar["special_tokens"]["eos_id"])  # (n_tokens,) int64
    starts = list(range(0, len(stream) - seq, seq))[:max_samples]
    if not starts:
        raise ToolkitError(f"the stories hold {len(stream)} tokens: fewer than one evaluation "
                           f"window of {seq + 1}")
    return starts, [stream[s:s + seq + 1].tolist() for s in starts]


def _subset(n: int, max_samples: int | None) -> List[int]:
    if max_samples is None or max_samples >= n:
        return list(range(n))
    return sorted(random.Random(0).sample(range(n), max_samples))


def classifier_logits(session, data: EvalData) -> Dict[str, Any]:
    """Logits of every row in the original order; rows batched by length, right-padded."""
    logits = None
    nonfinite: Dict[str, int] = {}
    order = sorted(range(len(data.rows)), key=lambda i: len(data.rows[i]))
    for start in range(0, len(order), data.batch_size):
        idx = order[start:start + data.batch_size]
        longest = max(len(data.rows[i]) for i in idx)
        out = session.run(None, _padded_feed(data, idx, longest))
        outputs = dict(zip([o.name for o in session.get_outputs()], out))
        _add_counts(nonfinite, fp16_estimate.nonfinite_counts(outputs))
        batch_logits = outputs["logits"]  # (batch, labels) fp32
        if logits is None:
            logits = np.zeros((len(data.rows), batch_logits.shape[1]), np.float32)  # (N, labels)
        logits[idx] = batch_logits
    return {"logits": logits, "nonfinite_outputs": nonfinite}


def _padded_feed(data: EvalData, idx: Sequence[int], longest: int) -> Dict[str, np.ndarray]:
    """Rows ``idx`` right-padded to ``longest`` as the runtime pads them."""
    if data.feature_dim:
        from calibration.feature_data import pad_rows

        features, mask = pad_rows([data.rows[i] for i in idx], longest, data.feature_dim)
        return {"features": features, "attention_mask": mask}  # (batch, seq, F), (batch, seq)
    input_ids = np.full((len(idx), longest), data.pad_id, np.int32)  # (batch, seq)
    attention_mask = np.zeros((len(idx), longest), np.int32)  # (batch, seq) 1 = token
    for r, i in enumerate(idx):
        input_ids[r, :len(data.rows[i])] = data.rows[i]
        attention_mask[r, :len(data.rows[i])] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def decoder_loss(session, data: EvalData, sidecar: Dict[str, Any]) -> Dict[str, Any]:
    """Mean next-token loss over the windows, prefill from an empty past."""
    kv_dim = sidecar["kv_cache"]["kv_dim"]
    past_names = [t["name"] for t in sidecar["inputs"] if t["name"].startswith("past_")]
    total_nll, total_tokens = 0.0, 0
    nonfinite: Dict[str, int] = {}
    top1: List[np.ndarray] = []
    for start in range(0, len(data.rows), data.batch_size):
        windows = np.asarray(data.rows[start:start + data.batch_size], np.int64)  # (batch, seq+1)
        batch, seq = windows.shape[0], windows.shape[1] - 1
        feed = {
            "input_ids": windows[:, :-1].astype(np.int32),  # (batch, seq)
            "position_ids": np.tile(np.arange(seq, dtype=np.int32), (batch, 1)),  # (batch, seq)
            "attention_mask": np.ones((batch, seq), np.int32),  # (batch, total = seq)
        }
        feed.update({n: np.zeros((0, batch, kv_dim), np.float32) for n in past_names})  # empty
        out = session.run(None, feed)
        outputs = dict(zip([o.name for o in session.get_outputs()], out))
        _add_counts(nonfinite, fp16_estimate.nonfinite_counts(outputs))
        logits = outputs["logits"]  # (batch, seq, vocab) fp32
        targets = windows[:, 1:]  # (batch, seq)
        target_logits = np.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
        nll = _logsumexp(logits) - target_logits  # (batch, seq): -log p(target)
        total_nll += float(nll.sum(dtype=np.float64))
        total_tokens += targets.size
        top1.append(logits.argmax(axis=-1).ravel())
    loss = total_nll / max(total_tokens, 1)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": total_tokens,
            "nonfinite_outputs": nonfinite, "top1": np.concatenate(top1)}


def _logsumexp(x: np.ndarray) -> np.ndarray:
    """Over the last axis, which is dropped: (batch, seq, vocab) -> (batch, seq)."""
    peak = x.max(axis=-1, keepdims=True)
    return (peak + np.log(np.exp(x - peak).sum(axis=-1, keepdims=True)))[..., 0]


def _add_counts(total: Dict[str, int], counts: Dict[str, int]) -> None:
    for name, n in counts.items():
        total[name] = total.get(name, 0) + n


def classification_metrics(logits: np.ndarray, labels: Sequence[int],
                           names: Sequence[str]) -> Dict[str, Any]:
    """Accuracy and per-class precision/recall (as ``train.evaluate.classification_report``)."""
    preds = logits.argmax(axis=1)
    labels_a = np.asarray(labels)
    per_class = {}
    for c, name in enumerate(names):
        tp = int(np.sum((preds == c) & (labels_a == c)))
        predicted, actual = int(np.sum(preds == c)), int(np.sum(labels_a == c))
        per_class[name] = {"precision": tp / predicted if predicted else 0.0,
                           "recall": tp / actual if actual else 0.0, "support": actual}
    return {"accuracy": float(np.mean(preds == labels_a)), "per_class": per_class}


def evaluate_model(onnx_path: str | Path, data: EvalData, sidecar: Dict[str, Any],
                   session=None) -> Dict[str, Any]:
    """Metrics of one graph; the raw logits / predictions stay under private keys."""
    session = session or open_session(onnx_path)
    info = {"onnx": str(onnx_path), "sha256": sha256_file(onnx_path)}
    if data.kind == "classifier":
        result = classifier_logits(session, data)
        metrics = classification_metrics(result["logits"], data.labels, data.label_names)
        return {**info, **metrics, "nonfinite_outputs": result["nonfinite_outputs"],
                "_logits": result["logits"]}
    result = decoder_loss(session, data, sidecar)
    top1 = result.pop("top1")
    return {**info, **result, "_top1": top1}


def compare(fp32: Dict[str, Any], other: Dict[str, Any], data: EvalData) -> Dict[str, Any]:
    """The drop in the gate's unit, and where the two graphs disagree most."""
    if data.kind == "classifier":
        a, b = fp32["_logits"], other["_logits"]  # (N, labels) each
        diff = np.abs(a - b).max(axis=1)  # (N,)
        worst = np.argsort(-diff, kind="stable")[:TOP_DIFFERENCES]
        return {
            "drop": 100.0 * (fp32["accuracy"] - other["accuracy"]),
            "agreement": float(np.mean(a.argmax(1) == b.argmax(1))),
            "largest_logit_differences": [
                {"index": int(data.indices[i]), "abs_diff": float(diff[i]),
                 "label": int(data.labels[i]), "fp32": a[i].tolist(), "other": b[i].tolist()}
                for i in worst],
        }
    return {"drop": 100.0 * (other["loss"] - fp32["loss"]) / fp32["loss"],
            "top1_agreement": float(np.mean(fp32["_top1"] == other["_top1"]))}


def run_gate(fp32_path: str | Path, int8_path: str | Path, source: str, report_path: str | Path,
             split: str | None = None, max_drop: float = 0.5,
             max_samples: int | None = None, fp16: bool = False) -> Dict[str, Any]:
    """Evaluate, write the report, then raise ToolkitError if INT8 drops more than max_drop."""
    sidecar = load_onnx_sidecar(fp32_path)
    int8_sidecar = load_onnx_sidecar(int8_path, kind=sidecar["kind"])
    source_sha = (int8_sidecar.get("quantization") or {}).get("source_onnx_sha256")
    if source_sha is not None and source_sha != sha256_file(fp32_path):
        raise ToolkitError(f"{int8_path} was quantized from another graph than {fp32_path} "
                           "(source_onnx_sha256 differs): compare it with its own FP32 model")
    int8_session = open_session(int8_path)  # fail on an unreadable file before the slow part
    data = load_eval_data(fp32_path, sidecar, source, split, max_samples)
    fp32 = evaluate_model(fp32_path, data, sidecar)
    int8 = evaluate_model(int8_path, data, sidecar, session=int8_session)
    result = compare(fp32, int8, data)
    report = {
        "kind": data.kind, "source": source, "split": data.split, "samples": len(data.rows),
        "fp32": _public(fp32),
        "int8": {**_public(int8), "quantization": int8_sidecar.get("quantization")},
        "int8_vs_fp32": {k: v for k, v in result.items() if k != "drop"},
        "drop": result["drop"], "max_drop": max_drop, "drop_unit": DROP_UNIT[data.kind],
        "passed": result["drop"] <= max_drop,
    }
    if fp16:
        report["fp16"] = fp16_report(fp32_path, data, sidecar, fp32)
    atomic_write_json(report_path, report)
    if not report["passed"]:
        raise ToolkitError(f"INT8 fails the gate: {_figures(fp32, int8, data.kind)}, a drop of "
                           f"{result['drop']:.3f} {DROP_UNIT[data.kind]} > --max-drop "
                           f"{max_drop:g} (report: {report_path})")
    return report


def fp16_report(fp32_path, data: EvalData, sidecar, fp32: Dict[str, Any]) -> Dict[str, Any]:
    """Evaluate a temporary FP16 copy (keep_io_types) like the others; note overflows."""
    out = {"onnx": f"temporary FP16 copy of {fp32_path}",
           "constants_beyond_fp16": fp16_estimate.out_of_range_constants(fp32_path)}
    with tempfile.TemporaryDirectory(prefix="fp16-") as tmp:
        fp16_path = fp16_estimate.convert_to_fp16(fp32_path, Path(tmp) / "model.fp16.onnx")
        session, error = fp16_estimate.try_open_on_cpu(fp16_path)
        if error:
            click.echo(f"FP16 estimate: {error}", err=True)
            return {**out, "runs_on_cpu": False, "error": error}
        metrics = evaluate_model(fp16_path, data, sidecar, session=session)
    metrics.update(onnx=out["onnx"])
    metrics.pop("sha256")  # of a temporary file
    return {**out, "runs_on_cpu": True, **_public(metrics), "vs_fp32": compare(fp32, metrics, data)}


def _public(metrics: Dict[str, Any]) -> Dict[str, Any]:
    return {k: v for k, v in metrics.items() if not k.startswith("_")}


def _figures(fp32: Dict[str, Any], int8: Dict[str, Any], kind: str) -> str:
    if kind == "classifier":
        return f"accuracy FP32 {100 * fp32['accuracy']:.2f}% vs INT8 {100 * int8['accuracy']:.2f}%"
    return f"loss FP32 {fp32['loss']:.4f} vs INT8 {int8['loss']:.4f}"


@click.command(context_settings={"show_default": True})
@click.option("--fp32", "fp32_path", required=True, type=click.Path(path_type=Path),
              help="FP32 model exported by export/")
@click.option("--int8", "int8_path", required=True, type=click.Path(path_type=Path),
              help="Q/DQ model from calibration.qdq")
@click.option("--data", "data_source", default=None,
              help="sample | hub | DIR (default: $DATA_DIR, $DATA, hub); a feature model: "
                   "the labelled evaluation .npz")
@click.option("--split", default=None, help="evaluation split [default: test / valid]")
@click.option("--report", "report_path", required=True, type=click.Path(path_type=Path),
              help="JSON report to write, e.g. reports/imdb.int8.json")
@click.option("--max-drop", type=float, default=0.5,
              help="allowed INT8 loss: accuracy points (classifier) or % of FP32 loss (decoder)")
@click.option("--max-samples", type=int, default=None,
              help="evaluate a fixed random subset of this many samples / windows")
@click.option("--fp16", is_flag=True, help="also estimate an FP16 copy (written beside the report)")
@exit_on_toolkit_error
def main(fp32_path, int8_path, data_source, split, report_path, max_drop, max_samples, fp16):
    """Compare INT8 against FP32 on the evaluation split; exit non-zero past --max-drop."""
    from train.data import describe_source, resolve_data_source

    if max_samples is not None and max_samples < 1:
        raise ToolkitError(f"--max-samples {max_samples}: expected at least 1")
    if is_feature_model(load_onnx_sidecar(fp32_path)):
        if not data_source:
            raise ToolkitError(f"--data: {fp32_path} takes features; give a labelled .npz")
        source = data_source  # the labelled evaluation file itself
    else:
        source = resolve_data_source(data_source)
        click.echo(describe_source(source))
    report = run_gate(fp32_path, int8_path, source, report_path, split, max_drop,
                      max_samples, fp16)
    click.echo(f"{_figures(report['fp32'], report['int8'], report['kind'])}: drop "
               f"{report['drop']:.3f} {report['drop_unit']} <= {max_drop:g}; wrote {report_path}")


if __name__ == "__main__":
    main()
