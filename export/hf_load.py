"""Load a Hugging Face ``save_pretrained`` folder (or a checkpoint fine-tuned from one) offline.

Every check that can be made before ``transformers`` builds the model is made first, so a bad
folder gets one line naming what is missing: no config.json, remote code (``auto_map``; we
never pass ``trust_remote_code``), an architecture the export has no wrapper for, no weights,
weights that leave modules uninitialised, no ``tokenizer.json``, or a tokenizer whose ids do not
fit the model's embedding.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from common.errors import ToolkitError
from common.fileio import sha256_file

ENCODERS = ("bert", "distilbert", "roberta", "electra")
DECODERS = ("gpt2", "gpt_neo", "llama", "qwen2", "mistral", "phi3", "gemma")
KIND_OF = {**{t: "classifier" for t in ENCODERS}, **{t: "decoder" for t in DECODERS}}
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
TOKENIZER_FILE = "tokenizer.json"
SEQUENCE_CLASSIFICATION = "sequence-classification"


@dataclass
class HFModel:
    """What the export needs from a folder. ``model`` is in eval mode, fp32, on CPU:
    ``*ForSequenceClassification``, ``train.hf_model.HFEncoderClassifier`` (bare encoder + our
    head) or ``*ForCausalLM``/``*LMHeadModel``."""

    source: Path  # the folder, or the fine-tuned checkpoint .pt
    model_type: str
    kind: str  # "classifier" | "decoder"
    model: Any
    hf_config: Any  # transformers.PretrainedConfig
    tokenizer: Any  # tokenizers.Tokenizer
    tokenizer_path: Path
    head: str  # SEQUENCE_CLASSIFICATION | train.hf_model.MEAN_LINEAR_HEAD | "lm-head"
    labels: List[str] = field(default_factory=list)
    head_note: str = ""
    weight_files: List[Path] = field(default_factory=list)
    # A folder's texts as AutoTokenizer reads them: its truncation side (tokenizer_config.json,
    # else tokenizer.json's truncation.direction, else right). A train.hf_finetune checkpoint:
    # the cleaning it was trained with (its train_config "text_cleaning").
    truncation_side: str = "right"
    text_cleaning: Optional[str] = None

    def sha256(self) -> str:
        """The weight file's hash, or a hash of the shards' hashes."""
        if len(self.weight_files) == 1:
            return sha256_file(self.weight_files[0])
        joined = "".join(sha256_file(p) for p in sorted(self.weight_files))
        return hashlib.sha256(joined.encode()).hexdigest()


def load_hf(path: str | Path, task: Optional[str] = None, num_labels: int = 2,
            head_seed: int = 0) -> HFModel:
    """A folder in ``save_pretrained`` format, or a ``.pt`` checkpoint of ``train.hf_finetune``.

    task: "classifier" | "decoder" to refuse a model of the other kind. num_labels, head_seed:
    the mean-pooling head made for a bare encoder (its weights are random: fine-tune it).
    """
    path = Path(path)
    if path.suffix == ".pt":
        return _load_finetuned(path, task)
    if not path.is_dir():
        raise ToolkitError(f"--model {path}: expected a save_pretrained folder (or a .pt "
                           "checkpoint of train.hf_finetune)")
    raw = read_config(path)
    model_type = check_architecture(path, raw)
    kind = KIND_OF[model_type]
    if task is not None and task != kind:
        raise ToolkitError(f"{path}: a {model_type} model is a {kind}, not a {task}")
    weights = weight_files(path)
    tokenizer_path = path / TOKENIZER_FILE
    if not tokenizer_path.is_file():
        raise ToolkitError(f"{path}: no {TOKENIZER_FILE} (the fast tokenizer file; save it with "
                           "tokenizer.save_pretrained)")
    _read_tokenizer(tokenizer_path)  # one line for an unreadable file, before transformers
    tokenizer, truncation_side = folder_tokenizer(path)
    model, head, note = _build(path, raw, kind, num_labels, head_seed)
    config = model.encoder.config if hasattr(model, "encoder") else model.config
    check_vocabulary(tokenizer, tokenizer_path, model)
    return HFModel(source=path, model_type=model_type, kind=kind, model=model, hf_config=config,
                   tokenizer=tokenizer, tokenizer_path=tokenizer_path, head=head,
                   labels=labels_of(config, head, num_labels), head_note=note,
                   weight_files=weights, truncation_side=truncation_side)


def read_config(folder: Path) -> Dict[str, Any]:
    path = folder / "config.json"
    if not path.is_file():
        raise ToolkitError(f"{folder}: no config.json (expected a save_pretrained folder)")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ToolkitError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise ToolkitError(f"{path}: expected a JSON object")
    return raw


def check_architecture(folder: Path, raw: Dict[str, Any]) -> str:
    """The model_type, if this export has a wrapper for it and it needs no remote code."""
    if raw.get("auto_map"):
        raise ToolkitError(
            f"{folder}: the checkpoint needs remote code (config.json auto_map "
            f"{sorted(raw['auto_map'])}); trust_remote_code is never enabled here")
    model_type = raw.get("model_type")
    if model_type not in KIND_OF:
        archs = raw.get("architectures") or []
        raise ToolkitError(
            f"{folder}: unsupported architecture model_type {model_type!r} {archs}; supported: "
            f"{', '.join(ENCODERS + DECODERS)}")
    return model_type


def weight_files(folder: Path) -> List[Path]:
    """The folder's weight files, each checked to open (empty, truncated or random bytes are one
    line naming the file): ``train.hf_model.weight_files``, shared with train.hf_finetune."""
    from train.hf_model import weight_files as checked_weight_files

    return checked_weight_files(folder)


def _read_tokenizer(path: Path):
    from tokenizers import Tokenizer

    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:  # the Rust bindings raise plain Exception
        raise ToolkitError(f"tokenizer {path} is unreadable ({str(exc).splitlines()[0]})") \
            from None
    # sentence-transformers folders pad every text to a fixed 128 and truncate there: our
    # runtime, calibration and training pad batches and truncate (head + tail) themselves, and
    # count every id the tokenizer returns as a real token.
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


def folder_tokenizer(folder: Path):
    """(tokenizers.Tokenizer, truncation side) of ``AutoTokenizer.from_pretrained(folder)``:
    the ids the runtime must give are transformers' own, and transformers may change
    tokenizer.json on loading (tokenizer_config.json's added special tokens; its add_bos_token /
    add_eos_token where a version rewrites the post-processor, ``update_post_processor``).
    Padding and truncation are switched off on the copy as ``_read_tokenizer`` does; the side
    is transformers' ``truncation_side`` (tokenizer_config.json first, then tokenizer.json's
    ``truncation.direction``: ``TokenizersBackend.__init__``'s setdefault)."""
    import transformers
    from tokenizers import Tokenizer

    try:
        auto = transformers.AutoTokenizer.from_pretrained(
            str(folder), local_files_only=True, trust_remote_code=False)
        backend = auto.backend_tokenizer
    except Exception as exc:  # transformers and the Rust bindings raise many kinds
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ToolkitError(f"{folder}: transformers' AutoTokenizer cannot load its tokenizer "
                           f"offline ({type(exc).__name__}: {first})") from None
    tokenizer = Tokenizer.from_str(backend.to_str())  # a copy: the switches below are ours
    tokenizer.no_padding()
    tokenizer.no_truncation()
    side = auto.truncation_side
    if side not in ("right", "left"):
        raise ToolkitError(f"{folder}: truncation_side {side!r}, expected right or left")
    return tokenizer, side


