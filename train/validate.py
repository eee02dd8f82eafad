"""Evaluate a trained checkpoint on a data split and write its metrics and plots.

Classifier: loss, accuracy, per-class and macro precision/recall/F1, a confusion matrix PNG and
a true-versus-predicted class distribution PNG. Decoder: loss, perplexity and bits per byte.
Both write ``<split>_metrics.json`` (atomically) and print a short summary.

    python -m train.validate --checkpoint checkpoints/imdb/best.pt --split test --output-dir eval/
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List

import click
import numpy as np

from common.errors import ToolkitError, exit_on_toolkit_error
from common.fileio import atomic_write_json
from train import data as data_sources

SPLITS = {"classifier": ("train", "test"), "decoder": ("train", "valid")}
DEFAULT_SPLIT = {"classifier": "test", "decoder": "valid"}
DEFAULT_LM_SEQ_LEN = 256  # the training window of train.tinystories


def check_split(kind: str, split: str) -> None:
    if split not in SPLITS[kind]:
        raise ToolkitError(
            f"--split {split!r} for a {kind} checkpoint: expected one of {', '.join(SPLITS[kind])}"
        )


def check_positive(name: str, value: int | None) -> None:
    if value is not None and value <= 0:
        raise ToolkitError(f"{name} {value}: expected a positive integer")


def class_names(num_labels: int, train_config: Dict) -> List[str]:
    """Names from the checkpoint's train config if it has them, else IMDB's for two classes."""
    names = train_config.get("labels")
    if isinstance(names, list) and len(names) == num_labels:
        return [str(n) for n in names]
    from train.imdb import LABELS

    return list(LABELS) if num_labels == len(LABELS) else [str(i) for i in range(num_labels)]


def validate_classifier(ckpt, tok, texts: List[str], labels: List[int], batch_size: int,
                        out_dir: Path, split: str) -> Dict:
    """Evaluate on (texts, labels); write the metrics JSON and both PNGs; return the metrics."""
    from train.batching import encode_texts
    from train.evaluate import classification_report, evaluate_classifier
    from train.plots import plot_class_distribution, plot_confusion_matrix

    cfg = ckpt.config
    if any(label >= cfg.num_labels for label in labels):
        raise ToolkitError(f"labels go up to {max(labels)}; the model has {cfg.num_labels} classes")
    encoded = encode_texts(tok, texts, cfg.max_seq_len, prepend_cls=cfg.pooling == "cls")
    result = evaluate_classifier(ckpt.model, encoded, labels, batch_size, cfg.pad_id)
    names = class_names(cfg.num_labels, ckpt.state.get("train_config") or {})
    report = classification_report(labels, result["preds"], names)
    true_counts = np.bincount(np.asarray(labels), minlength=cfg.num_labels)  # (classes,)
    pred_counts = np.bincount(result["preds"], minlength=cfg.num_labels)  # (classes,)
    metrics = {
        "loss": result["loss"], **report, "labels": names,
        "true_counts": true_counts.tolist(), "pred_counts": pred_counts.tolist(),
    }
    metrics["plots"] = [
        str(plot_confusion_matrix(report["confusion_matrix"], names,
                                  out_dir / f"{split}_confusion_matrix.png")),
        str(plot_class_distribution(true_counts.tolist(), pred_counts.tolist(), names,
                                    out_dir / f"{split}_class_distribution.png")),
    ]
    return metrics


def validate_lm(ckpt, tok, stories: List[str], batch_size: int, seq_len: int) -> Dict:
    """Loss, perplexity and bits per byte over non-overlapping windows of the split's stream."""
    from train.batching import lm_token_stream
    from train.evaluate import evaluate_lm
    from train.tokenizer import special_ids

    eos_id = special_ids(tok)["eos_id"]
    if eos_id is None:
        raise ToolkitError(f"tokenizer {ckpt.tokenizer_path} has no <|endoftext|> token")
    stream = lm_token_stream(tok, stories, eos_id)  # (n_tokens,) int64
    if len(stream) <= seq_len:
        raise ToolkitError(
            f"the split has {len(stream)} tokens: fewer than one window of --seq-len {seq_len}"
        )
    n_bytes = sum(len(s.encode("utf-8")) for s in stories)
    result = evaluate_lm(ckpt.model, stream, seq_len, batch_size, n_bytes=n_bytes)
    return {**result, "seq_len": seq_len, "stream_tokens": int(len(stream)), "text_bytes": n_bytes}


