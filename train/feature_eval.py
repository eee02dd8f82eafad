"""Batches, evaluation and checkpoint metadata of continuous-feature classifiers.

A feature checkpoint carries what the device needs to feed the model the way it was trained
(CONTRIBUTING.md, "Checkpoint dict"): ``feature_norm`` ``{"mean": [F], "std": [F]}`` from the
training split, ``labels`` (names in id order) and ``feature_names`` ([F] or None), as
top-level keys; the same values also sit in ``train_config``, which every checkpoint the
trainer writes carries, so a run stopped mid-way still has them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from common.errors import ToolkitError
from train.batching import sorted_batches
from train.feature_data import FeatureSplit

METADATA_KEYS = ("feature_norm", "labels", "feature_names")


def is_feature_checkpoint(ckpt) -> bool:
    return ckpt.kind == "classifier" and getattr(ckpt.config, "feature_dim", 0) > 0


def feature_batch(split: FeatureSplit, idx: Sequence[int]) -> Tuple[torch.Tensor, torch.Tensor]:
    """-> features (batch, longest, F) float32, mask (batch, longest) int64 (1 = real step)."""
    idx = np.asarray(idx)
    lengths = split.lengths[idx]  # (batch,)
    longest = int(lengths.max())
    x = torch.from_numpy(np.ascontiguousarray(split.features[idx, :longest]))
    mask = torch.from_numpy((np.arange(longest)[None, :] < lengths[:, None]).astype(np.int64))
    return x, mask


@torch.no_grad()
def evaluate_features(model: torch.nn.Module, split: FeatureSplit, batch_size: int = 256
                      ) -> Dict[str, Any]:
    """-> loss, accuracy, probs (N, C) float32 and preds (N,) int64 in the split's order."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    n = len(split.labels)
    probs = np.zeros((n, model.cfg.num_labels), dtype=np.float32)
    total_loss = 0.0
    for idx in sorted_batches(split.lengths.tolist(), batch_size):
        x, mask = feature_batch(split, idx)
        logits = model(x.to(device), mask.to(device)).float()
        target = torch.from_numpy(split.labels[idx]).to(device)
        total_loss += F.cross_entropy(logits, target, reduction="sum").item()
        probs[idx] = torch.softmax(logits, dim=-1).cpu().numpy()
    model.train(was_training)
    preds = probs.argmax(axis=1).astype(np.int64)
    accuracy = float((preds == split.labels).mean()) if n else float("nan")
    return {"loss": total_loss / max(n, 1), "accuracy": accuracy, "probs": probs, "preds": preds}


def feature_metrics(model, split: FeatureSplit, names: List[str], out_dir: Path,
                    prefix: str, batch_size: int = 256) -> Dict[str, Any]:
    """Loss, accuracy, per-class precision/recall/F1, the confusion matrix (rows = true) and
    its PNGs ``<prefix>_confusion_matrix.png`` / ``<prefix>_class_distribution.png``."""
    from train.evaluate import classification_report
    from train.plots import plot_class_distribution, plot_confusion_matrix

    result = evaluate_features(model, split, batch_size)
    report = classification_report(split.labels, result["preds"], names)
    true_counts = np.bincount(split.labels, minlength=len(names)).tolist()
    pred_counts = np.bincount(result["preds"], minlength=len(names)).tolist()
    plots = [plot_confusion_matrix(report["confusion_matrix"], names,
                                   out_dir / f"{prefix}_confusion_matrix.png"),
             plot_class_distribution(true_counts, pred_counts, names,
                                     out_dir / f"{prefix}_class_distribution.png")]
    return {"data": split.name, "n_samples": len(split.labels), "loss": result["loss"],
            **report, "labels": names, "true_counts": true_counts, "pred_counts": pred_counts,
            "plots": [str(p) for p in plots]}


def checkpoint_metadata(state: Dict[str, Any]) -> Dict[str, Any]:
    """``feature_norm``, ``labels``, ``feature_names`` of a feature checkpoint's state dict:
    the top-level keys, else the copies in ``train_config``."""
    train_config = state.get("train_config") or {}
    meta = {k: state.get(k, train_config.get(k)) for k in METADATA_KEYS}
    norm = meta["feature_norm"]
    if not isinstance(norm, dict) or not {"mean", "std"} <= set(norm):
        raise ToolkitError("the checkpoint has no feature_norm {mean, std}: it was not written "
                           "by train.features")
    if not isinstance(meta["labels"], list):
        raise ToolkitError("the checkpoint has no label names: it was not written by "
                           "train.features")
    return meta


def validate_checkpoint(ckpt, split: str, data_source: str | None, batch_size: int,
                        max_samples: int | None, out_dir: Path) -> Dict[str, Any]:
    """train.validate for a feature checkpoint: read ``split`` of the data it was trained on
    (or of ``data_source``) with its columns and labels, normalise with its statistics."""
    from train.feature_data import SPLITS, load_feature_data, normalize
    from train.feature_table import TableColumns

    if split not in SPLITS:
        raise ToolkitError(f"--split {split!r} for a feature checkpoint: expected one of "
                           f"{', '.join(SPLITS)}")
    meta = checkpoint_metadata(ckpt.state)
    data_cfg = (ckpt.state.get("train_config") or {}).get("data") or {}
    source = data_source or data_cfg.get("source")
    if not source:
        raise ToolkitError(f"{ckpt.path} does not record its data: give --data")
    cols = data_cfg.get("columns") or {}
    columns = TableColumns(cols.get("id", "sequence_id"), cols.get("step"),
                           cols.get("label", "label"),
                           tuple(cols["features"]) if cols.get("features") else None)
    data = load_feature_data(source, columns, meta["labels"],
                             data_cfg.get("val_fraction", 0.1), data_cfg.get("split_seed", 0),
                             data_cfg.get("format", "auto"))
    if split not in data.splits:
        raise ToolkitError(f"{source} has no {split} split (splits: {sorted(data.splits)})")
    if data.feature_dim != ckpt.config.feature_dim:
        raise ToolkitError(f"{source}: {data.feature_dim} features per step; the checkpoint "
                           f"takes {ckpt.config.feature_dim}")
    part = data.splits[split]
    keep = slice(0, max_samples)
    if data.longest > ckpt.config.max_seq_len:
        raise ToolkitError(f"{source}: sequences up to {data.longest} steps; the model takes "
                           f"{ckpt.config.max_seq_len}")
    part = FeatureSplit(part.name, normalize(part.features[keep], part.lengths[keep],
                                             meta["feature_norm"]),
                        part.lengths[keep], part.labels[keep])
    metrics = feature_metrics(ckpt.model, part, meta["labels"], out_dir, split, batch_size)
    return {"data_source": str(source), "feature_names": meta["feature_names"], **metrics}