def check_vocabulary(tokenizer, tokenizer_path: Path, model) -> None:
    """Every token id the tokenizer can produce has an embedding row."""
    rows = model.get_input_embeddings().weight.shape[0] if hasattr(model, "get_input_embeddings") \
        else model.encoder.get_input_embeddings().weight.shape[0]
    largest = max(tokenizer.get_vocab(with_added_tokens=True).values())
    if largest >= rows:
        raise ToolkitError(
            f"{tokenizer_path}: token ids go up to {largest} but the model's embedding has "
            f"{rows} rows: the tokenizer does not match this model's vocabulary")


def _build(folder: Path, raw: Dict[str, Any], kind: str, num_labels: int, head_seed: int):
    """(model, head, note) loaded offline; modules the weights leave uninitialised are an error."""
    import torch
    import transformers

    archs = raw.get("architectures") or []
    seq_cls = any(a.endswith("ForSequenceClassification") for a in archs)
    if kind == "decoder":
        cls, head = transformers.AutoModelForCausalLM, "lm-head"
    elif seq_cls:
        cls, head = transformers.AutoModelForSequenceClassification, SEQUENCE_CLASSIFICATION
    else:
        cls, head = transformers.AutoModel, None
    try:
        model, info = cls.from_pretrained(
            str(folder), local_files_only=True, trust_remote_code=False, dtype=torch.float32,
            output_loading_info=True)
    except Exception as exc:  # safetensors, torch.load and transformers raise many kinds
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ToolkitError(f"{folder}: transformers cannot load it offline "
                           f"({type(exc).__name__}: {first})") from None
    # A bare encoder's pooler is never used (mean pooling), so its absence does not matter.
    missing = [k for k in info.get("missing_keys", []) if head or "pooler" not in k]
    if missing:
        raise ToolkitError(f"{folder}: the weights lack {len(missing)} tensors the model needs "
                           f"(first: {sorted(missing)[0]})")
    model.eval()
    if head is not None:
        return model, head, ""
    from train.hf_model import (
        MEAN_LINEAR_HEAD,
        HFClassifierConfig,
        HFEncoderClassifier,
        usable_positions,
    )

    hf_config = model.config.to_dict()
    cfg = HFClassifierConfig(
        model_type=model.config.model_type, hf_config=hf_config, num_labels=num_labels,
        max_seq_len=usable_positions(model.config.model_type, hf_config),
        vocab_size=model.config.vocab_size, pad_id=int(model.config.pad_token_id or 0),
        head_seed=head_seed)
    note = (f"{folder.name} has no classification head: masked mean pooling + "
            f"Linear({model.config.hidden_size if hasattr(model.config, 'hidden_size') else ''}"
            f", {num_labels}) initialised from seed {head_seed} (normal std 0.02, zero bias); "
            "its logits mean nothing until fine-tuned (train.hf_finetune)")
    return HFEncoderClassifier(cfg, model).eval(), MEAN_LINEAR_HEAD, note


