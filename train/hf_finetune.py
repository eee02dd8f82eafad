"""Fine-tune a Hugging Face encoder on IMDB with the project's trainer:
``python -m train.hf_finetune --init-from DIR --out-dir checkpoints/minilm``.

DIR is a ``save_pretrained`` folder of a BERT, DistilBERT or RoBERTa encoder (loaded offline,
never remote code). The model is the encoder + masked mean pooling + a Linear head
(``train.hf_model``); the task, hold-out split, checkpoints (best.pt, last.pt, history.json,
curves), exact resume (``--resume``) and per-epoch validation are those of ``train.imdb``. The
folder's tokenizer.json is copied beside the checkpoints with padding and truncation off (texts
are truncated head + tail to ``--max-seq-len`` like our own classifier's). The first run writes
``init.pt`` (the pretrained weights in our checkpoint format) and starts from it. Export the
result with ``python -m export.hf --model OUT_DIR/best.pt --output models/NAME.onnx``.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import click

from common.errors import ToolkitError, exit_on_toolkit_error
from common.fileio import atomic_write_text
from train.batching import encode_texts
from train.checkpoint import TOKENIZER_FILE, load_checkpoint, save_checkpoint
from train.cli_options import build, dataclass_options
from train.imdb import LABELS, ImdbTask, check_fraction, load_train_holdout
from train.trainer import TrainConfig, report_run, train

# Usual BERT fine-tuning settings (Devlin et al.): small lr, short warmup, one or two epochs.
TRAIN_DEFAULTS = dict(epochs=2, batch_size=16, lr=5e-5, warmup_steps=100, weight_decay=0.01)
INIT_FILE = "init.pt"


def prepare_tokenizer(folder: Path, out_dir: Path):
    """The folder's tokenizer.json, padding/truncation off, saved as OUT_DIR/tokenizer.json."""
    from tokenizers import Tokenizer

    source = folder / "tokenizer.json"
    tok = Tokenizer.from_file(str(source))
    tok.no_padding()
    tok.no_truncation()
    atomic_write_text(out_dir / TOKENIZER_FILE, tok.to_str(pretty=False))
    return tok


WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


def check_folder(folder: Path) -> None:
    """One line naming what the folder lacks, before any data is read."""
    if not (folder / "config.json").is_file():
        raise ToolkitError(f"--init-from {folder}: no config.json (expected a save_pretrained "
                           "folder)")
    if json.loads((folder / "config.json").read_text(encoding="utf-8")).get("auto_map"):
        raise ToolkitError(f"--init-from {folder}: the checkpoint needs remote code (auto_map); "
                           "trust_remote_code is never enabled here")
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise ToolkitError(f"--init-from {folder}: no weights (expected one of "
                           f"{', '.join(WEIGHT_FILES)})")
    if not (folder / "tokenizer.json").is_file():
        raise ToolkitError(f"--init-from {folder}: no tokenizer.json (the fast tokenizer file)")


def initial_checkpoint(folder: Path, out_dir: Path, max_seq_len: int, head_seed: int) -> Path:
    """OUT_DIR/init.pt: the pretrained encoder and a fresh head, in our checkpoint format."""
    from train.hf_model import classifier_from_pretrained

    try:
        model = classifier_from_pretrained(folder, num_labels=len(LABELS), head_seed=head_seed,
                                           max_seq_len=max_seq_len)
    except (OSError, ValueError) as exc:
        raise ToolkitError(f"--init-from {folder}: transformers cannot load it offline "
                           f"({str(exc).splitlines()[0]})") from None
    return save_checkpoint(out_dir / INIT_FILE, model.cfg, model,
                           train_config={"init_from": str(folder)})


@click.command(context_settings={"show_default": True})
@click.option("--init-from", "folder", required=True, type=click.Path(path_type=Path),
              help="save_pretrained folder of a BERT/DistilBERT/RoBERTa encoder")
@click.option("--data", "data_source", default=None,
              help="sample | hub | DIR with train.jsonl/test.jsonl "
                   "[default: $DATA_DIR, $DATA, hub]")
@click.option("--out-dir", type=click.Path(path_type=Path), default=Path("checkpoints/hf_imdb"))
@click.option("--val-size", type=int, default=1000, help="reviews held out of train for epoch eval")
@click.option("--limit", type=int, default=0, help="use only the first N training reviews")
@click.option("--max-seq-len", type=int, default=256, help="tokens per review (head + tail)")
@click.option("--word-dropout", type=float, default=0.0,
              help="fraction of tokens hidden from each training review")
@click.option("--head-seed", type=int, default=0, help="seed of the new classification head")
@click.option("--resume", is_flag=True, help="continue from OUT_DIR/last.pt")
@dataclass_options(TrainConfig, TRAIN_DEFAULTS)
@exit_on_toolkit_error
def main(folder, data_source, out_dir, val_size, limit, max_seq_len, word_dropout, head_seed,
         resume, **options):
    """Fine-tune a pretrained encoder on IMDB (or the generated sample); keep the best epoch."""
    check_fraction("--word-dropout", word_dropout)
    check_folder(folder)
    tr_texts, tr_labels, val_texts, val_labels = load_train_holdout(data_source, limit, val_size)
    train_cfg = build(TrainConfig, options, TRAIN_DEFAULTS)
    out_dir.mkdir(parents=True, exist_ok=True)
    resuming = resume and (out_dir / "last.pt").is_file()
    init = out_dir / INIT_FILE
    if not (resuming and init.is_file()):
        initial_checkpoint(folder, out_dir, max_seq_len, head_seed)
    model_cfg = load_checkpoint(init).config
    tok = prepare_tokenizer(folder, out_dir)
    started = time.time()
    # The tokenizer's post-processor adds [CLS] ... [SEP]; head + tail truncation keeps both.
    encoded = encode_texts(tok, tr_texts, model_cfg.max_seq_len)
    val_encoded = encode_texts(tok, val_texts, model_cfg.max_seq_len)
    print(f"tokenized {len(encoded)} train / {len(val_encoded)} held-out reviews in "
          f"{time.time() - started:.1f} s")
    task = ImdbTask(encoded, tr_labels, val_encoded, val_labels, model_cfg.pad_id, word_dropout)
    task_config = {"word_dropout": word_dropout, "labels": LABELS, "init_from": str(folder)}
    summary = train(task, model_cfg, train_cfg, out_dir, resume=resuming,
                    task_config=task_config, init_from=None if resuming else init)
    report_run(out_dir, summary, "classifier")


if __name__ == "__main__":
    main()