def print_summary(kind: str, metrics: Dict) -> None:
    if kind == "classifier":
        click.echo(f"{metrics['n_samples']} examples: loss {metrics['loss']:.4f}, "
                   f"accuracy {metrics['accuracy']:.4f}, macro F1 {metrics['macro']['f1']:.4f}")
        for name, row in metrics["per_class"].items():
            click.echo(f"  {name:>10}: precision {row['precision']:.4f} recall {row['recall']:.4f}"
                       f" F1 {row['f1']:.4f} (n={row['support']})")
    else:
        click.echo(f"{metrics['n_samples']} stories, {metrics['tokens']} tokens scored: "
                   f"loss {metrics['loss']:.4f}, perplexity {metrics['perplexity']:.2f}, "
                   f"bits/byte {metrics['bits_per_byte']:.4f}")


@click.command()
@click.option("--checkpoint", required=True, type=click.Path(dir_okay=False),
              help="best.pt / last.pt with tokenizer.json beside it.")
@click.option("--split", default=None,
              help="train|test (classifier), train|valid (decoder), train|valid|test (feature "
                   "classifier) [default: test / valid]")
@click.option("--output-dir", required=True, type=click.Path(file_okay=False),
              help="Where <split>_metrics.json and the PNGs go.")
@click.option("--data", "data_source", default=None,
              help="sample | hub | DIR [default: $DATA_DIR, $DATA, hub]")
@click.option("--batch-size", default=64, show_default=True, type=int)
@click.option("--max-samples", default=None, type=int,
              help="Evaluate only the first N reviews / stories of the split.")
@click.option("--seq-len", default=None, type=int,
              help="Decoder window in tokens [default: the training window in the checkpoint]")
@exit_on_toolkit_error
def main(checkpoint: str, split: str | None, output_dir: str, data_source: str | None,
         batch_size: int, max_samples: int | None, seq_len: int | None) -> None:
    """Evaluate a checkpoint on a split: metrics JSON, plots and a summary."""
    from train.checkpoint import load_checkpoint
    from train.tokenizer import load_tokenizer

    check_positive("--batch-size", batch_size)
    check_positive("--max-samples", max_samples)
    check_positive("--seq-len", seq_len)
    ckpt = load_checkpoint(checkpoint)
    split = split or DEFAULT_SPLIT[ckpt.kind]
    if _is_feature_checkpoint(ckpt):
        return validate_features(ckpt, split, data_source, batch_size, max_samples, output_dir)
    check_split(ckpt.kind, split)
    tok = load_tokenizer(ckpt.tokenizer_path)
    source = data_sources.resolve_data_source(data_source)
    out_dir = Path(output_dir)
    description = data_sources.describe_source(
        source, "IMDB" if ckpt.kind == "classifier" else "TinyStories"
    )
    click.echo(description)
    header = {"kind": ckpt.kind, "checkpoint": str(ckpt.path), "split": split,
              "data_source": source, "data": description}
    if ckpt.kind == "classifier":
        texts, labels = data_sources.imdb_splits(source)[split]
        texts, labels = texts[:max_samples], labels[:max_samples]
        metrics = validate_classifier(ckpt, tok, texts, labels, batch_size, out_dir, split)
        n_samples = len(texts)
    else:
        stories = data_sources.tinystories_splits(source)[split][:max_samples]
        trained_window = (ckpt.state.get("train_config") or {}).get("seq_len")
        window = seq_len or trained_window or min(DEFAULT_LM_SEQ_LEN, ckpt.config.max_seq_len)
        if window > ckpt.config.max_seq_len:
            raise ToolkitError(
                f"--seq-len {window} exceeds the model's max_seq_len {ckpt.config.max_seq_len}"
            )
        metrics = validate_lm(ckpt, tok, stories, batch_size, window)
        n_samples = len(stories)
    metrics = {**header, "n_samples": n_samples, **metrics}
    metrics_path = atomic_write_json(out_dir / f"{split}_metrics.json", metrics)
    print_summary(ckpt.kind, metrics)
    for path in [metrics_path, *metrics.get("plots", [])]:
        click.echo(f"wrote {path}")


def _is_feature_checkpoint(ckpt) -> bool:
    from train.feature_eval import is_feature_checkpoint

    return is_feature_checkpoint(ckpt)


def validate_features(ckpt, split: str, data_source: str | None, batch_size: int,
                      max_samples: int | None, output_dir: str) -> None:
    """A continuous-feature classifier: its data (recorded in the checkpoint, or --data: a
    folder or file of .npz/.csv/.parquet), normalised with its statistics."""
    from train.feature_eval import validate_checkpoint

    metrics = validate_checkpoint(ckpt, split, data_source, batch_size, max_samples,
                                  Path(output_dir))
    metrics = {"kind": "feature_classifier", "checkpoint": str(ckpt.path), "split": split,
               **metrics}
    metrics_path = atomic_write_json(Path(output_dir) / f"{split}_metrics.json", metrics)
    print_summary("classifier", metrics)
    for path in [metrics_path, *metrics["plots"]]:
        click.echo(f"wrote {path}")


if __name__ == "__main__":
    main()
