"""Train an encoder classifier on sequences of continuous features: ``python -m train.features
--help``.

The encoder of ``train.model`` with a linear projection in place of the token embedding
(``feature_dim`` > 0), trained on the user's labelled sequences (``train.feature_data``: .npz,
CSV or Parquet). Features are standardised with per-feature statistics of the training split,
which the checkpoint keeps (``train.feature_eval``) so export, calibration and the device
apply the same. After training, the best epoch is evaluated on the validation (and test)
split: ``<split>_metrics.json`` with per-class precision/recall and the confusion matrix.

    python -m train.feature_sample --out data/features_sample
    python -m train.features --data data/features_sample --out-dir checkpoints/features
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Dict, List

import click
import torch
import torch.nn.functional as F

from common.errors import ToolkitError, exit_on_toolkit_error
from common.fileio import atomic_write_json
from train import distributed
from train.batching import bucketed_batches
from train.cli_options import build, dataclass_options
from train.feature_data import (
    FeatureData,
    FeatureSplit,
    load_feature_data,
    normalization_stats,
    normalize,
    split_names,
    table_columns,
    table_options,
)
from train.feature_eval import evaluate_features, feature_batch, feature_metrics
from train.model import ClassifierConfig
from train.trainer import TrainConfig, report_run, train

DEFAULT_DATA = Path("data/features_sample")
# Tuned on the generated sample (train.feature_sample): its validation accuracy stops rising
# after about 12 epochs of this small model (README, "Measured").
TRAIN_DEFAULTS = dict(epochs=12, batch_size=32, lr=2e-3, warmup_steps=50, weight_decay=0.05)
MODEL_DEFAULTS = dict(d_model=64, n_layers=2, n_heads=4, d_ff=128, dropout=0.1,
                      pooling="meanmax")
DERIVED_FIELDS = ("vocab_size", "num_labels", "feature_dim", "pad_id")  # from the data
FROM_DATA = ("max_seq_len",)  # unset: the longest sequence of the data (train.run leaves it out)


class FeatureTask:
    """The trainer's Task over normalised feature splits; batches are index lists."""

    kind = "classifier"

    def __init__(self, train_split: FeatureSplit, valid_split: FeatureSplit):
        self.train_split, self.valid_split = train_split, valid_split
        self.lengths = train_split.lengths.tolist()

    def steps_per_epoch(self, batch_size: int) -> int:
        return len(bucketed_batches(self.lengths, batch_size, 0, 0))

    def batches(self, batch_size: int, seed: int, epoch: int) -> List[List[int]]:
        return bucketed_batches(self.lengths, batch_size, seed, epoch)

    def loss(self, model, batch: List[int], device) -> torch.Tensor:
        x, mask = feature_batch(self.train_split, batch)  # (b, seq, F) float32, (b, seq) int64
        target = torch.from_numpy(self.train_split.labels[batch]).to(device)
        return F.cross_entropy(model(x.to(device), mask.to(device)), target)

    def evaluate(self, model) -> Dict[str, float]:
        result = evaluate_features(model, self.valid_split)
        return {"loss": result["loss"], "accuracy": result["accuracy"]}

    def score(self, metrics: Dict[str, float]) -> float:
        return metrics["accuracy"]


def normalised(data: FeatureData, stats: Dict) -> Dict[str, FeatureSplit]:
    return {name: FeatureSplit(s.name, normalize(s.features, s.lengths, stats), s.lengths,
                               s.labels) for name, s in data.splits.items()}


def model_config(options, data: FeatureData) -> ClassifierConfig:
    """The options' classifier config with the data's sizes; max_seq_len defaults to the
    longest sequence of any split."""
    given_len = options.get("max_seq_len")
    cfg = build(ClassifierConfig, options, MODEL_DEFAULTS)
    if cfg.pooling == "cls":
        raise ToolkitError("--pooling cls: feature sequences have no <cls> step; expected "
                           "mean or meanmax")
    if given_len is not None and data.longest > given_len:
        raise ToolkitError(f"{data.sources['train']}: sequences up to {data.longest} steps "
                           f"exceed --max-seq-len {given_len}")
    return dataclasses.replace(cfg, vocab_size=1, pad_id=0, num_labels=len(data.labels),
                               feature_dim=data.feature_dim,
                               max_seq_len=given_len or data.longest)


