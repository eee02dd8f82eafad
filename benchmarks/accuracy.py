"""Task accuracy of any backend, through the calibration gate's own evaluation.

The gate (``calibration.gate``) evaluates an ONNX Runtime session: it batches the split's rows,
calls ``session.run(None, feeds)`` and reads outputs by ``session.get_outputs()`` names. Here
any backend is presented through those two methods (``GateAdapter``: a runtime ``Session``'s
``run_simple``, or the PyTorch model's forward on the host), so IMDB accuracy and TinyStories
loss come from exactly the gate's code, for every row of the suite. Added here: bits per byte
for the decoder (the loss scaled by the evaluated windows' tokens per UTF-8 byte, as
``train.evaluate`` scales it by the stream's).

Heads (the sidecar's ``head``): a single-label head's accuracy is its top logit's; a multi-label
head's is its top sigmoid's (the same label: sigmoid is monotone) against the split's one label;
a regression head (num_labels 1) has no accuracy on class labels and is refused.

The evaluation split is tokenized by ``calibration.gate.load_eval_data``, which reads the text
through ``train.data`` (pure Python, no torch). A device without the data can read the same
rows from an ``.eval.npz`` written on the host (``save_eval_set`` / ``load_eval_set``).
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Dict, List, Mapping

import numpy as np

from common.errors import ToolkitError

RunFn = Callable[[Mapping[str, np.ndarray]], Dict[str, np.ndarray]]


class GateAdapter:
    """The two methods of ``onnxruntime.InferenceSession`` that the gate calls."""

    def __init__(self, run_fn: RunFn, output_names: List[str]):
        self._run_fn = run_fn
        self._outputs = [SimpleNamespace(name=n) for n in output_names]

    def get_outputs(self):
        return self._outputs

    def run(self, names, feeds):
        out = self._run_fn(feeds)
        return [out[o.name] for o in self._outputs] if names is None else [out[n] for n in names]


def session_adapter(session) -> GateAdapter:
    """A runtime ``Session`` (ONNX Runtime or TensorRT) as the gate sees a session."""
    return GateAdapter(session.run_simple, list(session.outputs))


def load_eval(onnx_path, data_source: str, split: str | None = None,
              max_samples: int | None = None):
    """The gate's ``EvalData`` for this model: a fixed random subset of ``max_samples`` reviews
    or the first ``max_samples`` windows of the stories (None: the whole split)."""
    from calibration import gate
    from common.artifacts import load_onnx_sidecar

    sidecar = load_onnx_sidecar(onnx_path)  # the gate refuses a regression head before reading
    return gate.load_eval_data(onnx_path, sidecar, data_source, split, max_samples)


def fit_batch(data, max_batch: int):
    """``data`` with its batch size capped at what the backend's profile takes."""
    return dataclasses.replace(data, batch_size=max(1, min(data.batch_size, max_batch)))


def evaluate(adapter: GateAdapter, data, sidecar: Dict[str, Any],
             tokenizer_file: str | Path | None = None) -> Dict[str, Any]:
    """Accuracy (classifier) or loss, perplexity and bits/byte (decoder) of one backend."""
    from calibration import gate
    from common.artifacts import check_class_head

    if data.kind == "classifier":
        check_class_head(sidecar)
        logits = gate.classifier_logits(adapter, data)
        metrics = gate.classification_metrics(logits["logits"], data.labels, data.label_names)
        return {"metric": "accuracy", "accuracy": metrics["accuracy"],
                "per_class": metrics["per_class"], "samples": len(data.rows),
                "split": data.split, "nonfinite_outputs": logits["nonfinite_outputs"]}
    result = gate.decoder_loss(adapter, data, sidecar)
    out = {"metric": "loss", "loss": result["loss"], "perplexity": result["perplexity"],
           "tokens": result["tokens"], "samples": len(data.rows), "split": data.split,
           "nonfinite_outputs": result["nonfinite_outputs"]}
    if tokenizer_file is not None:
        per_byte = tokens_per_byte(data, tokenizer_file)
        out["bits_per_byte"] = result["loss"] / math.log(2) * per_byte
    return out


def tokens_per_byte(data, tokenizer_file: str | Path) -> float:
    """Target tokens per UTF-8 byte of their decoded text, over the evaluated windows."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_file))
    targets = [row[1:] for row in data.rows]
    n_bytes = sum(len(text.encode("utf-8")) for text in tok.decode_batch(targets))
    n_tokens = sum(len(t) for t in targets)
    if n_bytes == 0:
        raise ToolkitError("the evaluation windows decode to no text: cannot give bits/byte")
    return n_tokens / n_bytes


def headline(accuracy: Dict[str, Any] | None) -> str:
    """The one figure of the Markdown table: 88.19% or 'loss 2.175, 0.794 bits/byte'."""
    if not accuracy:
        return "-"
    if accuracy["metric"] == "accuracy":
        return f"{100 * accuracy['accuracy']:.2f}%"
    text = f"loss {accuracy['loss']:.3f}"
    if accuracy.get("bits_per_byte") is not None:
        text += f", {accuracy['bits_per_byte']:.3f} bits/byte"
    return text


# --- a tokenized split for devices without the data ---------------------------------------
def save_eval_set(data, path: str | Path) -> Path:
    """The rows, labels and settings of ``data`` in one ``.npz`` (atomic)."""
    from common.fileio import atomic_path

    lengths = np.asarray([len(r) for r in data.rows], np.int64)  # (rows,)
    flat = np.asarray([t for r in data.rows for t in r], np.int32)  # (sum of lengths,)
    meta = {k: v for k, v in dataclasses.asdict(data).items() if k not in ("rows",)}
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, tokens=flat, lengths=lengths, meta=np.asarray(json.dumps(meta)))
    return Path(path)


def load_eval_set(path: str | Path):
    from calibration.gate import EvalData

    path = Path(path)
    if not path.is_file():
        raise ToolkitError(f"evaluation set not found: {path}")
    try:
        with np.load(path) as z:
            flat, lengths, meta = z["tokens"], z["lengths"], json.loads(str(z["meta"]))
    except (OSError, ValueError, KeyError) as exc:
        raise ToolkitError(f"{path} is not an evaluation set written by "
                           f"benchmarks.accuracy.save_eval_set ({exc})") from None
    ends = np.cumsum(lengths)
    rows = [flat[e - n:e].tolist() for e, n in zip(ends, lengths)]
    return EvalData(rows=rows, **meta)