def labels_of(config, head: str, num_labels: int) -> List[str]:
    if head == SEQUENCE_CLASSIFICATION:
        id2label = getattr(config, "id2label", None) or {}
        return [str(id2label.get(i, id2label.get(str(i), f"label_{i}")))
                for i in range(config.num_labels)]
    if head == "lm-head":
        return []
    return ["negative", "positive"] if num_labels == 2 else [f"label_{i}"
                                                             for i in range(num_labels)]


def _load_finetuned(path: Path, task: Optional[str]) -> HFModel:
    from train.checkpoint import load_checkpoint
    from train.hf_model import MEAN_LINEAR_HEAD, HFEncoderClassifier
    from train.hf_model import SEQUENCE_CLASSIFICATION as OWN_HEAD

    ckpt = load_checkpoint(path)
    if not isinstance(ckpt.model, HFEncoderClassifier):
        raise ToolkitError(f"{path} holds one of our own models: export it with "
                           "export.onnx_model --checkpoint")
    if task not in (None, "classifier"):
        raise ToolkitError(f"{path}: a fine-tuned encoder is a classifier, not a {task}")
    train_config = ckpt.state.get("train_config") or {}
    labels = train_config.get("labels")
    if not (isinstance(labels, list) and len(labels) == ckpt.config.num_labels):
        labels = labels_of(None, MEAN_LINEAR_HEAD, ckpt.config.num_labels)
    tokenizer_path = ckpt.tokenizer_path
    if not tokenizer_path.is_file():
        raise ToolkitError(f"{path}: no {tokenizer_path.name} beside the checkpoint")
    tokenizer = _read_tokenizer(tokenizer_path)
    check_vocabulary(tokenizer, tokenizer_path, ckpt.model)
    model, head, note = ckpt.model, MEAN_LINEAR_HEAD, "fine-tuned with train.hf_finetune"
    if ckpt.config.head == OWN_HEAD:  # the folder's own head, continued: export it as one
        model, head = ckpt.model.encoder, SEQUENCE_CLASSIFICATION
        model.cfg = ckpt.config  # export.hf reads the trained context (max_seq_len) here
        note += " (its own sequence-classification head)"
    return HFModel(source=path, model_type=ckpt.config.model_type, kind="classifier",
                   model=model, hf_config=ckpt.model.encoder.config, tokenizer=tokenizer,
                   tokenizer_path=tokenizer_path, head=head, labels=labels,
                   head_note=note, weight_files=[path],
                   # checkpoints written before the option were all IMDB-cleaned
                   text_cleaning=train_config.get("text_cleaning", "imdb"))