def describe(data: FeatureData) -> str:
    sizes = ", ".join(f"{len(s.labels)} {name}" for name, s in data.splits.items())
    return (f"feature data: {sizes} sequences of up to {data.longest} steps, "
            f"{data.feature_dim} features, labels {data.labels} ({data.sources['train']})")


def final_reports(out_dir: Path, splits: Dict[str, FeatureSplit], meta: Dict) -> None:
    """The best epoch's metrics on valid (and test)."""
    from train.checkpoint import load_checkpoint

    if not (out_dir / "best.pt").is_file():
        return
    best = load_checkpoint(out_dir / "best.pt", kind="classifier")
    for split in ("valid", "test"):
        if split in splits:
            metrics = feature_metrics(best.model, splits[split], meta["labels"], out_dir, split)
            path = atomic_write_json(out_dir / f"{split}_metrics.json",
                                     {"checkpoint": str(best.path), "split": split, **metrics})
            print(f"best epoch on {split}: accuracy {metrics['accuracy']:.4f}, macro F1 "
                  f"{metrics['macro']['f1']:.4f} -> {path}")


def check_same_data(last: Path, meta: Dict) -> None:
    """A resumed run must see the data it started on: same labels, same statistics."""
    from train.checkpoint import load_checkpoint
    from train.feature_eval import checkpoint_metadata

    state = load_checkpoint(last).state  # a corrupt file is one line naming it
    try:
        before = checkpoint_metadata(state)
    except ToolkitError as exc:
        raise ToolkitError(f"--resume: {last}: {exc}") from None
    for key in ("labels", "feature_norm"):
        if before[key] != meta[key]:
            raise ToolkitError(f"--resume: {last} was trained on data with other {key} than "
                               "--data has now; resume with the same data or use a new --out-dir")


@click.command(context_settings={"show_default": True})
@click.option("--data", "data_source", type=click.Path(path_type=Path), default=DEFAULT_DATA,
              help="folder with train.* (valid.*, test.*) or one file: .npz, .csv, .parquet")
@click.option("--out-dir", type=click.Path(path_type=Path), default=Path("checkpoints/features"))
@table_options
@click.option("--labels", "label_names", default=None,
              help="comma-separated label names in id order [default: sorted training labels]")
@click.option("--val-fraction", type=float, default=0.1,
              help="held out of train for epoch eval when there is no valid file")
@click.option("--split-seed", type=int, default=0, help="seed of that hold-out")
@click.option("--resume", is_flag=True, help="continue from OUT_DIR/last.pt")
@dataclass_options(ClassifierConfig, MODEL_DEFAULTS, exclude=DERIVED_FIELDS)
@dataclass_options(TrainConfig, TRAIN_DEFAULTS)
@exit_on_toolkit_error
def main(data_source, out_dir, fmt, id_column, step_column, label_column, feature_columns,
         label_names, val_fraction, split_seed, resume, **options):
    """Train the encoder classifier on continuous-feature sequences and keep the best epoch."""
    distributed.setup()  # under torchrun: join the job first, so only rank 0 prints
    columns = table_columns(id_column, step_column, label_column, feature_columns)
    data = load_feature_data(data_source, columns, split_names(label_names), val_fraction,
                             split_seed, fmt)
    print(describe(data))
    model_cfg = model_config(options, data)
    stats = normalization_stats(data.splits["train"])
    splits = normalised(data, stats)
    meta = {"feature_norm": stats, "labels": data.labels, "feature_names": data.feature_names}
    data_cfg = {"source": str(data_source), "format": fmt, "val_fraction": val_fraction,
                "split_seed": split_seed,
                "columns": {"id": id_column, "step": step_column, "label": label_column,
                            "features": list(columns.features) if columns.features else None}}
    resume = resume and (out_dir / "last.pt").is_file()
    if resume:
        check_same_data(out_dir / "last.pt", meta)
    task = FeatureTask(splits["train"], splits["valid"])
    # checkpoint_extra: every checkpoint, a killed run's last.pt included, exports as it is
    summary = train(task, model_cfg, build(TrainConfig, options, TRAIN_DEFAULTS), out_dir,
                    resume=resume, task_config={**meta, "data": data_cfg},
                    checkpoint_extra=meta)
    if distributed.context().is_main:  # the other ranks have nothing left to write
        report_run(out_dir, summary, "classifier")
        final_reports(out_dir, splits, meta)


if __name__ == "__main__":
    main()
