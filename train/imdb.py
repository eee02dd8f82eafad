"""Train the IMDB sentiment classifier: ``python -m train.imdb --help``."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Dict, List, Sequence

import click
import torch
import torch.nn.functional as F

from common.errors import ToolkitError, exit_on_toolkit_error
from train import data as datasets_
from train import distributed
from train.batching import bucketed_batches, encode_texts, pad_batch
from train.checkpoint import TOKENIZER_FILE
from train.cli_options import build, dataclass_options
from train.evaluate import evaluate_classifier
from train.model import ClassifierConfig
from train.tokenizer import gpt2_tokenizer, load_tokenizer, save_tokenizer, special_ids, train_bpe
from train.trainer import TrainConfig, report_run, train

LABELS = ["negative", "positive"]
# Chosen on a movie-disjoint hold-out of the real train data (docs/DESIGN.md, "Decisions").
TRAIN_DEFAULTS = dict(epochs=4, batch_size=32, lr=2e-3, warmup_steps=200, weight_decay=0.1)
MODEL_DEFAULTS = dict(dropout=0.25, pooling="meanmax")
WORD_DROPOUT = 0.45
PRETRAIN_EPOCHS = 0
MASK_RATE = 0.15
DERIVED_FIELDS = ("num_labels", "feature_dim", "pad_id")  # set from the data and tokenizer


class ImdbTask:
    kind = "classifier"

    def __init__(
        self,
        encoded: List[List[int]],
        labels: Sequence[int],
        val_encoded: List[List[int]],
        val_labels: Sequence[int],
        pad_id: int,
        word_dropout: float = 0.0,
    ):
        self.encoded, self.labels = encoded, list(labels)
        self.val_encoded, self.val_labels = val_encoded, list(val_labels)
        self.pad_id = pad_id
        self.word_dropout = word_dropout
        self.lengths = [len(s) for s in encoded]

    def steps_per_epoch(self, batch_size: int) -> int:
        return len(bucketed_batches(self.lengths, batch_size, 0, 0))

    def batches(self, batch_size: int, seed: int, epoch: int) -> List[List[int]]:
        return bucketed_batches(self.lengths, batch_size, seed, epoch)

    def loss(self, model, batch: List[int], device) -> torch.Tensor:
        ids, mask = pad_batch([self.encoded[i] for i in batch], self.pad_id)
        positions = None
        if self.word_dropout > 0:
            mask = drop_words(mask, self.word_dropout)
            if model.ngram is None:  # the n-gram conv reads neighbours: keep the gaps
                ids, mask, positions = remove_hidden_tokens(ids, mask)
                positions = positions.to(device)
        target = torch.tensor([self.labels[i] for i in batch], device=device)
        return F.cross_entropy(model(ids.to(device), mask.to(device), positions), target)

    def evaluate(self, model) -> Dict[str, float]:
        result = evaluate_classifier(model, self.val_encoded, self.val_labels, 128, self.pad_id)
        return {"loss": result["loss"], "accuracy": result["accuracy"]}

    def score(self, metrics: Dict[str, float]) -> float:
        return metrics["accuracy"]


def drop_words(mask: torch.Tensor, rate: float) -> torch.Tensor:
    """Hide a random ``rate`` of each review's tokens from attention and pooling (word dropout,
    as in Iyyer et al. 2015): the model cannot lean on a few memorised tokens. Draws from the
    global RNG, which checkpoints save, so resumed runs stay exact.  mask: (batch, seq) int64"""
    kept = mask * (torch.rand(mask.shape) >= rate).to(mask.dtype)
    kept[:, 0] = mask[:, 0]  # never hide a whole review
    return kept


def remove_hidden_tokens(ids: torch.Tensor, mask: torch.Tensor):
    """Drop the hidden tokens from the batch instead of masking them: a hidden token is neither a
    key nor pooled, so its position only costs compute (60% of it at word dropout 0.6). The
    kept tokens keep their order and their original positions, so the encoder computes what it
    would have computed with the mask.  ids, mask: (batch, seq) int64
    -> ids, mask, positions: (batch, most kept) int64"""
    hidden = (mask == 0).to(torch.int64)  # (batch, seq)
    order = torch.argsort(hidden, dim=1, stable=True)  # kept first, in their original order
    kept = int((1 - hidden).sum(dim=1).max())
    positions = order[:, :kept]
    return ids.gather(1, positions), mask.gather(1, positions), positions


def load_train_holdout(data_source: str, limit: int, val_size: int):
    """(train texts, train labels, held-out texts, held-out labels) of the IMDB train split
    (its first ``limit`` reviews when ``limit``), the source named on stdout."""
    source = datasets_.resolve_data_source(data_source)
    print(datasets_.describe_source(source, "IMDB"))
    texts, labels = datasets_.imdb_splits(source)["train"]
    if limit:
        texts, labels = texts[:limit], labels[:limit]
    return split_holdout(texts, labels, val_size)


def split_holdout(texts, labels, val_size: int):
    """Hold out the last ``val_size`` reviews of the train split, the same number of each label,
    for epoch evaluation (the test split is never tuned on). A block, not a random draw: IMDB
    numbers the reviews of one movie consecutively (up to 30 of them) and its test movies are
    not in train, so a random hold-out shares movies, names and plots with training and
    overrates whatever memorises them (docs/DESIGN.md, "Decisions")."""
    if not 0 < val_size < len(texts):
        raise ToolkitError(f"--val-size {val_size}: expected 1..{len(texts) - 1}")
    classes = sorted(set(labels))
    quota = {c: val_size // len(classes) + (k < val_size % len(classes))
             for k, c in enumerate(classes)}
    held = set()
    for i in reversed(range(len(texts))):
        if quota[labels[i]] > 0:
            quota[labels[i]] -= 1
            held.add(i)
    if any(quota.values()):
        raise ToolkitError(f"--val-size {val_size}: the train split has too few reviews of a label")
    val = sorted(held)
    tr = [i for i in range(len(texts)) if i not in held]
    return (
        [texts[i] for i in tr],
        [labels[i] for i in tr],
        [texts[i] for i in val],
        [labels[i] for i in val],
    )


def prepare_tokenizer(
    out_dir: Path, texts, vocab_size: int, resume: bool, gpt2_dir: str | None, lowercase: bool
):
    if distributed.context().enabled:  # torchrun: rank 0 makes and saves it, every rank uses it
        from tokenizers import Tokenizer

        return Tokenizer.from_str(distributed.on_rank0_then_share(lambda: prepare_tokenizer_here(
            out_dir, texts, vocab_size, resume, gpt2_dir, lowercase).to_str()))
    return prepare_tokenizer_here(out_dir, texts, vocab_size, resume, gpt2_dir, lowercase)


def prepare_tokenizer_here(
    out_dir: Path, texts, vocab_size: int, resume: bool, gpt2_dir: str | None, lowercase: bool
):
    path = out_dir / TOKENIZER_FILE
    if resume and path.is_file():
        return load_tokenizer(path)
    started = time.time()
    tok = gpt2_tokenizer(gpt2_dir) if gpt2_dir else train_bpe(texts, vocab_size, lowercase)
    save_tokenizer(tok, path)
    print(f"tokenizer: vocabulary {tok.get_vocab_size()}, {time.time() - started:.1f} s -> {path}")
    return tok


@click.command(context_settings={"show_default": True})
@click.option(
    "--data",
    "data_source",
    default=None,
    help="sample | hub | DIR with train.jsonl/test.jsonl [default: $DATA_DIR, $DATA, hub]",
)
@click.option("--out-dir", type=click.Path(path_type=Path), default=Path("checkpoints/imdb"))
@click.option("--val-size", type=int, default=1000, help="reviews held out of train for epoch eval")
@click.option(
    "--gpt2-tokenizer",
    "gpt2_dir",
    default=None,
    help="folder with GPT-2's tokenizer.json, instead of training a BPE",
)
@click.option("--limit", type=int, default=0, help="use only the first N training reviews")
@click.option("--word-dropout", type=float, default=WORD_DROPOUT,
              help="fraction of tokens hidden from each training review")
@click.option("--pretrain-epochs", type=int, default=PRETRAIN_EPOCHS,
              help="epochs of masked-LM pretraining on the training reviews first (0: none)")
@click.option("--mask-rate", type=float, default=MASK_RATE,
              help="fraction of tokens masked in pretraining")
@click.option("--resume", is_flag=True, help="continue from OUT_DIR/last.pt")
@dataclass_options(ClassifierConfig, MODEL_DEFAULTS, exclude=DERIVED_FIELDS)
@dataclass_options(TrainConfig, TRAIN_DEFAULTS)
@exit_on_toolkit_error
def main(data_source, out_dir, val_size, gpt2_dir, limit, word_dropout, pretrain_epochs,
         mask_rate, resume, **options):
    """Train the encoder classifier on IMDB (or the generated sample) and keep the best epoch."""
    distributed.setup()  # under torchrun: join the job first, so only rank 0 prints
    check_fraction("--word-dropout", word_dropout)
    check_fraction("--mask-rate", mask_rate)
    resume_finetune = resume and (out_dir / "last.pt").is_file()
    check_pretrain_world(pretrain_epochs, will_pretrain=not resume_finetune)
    tr_texts, tr_labels, val_texts, val_labels = load_train_holdout(data_source, limit, val_size)
    train_cfg = build(TrainConfig, options, TRAIN_DEFAULTS)
    model_cfg = build(ClassifierConfig, options, MODEL_DEFAULTS)
    # Lowercase: sentiment does not depend on case, and the vocabulary goes further.
    tok = prepare_tokenizer(
        out_dir, tr_texts, model_cfg.vocab_size, resume, gpt2_dir, lowercase=True
    )
    ids = special_ids(tok)
    pad_id = ids["pad_id"] if ids["pad_id"] is not None else ids["eos_id"]
    model_cfg = dataclasses.replace(model_cfg, vocab_size=tok.get_vocab_size(), pad_id=pad_id)
    prepend_cls = model_cfg.pooling == "cls"
    started = time.time()
    encoded = encode_texts(tok, tr_texts, model_cfg.max_seq_len, prepend_cls)
    val_encoded = encode_texts(tok, val_texts, model_cfg.max_seq_len, prepend_cls)
    print(
        f"tokenized {len(encoded)} train / {len(val_encoded)} held-out reviews in "
        f"{time.time() - started:.1f} s"
    )
    init_from = None
    if pretrain_epochs > 0 and not resume_finetune:  # a started fine-tune has its own weights
        init_from = pretrain(encoded, val_encoded, model_cfg, train_cfg, out_dir / "pretrain",
                             pretrain_epochs, mask_rate, resume)
    task = ImdbTask(encoded, tr_labels, val_encoded, val_labels, pad_id, word_dropout)
    task_config = {"word_dropout": word_dropout, "labels": LABELS,
                   "pretrain_epochs": pretrain_epochs, "mask_rate": mask_rate}
    summary = train(task, model_cfg, train_cfg, out_dir, resume=resume_finetune,
                    task_config=task_config, init_from=init_from)
    report_run(out_dir, summary, "classifier")


def check_fraction(option: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ToolkitError(f"{option} {value}: expected a value in [0, 1)")


def check_pretrain_world(pretrain_epochs: int, will_pretrain: bool) -> None:
    """Masked-LM pretraining is single-process only: its loss is a mean over masked tokens,
    which the trainer's example-weighted DDP average does not reproduce, and a rank whose
    shard has no masked token gives NaN that the all-reduce spreads to every rank."""
    ctx = distributed.context()
    if pretrain_epochs > 0 and will_pretrain and ctx.enabled:
        raise ToolkitError(
            f"--pretrain-epochs {pretrain_epochs} under torchrun ({ctx.world_size} ranks): "
            "masked-LM pretraining runs in one process only; run it without torchrun "
            "(python -m train.imdb ... --pretrain-epochs N), or give --pretrain-epochs 0 here")


def pretrain(encoded, val_encoded, model_cfg, train_cfg, pretrain_dir: Path, epochs: int,
             mask_rate: float, resume: bool) -> Path:
    """Masked-LM pretraining on the training reviews; -> the checkpoint to fine-tune from."""
    from train.pretrain import MaskedLmTask

    print(f"pretraining: masked LM on the training reviews, {epochs} epochs -> {pretrain_dir}")
    task = MaskedLmTask(encoded, val_encoded, model_cfg.pad_id, model_cfg.vocab_size, mask_rate)
    cfg = dataclasses.replace(train_cfg, epochs=epochs)
    summary = train(task, model_cfg, cfg, pretrain_dir,
                    resume=resume and (pretrain_dir / "last.pt").is_file(),
                    task_config={"mask_rate": mask_rate})
    report_run(pretrain_dir, summary, "pretrain")
    return pretrain_dir / "last.pt"


if __name__ == "__main__":
    main()
