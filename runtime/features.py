"""Continuous-feature classification on either backend: feature windows in, labels out.

    python runtime/classify.py --model models/waves.onnx --features data/waves/test.npz
    python runtime/classify.py --model engines/waves.int8.plan --features window.npy --json

Input files (``calibration.feature_data``, the reader calibration uses too): a ``.npz`` with
``features`` (N, seq, F), optional ``lengths`` (N,) and ``labels`` (N,), or a ``.npy`` of
(N, seq, F) or one window (seq, F). Features are raw: the graph applies the training split's
``(x - mean) / std`` itself. Each file problem is one error line naming the file and field.

Windows run in batches of at most ``--batch-size``, each right-padded with zeros to its
longest window under an attention mask of 0s (never below the profile's minimum shape, so a
static-shape engine works too); the feature, mask and logits buffers are allocated once at
the largest batch and length and reused. With labels in the file, the accuracy is printed.

Device-side: numpy, no torch, Python 3.8.
"""
from __future__ import annotations

import json
import time
from typing import Any, Dict, List, Sequence

import numpy as np

from calibration.feature_data import FeatureWindows, is_feature_model, pad_rows, read_feature_file
from common.errors import ToolkitError
from runtime.buffers import BufferPlan
from runtime.classify import softmax  # one softmax for texts and features


class FeatureClassifier:
    """Batch, pad, run and read back feature windows; one arena at ``max_batch`` x the
    profile's longest window. max_batch: rows per run (default: the profile's largest)."""

    def __init__(self, session, info: Dict[str, Any], max_batch: int | None = None):
        if info.get("kind") != "classifier" or not is_feature_model(info):
            raise ToolkitError(f"{session.path.name} is not a feature classifier (kind "
                               f"{info.get('kind')!r}, feature_dim {info.get('feature_dim')}); "
                               "give texts instead of --features")
        self.session = session
        self.labels = list(info["labels"])
        self.feature_dim = int(info["feature_dim"])
        lo, _, hi = session.profiles[0]["features"]  # (batch, seq, F) each
        self.min_batch, self.min_seq = int(lo[0]), int(lo[1])
        profile_batch, profile_seq = int(hi[0]), int(hi[1])
        if int(hi[2]) != self.feature_dim:
            raise ToolkitError(f"{session.path.name}: the profile takes {hi[2]} features per "
                               f"step but its description says {self.feature_dim}")
        self.max_batch = profile_batch if max_batch is None else int(max_batch)
        if not self.min_batch <= self.max_batch <= profile_batch:
            raise ToolkitError(f"batch size {max_batch}: the profile of {session.path.name} "
                               f"allows {self.min_batch}..{profile_batch}")
        self.max_len = min(int(info["max_seq_len"]), profile_seq)
        specs = {**session.inputs, **session.outputs}
        self.dtypes = {name: spec.dtype for name, spec in specs.items()}
        self.plan = BufferPlan()
        self.plan.add("features", (self.max_batch, self.max_len, self.feature_dim),
                      self.dtypes["features"])  # (batch, seq, F) fp32
        self.plan.add("attention_mask", (self.max_batch, self.max_len),
                      self.dtypes["attention_mask"])  # (batch, seq) int32
        self.plan.add("logits", (self.max_batch, len(self.labels)),
                      self.dtypes["logits"])  # (batch, labels) fp32
        self.arena = session.allocate(self.plan.nbytes)
        self.bindings = {name: self.plan.binding(self.arena, name) for name in self.plan.names}
        self.total_batch_ms = 0.0
        self.n_batches = 0

    def read(self, path) -> FeatureWindows:
        """The windows of ``path``, checked against this model (F, longest window, labels)."""
        return read_feature_file(path, self.feature_dim, self.labels, max_seq=self.max_len)

    def logits_for_rows(self, rows: Sequence[np.ndarray]) -> np.ndarray:
        """Windows (each (steps <= max_len, F)) -> (len(rows), labels) float32, in batches."""
        out = np.empty((len(rows), len(self.labels)), np.float32)  # (rows, labels)
        for start in range(0, len(rows), self.max_batch):
            chunk = rows[start:start + self.max_batch]
            out[start:start + len(chunk)] = self._run_batch(chunk)
        return out

    def _run_batch(self, rows: Sequence[np.ndarray]) -> np.ndarray:
        batch = max(len(rows), self.min_batch)  # a static-batch engine gets padding rows
        seq = padded_length(rows, self.min_seq, self.max_len, self.session.path.name)
        b = self.bindings
        b["features"].shape = (batch, seq, self.feature_dim)
        b["attention_mask"].shape = (batch, seq)
        b["logits"].shape = (batch, len(self.labels))
        pad_rows(rows, seq, self.feature_dim, b["features"].view(self.dtypes["features"]),
                 b["attention_mask"].view(self.dtypes["attention_mask"]))
        start = time.perf_counter()
        b["features"].upload(self.dtypes["features"])
        b["attention_mask"].upload(self.dtypes["attention_mask"])
        self.session.run(b, 0)
        b["logits"].download(self.dtypes["logits"])
        self.session.synchronize()
        self.total_batch_ms += (time.perf_counter() - start) * 1e3
        self.n_batches += 1
        return b["logits"].view(self.dtypes["logits"])[:len(rows)].astype(np.float32)

    def close(self) -> None:
        self.arena.close()


def padded_length(rows: Sequence[np.ndarray], min_seq: int, max_seq: int, model: str) -> int:
    """The length a batch of windows is right-padded to: its longest window, never below the
    model's shortest (``min_seq``: a static-length engine has min = max), at most ``max_seq``."""
    seq = max(max(len(r) for r in rows), int(min_seq), 1)
    if seq > max_seq:
        raise ToolkitError(f"a window of {seq} steps: {model} takes at most {max_seq}")
    return seq


def open_feature_classifier(model: str, batch_size: int | None = None):
    """(session, FeatureClassifier) for a feature classifier ``.onnx`` or engine."""
    from runtime.session import open_session
    from runtime.tokenization import model_info

    info = model_info(model)
    if not is_feature_model(info):
        raise ToolkitError(f"{model} takes token ids, not features: classify texts with it")
    session = open_session(model)
    try:
        return session, FeatureClassifier(session, info, batch_size)
    except ToolkitError:
        session.close()
        raise


def classify_file(model: str, path: str, batch_size: int | None = None,
                  as_json: bool = False) -> List[str]:
    """Classify every window of ``path``: one output line per window (tab-separated, or JSON
    objects), then a summary line (accuracy when the file has labels)."""
    session, classifier = open_feature_classifier(model, batch_size)
    with session:
        try:
            windows = classifier.read(path)
            probabilities = softmax(classifier.logits_for_rows(windows.rows()))
        finally:
            classifier.close()
    names = classifier.labels
    predicted = probabilities.argmax(axis=1)  # (N,)
    lines = []
    for i, (row, label) in enumerate(zip(probabilities, predicted)):
        if as_json:
            lines.append(json.dumps({"index": i, "label": names[label],
                                     "probabilities": dict(zip(names, map(float, row)))}))
        else:
            lines.append(f"{i}\t{names[label]}\t{row[label]:.4f}")
    summary = (f"[{session.backend}: {len(windows)} windows in {classifier.n_batches} batches, "
               f"{classifier.total_batch_ms / max(classifier.n_batches, 1):.2f} ms per batch")
    if windows.labels is not None:
        summary += f"; accuracy {100 * float(np.mean(predicted == windows.labels)):.2f}%"
    return lines + [summary + "]"]
