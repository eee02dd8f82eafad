"""Fine-tune a Hugging Face encoder as a text classifier with the project's trainer:
``python -m train.hf_finetune --init-from DIR --out-dir checkpoints/minilm``.

DIR is a ``save_pretrained`` folder of a BERT, DistilBERT or RoBERTa encoder (loaded offline,
never remote code), checked before any data is read or ``--out-dir`` is made: config.json, a
supported model_type, weight files that open, tokenizer.json. A bare encoder gets masked mean
pooling + a new Linear head (``train.hf_model``); a ``*ForSequenceClassification`` folder keeps
its own head and is trained on (its label count must be the data's). The labels come from the
data: ``sample``/``hub`` are IMDB (negative/positive); a folder's ``train.jsonl`` holds
``{"text", "label"}`` lines whose labels are all integers 0..K-1 or all strings (names; in the
order of the folder's id2label when its head has named labels, else sorted). The hold-out
split, checkpoints (best.pt, last.pt, history.json, curves), exact resume (``--resume``) and
per-epoch validation are those of ``train.imdb``. ``--text-cleaning imdb`` (the default for
IMDB: sample, hub, a DIR/imdb/train.jsonl) replaces names and ``<br />`` tags as train.data
does; ``none`` (the default for any other train.jsonl) trains on the text as given. The choice
is recorded as ``text_cleaning`` in the checkpoint, and export.hf gives the runtime the same
rule. ``--num-labels K`` sets the head's label count when the data does not show every label
(K >= the largest integer label + 1). The folder's tokenizer.json is copied beside
the checkpoints with padding and truncation off (texts are truncated head + tail to
``--max-seq-len`` like our own classifier's). The first run writes ``init.pt`` (the pretrained
weights in our checkpoint format) and starts from it. Export the result with
``python -m export.hf --model OUT_DIR/best.pt --output models/NAME.onnx``.
"""
from __future__ import annotations

import contextlib
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, List, Optional, Sequence, Tuple, Union

import click

from common.errors import ToolkitError, exit_on_toolkit_error
from common.fileio import atomic_write_text
from common.text import clean_imdb_text, encode_classifier_texts
from train import data as datasets_
from train import distributed
from train.checkpoint import TOKENIZER_FILE, load_checkpoint, save_checkpoint
from train.cli_options import build, dataclass_options
from train.imdb import LABELS, ImdbTask, check_fraction, split_holdout
from train.trainer import TrainConfig, report_run, train

# Usual BERT fine-tuning settings (Devlin et al.): small lr, short warmup, one or two epochs.
TRAIN_DEFAULTS = dict(epochs=2, batch_size=16, lr=5e-5, warmup_steps=100, weight_decay=0.01)
INIT_FILE = "init.pt"
TRAIN_FILE = "train.jsonl"
TEXT_CLEANINGS = ("imdb", "none")  # train.data's clean_imdb_text, or the text as given
_DEFAULT_NAME = re.compile(r"LABEL_\d+")  # transformers' id2label when none was given
Label = Union[int, str]


@dataclass
class Folder:
    """What ``check_folder`` found. head_labels: the id2label names of the folder's own
    classification head (None for a bare encoder; transformers' LABEL_i defaults count as
    unnamed, so [] then, with head_count set)."""

    path: Path
    model_type: str
    tokenizer: Any  # tokenizers.Tokenizer, padding and truncation off
    head_count: Optional[int] = None
    head_labels: Optional[List[str]] = None


