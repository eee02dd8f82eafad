"""Train the TinyStories decoder LM: ``python -m train.tinystories --help``."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Dict, List

import click
import numpy as np
import torch
import torch.nn.functional as F

from common.errors import ToolkitError, exit_on_toolkit_error
from train import data as datasets_
from train import distributed
from train.batching import lm_batch, lm_token_stream, lm_train_batches, lm_windows_per_epoch
from train.cli_options import build, dataclass_options
from train.evaluate import evaluate_lm
from train.imdb import prepare_tokenizer
from train.model import DecoderConfig
from train.tokenizer import special_ids
from train.trainer import TrainConfig, report_run, train

# 10 epochs fit the 30-minute budget on 2 Zen 4 cores with bf16 autocast (README, "Measured");
# dropout because 10 passes over the 8,000-story sample would otherwise memorise it.
TRAIN_DEFAULTS = dict(epochs=10, batch_size=16, lr=2e-3, warmup_steps=100, weight_decay=0.1,
                      cpu_bf16=True)
MODEL_DEFAULTS = dict(dropout=0.1)
TRAIN_SEQ_LEN = 256  # window length in training; the model's context (max_seq_len) may be longer


class StoriesTask:
    kind = "decoder"

    def __init__(self, stream: np.ndarray, val_stream: np.ndarray, val_bytes: int, seq_len: int):
        self.stream, self.val_stream = stream, val_stream  # (n_tokens,) int64
        self.val_bytes, self.seq_len = val_bytes, seq_len

    def steps_per_epoch(self, batch_size: int) -> int:
        return lm_windows_per_epoch(len(self.stream), self.seq_len) // batch_size

    def batches(self, batch_size: int, seed: int, epoch: int) -> List[np.ndarray]:
        return lm_train_batches(len(self.stream), self.seq_len, batch_size, seed, epoch)

    def loss(self, model, starts: np.ndarray, device) -> torch.Tensor:
        x, y = lm_batch(self.stream, starts, self.seq_len)
        logits, _, _ = model(x.to(device))
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.to(device).reshape(-1))

    def evaluate(self, model) -> Dict[str, float]:
        result = evaluate_lm(model, self.val_stream, self.seq_len, 16, n_bytes=self.val_bytes)
        return {"loss": result["loss"], "bits_per_byte": result["bits_per_byte"]}

    def score(self, metrics: Dict[str, float]) -> float:
        return -metrics["loss"]


@click.command(context_settings={"show_default": True})
@click.option(
    "--data",
    "data_source",
    default=None,
    help="sample | hub | DIR with train.txt/valid.txt [default: $DATA_DIR, $DATA, hub]",
)
@click.option("--out-dir", type=click.Path(path_type=Path), default=Path("checkpoints/stories"))
@click.option(
    "--val-stories", type=int, default=200, help="stories held out of train for epoch eval"
)
@click.option("--seq-len", type=int, default=TRAIN_SEQ_LEN, help="training window in tokens")
@click.option(
    "--gpt2-tokenizer",
    "gpt2_dir",
    default=None,
    help="folder with GPT-2's tokenizer.json, instead of training a BPE",
)
@click.option("--limit", type=int, default=0, help="use only the first N training stories")
@click.option("--resume", is_flag=True, help="continue from OUT_DIR/last.pt")
@dataclass_options(DecoderConfig, MODEL_DEFAULTS)
@dataclass_options(TrainConfig, TRAIN_DEFAULTS)
@exit_on_toolkit_error
def main(data_source, out_dir, val_stories, seq_len, gpt2_dir, limit, resume, **options):
    """Train the decoder LM on TinyStories (or the generated sample) and keep the best epoch."""
    distributed.setup()  # under torchrun: join the job first, so only rank 0 prints
    source = datasets_.resolve_data_source(data_source)
    print(datasets_.describe_source(source, "TinyStories"))
    stories = datasets_.tinystories_splits(source)["train"]
    if limit:
        stories = stories[:limit]
    if not 0 < val_stories < len(stories):
        raise ToolkitError(f"--val-stories {val_stories}: expected 1..{len(stories) - 1}")
    train_stories, val = stories[:-val_stories], stories[-val_stories:]
    model_cfg = build(DecoderConfig, options, MODEL_DEFAULTS)
    if seq_len > model_cfg.max_seq_len:
        raise ToolkitError(f"--seq-len {seq_len} exceeds --max-seq-len {model_cfg.max_seq_len}")
    tok = prepare_tokenizer(
        out_dir, train_stories, model_cfg.vocab_size, resume, gpt2_dir, lowercase=False
    )
    model_cfg = dataclasses.replace(model_cfg, vocab_size=tok.get_vocab_size())
    eos_id = special_ids(tok)["eos_id"]
    started = time.time()
    stream = lm_token_stream(tok, train_stories, eos_id)
    val_stream = lm_token_stream(tok, val, eos_id)
    val_bytes = sum(len(s.encode("utf-8")) for s in val)
    train_bytes = sum(len(s.encode("utf-8")) for s in train_stories)
    print(
        f"tokenized {len(stream):,} train / {len(val_stream):,} held-out tokens in "
        f"{time.time() - started:.1f} s ({len(stream) / train_bytes:.3f} tokens/byte)"
    )
    task = StoriesTask(stream, val_stream, val_bytes, seq_len)
    summary = train(
        task,
        model_cfg,
        build(TrainConfig, options, TRAIN_DEFAULTS),
        out_dir,
        resume=resume,
        task_config={"seq_len": seq_len},
    )
    report_run(out_dir, summary, "decoder")


if __name__ == "__main__":
    main()
