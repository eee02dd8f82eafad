"""Evaluation of both models in PyTorch: used per epoch by the trainer and by train.validate."""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from train.batching import lm_batch, pad_batch, sorted_batches


@torch.no_grad()
def evaluate_classifier(
    model: torch.nn.Module,
    encoded: Sequence[Sequence[int]],
    labels: Sequence[int],
    batch_size: int,
    pad_id: int,
) -> Dict:
    """-> loss, accuracy, probs (N, C) float32 and preds (N,) int64 in the original order."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    n = len(encoded)
    probs = np.zeros((n, model.cfg.num_labels), dtype=np.float32)
    total_loss = 0.0
    for idx in sorted_batches([len(s) for s in encoded], batch_size):
        ids, mask = pad_batch([encoded[i] for i in idx], pad_id)
        target = torch.tensor([labels[i] for i in idx], device=device)
        logits = model(ids.to(device), mask.to(device)).float()
        total_loss += F.cross_entropy(logits, target, reduction="sum").item()
        probs[idx] = torch.softmax(logits, dim=-1).cpu().numpy()
    model.train(was_training)
    preds = probs.argmax(axis=1).astype(np.int64)
    accuracy = float((preds == np.asarray(labels)).mean()) if n else float("nan")
    return {"loss": total_loss / max(n, 1), "accuracy": accuracy, "probs": probs, "preds": preds}


@torch.no_grad()
def evaluate_lm(
    model: torch.nn.Module,
    stream: np.ndarray,
    seq_len: int,
    batch_size: int,
    n_bytes: Optional[int] = None,
    max_windows: Optional[int] = None,
) -> Dict:
    """Mean next-token loss over non-overlapping windows of the stream.

    bits_per_byte scales the loss by the stream's tokens per byte (n_bytes = UTF-8 bytes of the
    text the stream encodes), so it compares across tokenizers."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    n_windows = (len(stream) - 1) // seq_len
    if max_windows is not None:
        n_windows = min(n_windows, max_windows)
    starts = np.arange(n_windows) * seq_len
    total_loss, total_tokens = 0.0, 0
    for i in range(0, n_windows, batch_size):
        x, y = lm_batch(stream, starts[i : i + batch_size], seq_len)
        logits, _, _ = model(x.to(device))
        total_loss += F.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]), y.to(device).reshape(-1), reduction="sum"
        ).item()
        total_tokens += y.numel()
    model.train(was_training)
    loss = total_loss / max(total_tokens, 1)
    result = {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": total_tokens}
    if n_bytes:
        tokens_per_byte = (len(stream)) / n_bytes
        result["bits_per_byte"] = loss / math.log(2) * tokens_per_byte
    return result


def classification_report(labels: Sequence[int], preds: Sequence[int], names: List[str]) -> Dict:
    """Per-class precision/recall/F1, macro averages and the confusion matrix (rows = true)."""
    labels_a, preds_a = np.asarray(labels), np.asarray(preds)
    k = len(names)
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (labels_a, preds_a), 1)
    per_class = {}
    for c, name in enumerate(names):
        tp = cm[c, c]
        precision = tp / cm[:, c].sum() if cm[:, c].sum() else 0.0
        recall = tp / cm[c, :].sum() if cm[c, :].sum() else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {
            "precision": float(precision),
            "recall": float(recall),
            "f1": float(f1),
            "support": int(cm[c, :].sum()),
        }
    macro = {
        m: float(np.mean([v[m] for v in per_class.values()])) for m in ("precision", "recall", "f1")
    }
    accuracy = float(np.trace(cm) / cm.sum()) if cm.sum() else float("nan")
    return {
        "accuracy": accuracy,
        "per_class": per_class,
        "macro": macro,
        "confusion_matrix": cm.tolist(),
    }