def check_folder(folder: Path) -> Folder:
    """One line naming the folder and what is wrong with it, before any data is read."""
    from train.hf_model import ENCODER_TYPES, has_classification_head, weight_files

    where = f"--init-from {folder}"
    if not (folder / "config.json").is_file():
        raise ToolkitError(f"{where}: no config.json (expected a save_pretrained folder)")
    try:
        raw = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ToolkitError(f"{where}: config.json is not valid JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise ToolkitError(f"{where}: config.json is not a JSON object")
    if raw.get("auto_map"):
        raise ToolkitError(f"{where}: the checkpoint needs remote code (auto_map); "
                           "trust_remote_code is never enabled here")
    model_type = raw.get("model_type")
    if model_type not in ENCODER_TYPES:
        raise ToolkitError(
            f"{where}: model_type {model_type!r} {raw.get('architectures') or []} cannot be "
            f"fine-tuned here; supported encoders: {', '.join(ENCODER_TYPES)}")
    weight_files(folder, "--init-from")  # each file opens: a corrupt one is named here
    if not (folder / "tokenizer.json").is_file():
        raise ToolkitError(f"{where}: no tokenizer.json (the fast tokenizer file)")
    found = Folder(folder, model_type, read_tokenizer(folder / "tokenizer.json"))
    if has_classification_head(raw):
        problem = raw.get("problem_type")
        if problem not in (None, "single_label_classification"):
            raise ToolkitError(f"{where}: its head is for {problem}; fine-tuning here trains "
                               "single-label classification (start from the bare encoder)")
        id2label = raw.get("id2label") or {}
        names = [str(id2label.get(str(i), id2label.get(i, ""))) for i in range(len(id2label))]
        found.head_count = len(id2label) or int(raw.get("num_labels", 2))
        found.head_labels = [] if all(_DEFAULT_NAME.fullmatch(n) for n in names) else names
    return found


def read_tokenizer(path: Path):
    from tokenizers import Tokenizer

    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as exc:  # the Rust bindings raise plain Exception
        raise ToolkitError(f"tokenizer {path} is unreadable ({str(exc).splitlines()[0]})") \
            from None
    tok.no_padding()
    tok.no_truncation()
    return tok


# -- data: texts and labels, the label names and their ids ---------------------------------
def load_labelled(data_source: Optional[str], limit: int, cleaning: Optional[str] = None
                  ) -> Tuple[List[str], List[Label], str, str]:
    """(texts, raw labels, where, cleaning) of the training split: IMDB (sample, hub) or
    TRAIN_FILE of a folder (its ``imdb/`` subfolder too), the first ``limit`` when ``limit``.
    cleaning: "imdb" | "none" | None (imdb for IMDB data, none for another train.jsonl)."""
    source = datasets_.resolve_data_source(data_source)
    imdb_source = source in (datasets_.SAMPLE, datasets_.HUB)
    print(datasets_.describe_source(source, "IMDB" if imdb_source else "text"))
    if imdb_source:
        if cleaning == "none":
            raise ToolkitError(f"--text-cleaning none: IMDB ({source}) is read cleaned by "
                               "train.data; give raw text as a folder's train.jsonl")
        texts, labels = datasets_.imdb_splits(source)["train"]  # already cleaned
        return _first(texts, limit), _first(labels, limit), f"IMDB ({source})", "imdb"
    path = _train_file(Path(source))
    if cleaning is None:  # the project's IMDB layout is DIR/imdb/train.jsonl
        cleaning = "imdb" if path.parent.name == "imdb" else "none"
    texts, labels = read_labelled_jsonl(path)
    texts = [clean_imdb_text(t) for t in texts] if cleaning == "imdb" else texts
    return _first(texts, limit), _first(labels, limit), str(path), cleaning


def _first(values: Sequence[Any], limit: int) -> List[Any]:
    return list(values[:limit] if limit else values)


def _train_file(folder: Path) -> Path:
    for candidate in (folder / TRAIN_FILE, folder / "imdb" / TRAIN_FILE):
        if candidate.is_file():
            return candidate
    raise ToolkitError(f"--data {folder}: no {TRAIN_FILE} (one {{\"text\": str, \"label\": "
                       "int 0..K-1 or str}} object a line), nor imdb/" + TRAIN_FILE)


def read_labelled_jsonl(path: Path) -> Tuple[List[str], List[Label]]:
    """``{"text", "label"}`` lines, labels all ints >= 0 or all non-empty strings; errors name
    ``file:line``. Texts as written (``load_labelled`` cleans them when asked)."""
    texts: List[str] = []
    labels: List[Label] = []
    for lineno, text, label in datasets_.text_label_records(path):
        is_int = type(label) is int and label >= 0  # bool is an int: refused too
        if not (is_int or (isinstance(label, str) and label.strip())):
            raise ToolkitError(f"{path}:{lineno}: label {label!r}: expected an integer >= 0 or "
                               "a label name")
        if labels and isinstance(label, str) != isinstance(labels[0], str):
            raise ToolkitError(f"{path}:{lineno}: label {label!r}: the file mixes integer and "
                               "string labels; use one kind")
        texts.append(text)
        labels.append(label)
    if not texts:
        raise ToolkitError(f"{path} holds no examples: expected one {{\"text\", \"label\"}} "
                           "object a line")
    return texts, labels


def resolve_labels(raw: Sequence[Label], folder: Folder, where: str,
                   num_labels: Optional[int] = None) -> Tuple[List[str], List[int]]:
    """(label names, label id per example). Integer labels 0..K-1 are ids (names: the head's,
    else negative/positive for K = 2 as IMDB's, else label_i); string labels are names (ids in
    the order of the head's named labels, else sorted). num_labels: K when the data does not
    show every label (at least the count the data needs; names label_i for the unseen)."""
    if isinstance(raw[0], str):
        seen = sorted(set(raw))
        named = folder.head_labels
        if named and not set(seen) <= set(named):
            raise ToolkitError(f"{where}: labels {seen} are not the names of {folder.path}'s "
                               f"classification head {named}")
        names = list(named) if named else seen
        names += [f"label_{i}" for i in range(len(names),
                                              _label_count(len(names), num_labels, where))]
        index = {name: i for i, name in enumerate(names)}
        ids = [index[label] for label in raw]
    else:
        ids = [int(label) for label in raw]
        count = _label_count(max(ids) + 1, num_labels, where)
        names = list(folder.head_labels) if folder.head_labels and \
            len(folder.head_labels) == count else \
            (list(LABELS) if count == 2 else [f"label_{i}" for i in range(count)])
    if len(names) < 2:
        raise ToolkitError(f"{where}: only one label ({names[0]!r}); a classifier needs two or "
                           "more")
    if folder.head_count is not None and folder.head_count != len(names):
        raise ToolkitError(
            f"--init-from {folder.path}: its classification head has {folder.head_count} "
            f"labels but {where} has {len(names)} {names}; fine-tune it on data with its "
            "labels, or start from the bare encoder")
    return names, ids


def _label_count(needed: int, num_labels: Optional[int], where: str) -> int:
    if num_labels is None:
        return needed
    if num_labels < needed:
        raise ToolkitError(f"--num-labels {num_labels}: {where} needs at least {needed} "
                           "labels (its largest label id + 1, or its label names)")
    return num_labels


# -- checkpoints ------------------------------------------------------------------------------
def initial_model(folder: Path, labels: Sequence[str], max_seq_len: int, head_seed: int):
    """The pretrained encoder (its own head, or a fresh mean-pooling one) as our model."""
    from train.hf_model import classifier_from_pretrained

    try:
        return classifier_from_pretrained(folder, num_labels=len(labels), head_seed=head_seed,
                                          max_seq_len=max_seq_len, labels=labels)
    except ToolkitError as exc:
        raise ToolkitError(f"--init-from {exc}") from None


def check_resumed_labels(init: Path, labels: Sequence[str], cleaning: str = "imdb") -> None:
    started = load_checkpoint(init).state.get("train_config") or {}
    saved = started.get("labels")
    if saved is not None and list(saved) != list(labels):
        raise ToolkitError(f"--resume: {init} was started with labels {saved}, the data has "
                           f"{list(labels)}")
    was = started.get("text_cleaning", "imdb")
    if was != cleaning:
        raise ToolkitError(f"--resume: {init} was started with --text-cleaning {was}, this run "
                           f"has {cleaning}")


@contextlib.contextmanager
def removed_if_left_empty(out_dir: Path) -> Iterator[None]:
    """A run that fails before writing anything leaves no empty --out-dir behind."""
    existed = out_dir.exists()
    try:
        yield
    except BaseException:
        if not existed and out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()
        raise


@click.command(context_settings={"show_default": True})
@click.option("--init-from", "folder", required=True, type=click.Path(path_type=Path),
              help="save_pretrained folder of a BERT/DistilBERT/RoBERTa encoder")
@click.option("--data", "data_source", default=None,
              help="sample | hub | DIR with train.jsonl ({text, label}: label 0..K-1 or a name) "
                   "[default: $DATA_DIR, $DATA, hub]")
@click.option("--out-dir", type=click.Path(path_type=Path), default=Path("checkpoints/hf_imdb"))
@click.option("--val-size", type=int, default=1000, help="examples held out of train for epoch "
              "eval")
@click.option("--limit", type=int, default=0, help="use only the first N training examples")
@click.option("--max-seq-len", type=int, default=256, help="tokens per text (head + tail)")
@click.option("--word-dropout", type=float, default=0.0,
              help="fraction of tokens hidden from each training text")
@click.option("--head-seed", type=int, default=0, help="seed of a new classification head")
@click.option("--text-cleaning", type=click.Choice(TEXT_CLEANINGS), default=None,
              help="imdb: names and <br /> tags replaced as train.data does; none: the text as "
                   "given [default: imdb for IMDB data, none for another train.jsonl]")
@click.option("--num-labels", type=int, default=None,
              help="labels of the head [default: from the data: largest id + 1, or its names]")
@click.option("--resume", is_flag=True, help="continue from OUT_DIR/last.pt")
@dataclass_options(TrainConfig, TRAIN_DEFAULTS)
@exit_on_toolkit_error
def main(folder, data_source, out_dir, val_size, limit, max_seq_len, word_dropout, head_seed,
         text_cleaning, num_labels, resume, **options):
    """Fine-tune a pretrained encoder on labelled texts (IMDB, the generated sample, or a
    folder's train.jsonl); keep the best epoch."""
    distributed.setup()  # under torchrun: join the job first, so only rank 0 prints
    check_fraction("--word-dropout", word_dropout)
    found = check_folder(folder)
    texts, raw_labels, where, text_cleaning = load_labelled(data_source, limit, text_cleaning)
    labels, label_ids = resolve_labels(raw_labels, found, where, num_labels)
    tr_texts, tr_labels, val_texts, val_labels = split_holdout(texts, label_ids, val_size)
    train_cfg = build(TrainConfig, options, TRAIN_DEFAULTS)
    resuming = resume and (out_dir / "last.pt").is_file()
    init = out_dir / INIT_FILE
    task_config = {"word_dropout": word_dropout, "labels": labels, "init_from": str(folder),
                   "text_cleaning": text_cleaning}
    def write_start() -> None:  # rank 0 only under torchrun; the others read init.pt
        with removed_if_left_empty(out_dir):
            if resuming and init.is_file():
                check_resumed_labels(init, labels, text_cleaning)
            else:  # the model loads before anything is written
                model = initial_model(folder, labels, max_seq_len, head_seed)
                save_checkpoint(init, model.cfg, model, train_config=task_config)
            atomic_write_text(out_dir / TOKENIZER_FILE, found.tokenizer.to_str(pretty=False))

    distributed.on_rank0_then_share(write_start)
    model_cfg = load_checkpoint(init).config
    print(f"labels: {', '.join(labels)}; head: {model_cfg.head}")
    started = time.time()
    # The tokenizer's post-processor adds [CLS] ... [SEP]; head + tail truncation keeps both.
    # The texts are cleaned (or not) already: clean=False, never twice.
    encoded = encode_classifier_texts(found.tokenizer, tr_texts, model_cfg.max_seq_len,
                                      clean=False)
    val_encoded = encode_classifier_texts(found.tokenizer, val_texts, model_cfg.max_seq_len,
                                          clean=False)
    print(f"tokenized {len(encoded)} train / {len(val_encoded)} held-out texts in "
          f"{time.time() - started:.1f} s")
    task = ImdbTask(encoded, tr_labels, val_encoded, val_labels, model_cfg.pad_id, word_dropout)
    summary = train(task, model_cfg, train_cfg, out_dir, resume=resuming,
                    task_config=task_config, init_from=None if resuming else init)
    report_run(out_dir, summary, "classifier")


if __name__ == "__main__":
    main()
