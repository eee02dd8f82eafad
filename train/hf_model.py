"""Hugging Face encoders as trainable classifiers with this project's checkpoints.

A bare encoder (``BertModel`` such as all-MiniLM-L6-v2, ``RobertaModel``, ``DistilBertModel``)
gets the head our own classifier has: masked mean pooling over the real tokens, then one
``nn.Linear(hidden, num_labels)`` initialised like ours (normal, std 0.02, zero bias) from a
seed. A ``*ForSequenceClassification`` folder keeps its own head (``head:
"sequence-classification"``): the whole transformers model is trained on, so a fine-tuned
classifier is continued, not replaced. ``HFEncoderClassifier`` has the call signature of
``train.model.EncoderClassifier`` (``model(ids, mask, position_ids=None)``, ``model.cfg``,
``model.ngram``), so the IMDB task, the trainer, evaluation and checkpoints take it unchanged.

``weight_files`` finds a folder's weights and checks each file opens (a truncated, empty or
random safetensors/pytorch_model.bin is one line naming the file, not a library traceback);
``export.hf_load`` uses it too.

A checkpoint's ``model_config`` holds ``source: "transformers"`` and the whole HF config, so
``load_checkpoint`` rebuilds the encoder from the checkpoint alone (``transformers`` is imported
only then). ``config_to_dict``/``config_from_dict``/``build_model`` dispatch between these and
``train.model``'s own configs.
"""
from __future__ import annotations

import json
import zipfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn as nn

from common.errors import ToolkitError
from train import model as own_models

SOURCE = "transformers"
ENCODER_TYPES = ("bert", "distilbert", "roberta")
MEAN_LINEAR_HEAD = "mean-pooling+linear"
SEQUENCE_CLASSIFICATION = "sequence-classification"  # the folder's own *ForSequenceClassification
HEADS = (MEAN_LINEAR_HEAD, SEQUENCE_CLASSIFICATION)
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


@dataclass(frozen=True)
class HFClassifierConfig:
    """An HF encoder + our mean-pooling linear head. hf_config: ``PretrainedConfig.to_dict()``."""

    model_type: str
    hf_config: Dict[str, Any]
    num_labels: int = 2
    max_seq_len: int = 512
    vocab_size: int = 0
    pad_id: int = 0
    head: str = MEAN_LINEAR_HEAD
    head_seed: int = 0

    kind = "classifier"
    source = SOURCE
    pooling = "mean"  # what train.validate asks; the tokenizer itself adds [CLS] ... [SEP]

    def __post_init__(self):
        if self.model_type not in ENCODER_TYPES:
            raise ToolkitError(f"model_type {self.model_type!r}: fine-tuning supports "
                               f"{list(ENCODER_TYPES)}")
        if self.num_labels < 2:
            raise ToolkitError(f"num_labels={self.num_labels}: expected at least 2")
        if self.head not in HEADS:
            raise ToolkitError(f"head {self.head!r}: expected one of {list(HEADS)}")

    def __hash__(self):  # hf_config is a dict: hash what identifies the architecture
        return hash((self.model_type, self.num_labels, self.max_seq_len, self.vocab_size))


def position_offset(model_type: str, hf_config: Dict[str, Any]) -> int:
    """RoBERTa numbers positions from padding_idx + 1; BERT and DistilBERT from 0."""
    return int(hf_config.get("pad_token_id", 1)) + 1 if model_type == "roberta" else 0


def usable_positions(model_type: str, hf_config: Dict[str, Any]) -> int:
    return int(hf_config["max_position_embeddings"]) - position_offset(model_type, hf_config)


class HFEncoderClassifier(nn.Module):
    """transformers encoder -> masked mean pooling -> Linear(hidden, num_labels); or, for
    ``head == SEQUENCE_CLASSIFICATION``, the ``*ForSequenceClassification`` model itself (in
    ``self.encoder``) with its own head."""

    ngram = None  # train.imdb removes word-dropped tokens unless the model reads neighbours

    def __init__(self, cfg: HFClassifierConfig, encoder: Optional[nn.Module] = None):
        super().__init__()
        self.cfg = cfg
        self.encoder = encoder if encoder is not None else _encoder_from_config(cfg)
        self.offset = position_offset(cfg.model_type, cfg.hf_config)
        if cfg.head == SEQUENCE_CLASSIFICATION:
            return
        hidden = self.encoder.config.hidden_size if hasattr(self.encoder.config, "hidden_size") \
            else self.encoder.config.dim
        self.head = nn.Linear(hidden, cfg.num_labels)
        gen = torch.Generator().manual_seed(cfg.head_seed)
        with torch.no_grad():
            self.head.weight.copy_(torch.randn(self.head.weight.shape, generator=gen) * 0.02)
            self.head.bias.zero_()

    def encode(self, input_ids, attention_mask, position_ids=None):
        """-> (batch, seq, hidden) last hidden states (the mean-pooling head's input)."""
        return self.encoder(**self._inputs(input_ids, attention_mask, position_ids)
                            ).last_hidden_state

    def _inputs(self, input_ids, attention_mask, position_ids=None) -> Dict[str, Any]:
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if position_ids is not None:  # word-dropped batches keep each token's real position
            kwargs["position_ids"] = position_ids + self.offset
        elif self.offset:  # right-padded rows: real tokens sit at offset, offset + 1, ...
            seq = input_ids.shape[1]
            kwargs["position_ids"] = (torch.arange(seq, device=input_ids.device) + self.offset
                                      ).unsqueeze(0).expand(input_ids.shape[0], seq)
        if self.cfg.model_type == "distilbert" and position_ids is not None:
            raise ToolkitError("DistilBERT takes no position_ids: train it with --word-dropout 0")
        return kwargs

    def forward(self, input_ids, attention_mask, position_ids=None):
        """input_ids, attention_mask (batch, seq) int64 -> logits (batch, num_labels)."""
        if self.cfg.head == SEQUENCE_CLASSIFICATION:
            return self.encoder(**self._inputs(input_ids, attention_mask, position_ids)).logits
        x = self.encode(input_ids, attention_mask, position_ids)  # (batch, seq, hidden)
        weights = attention_mask.to(x.dtype).unsqueeze(-1)  # (batch, seq, 1)
        pooled = (x * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        return self.head(pooled)


def _encoder_from_config(cfg: HFClassifierConfig) -> nn.Module:
    from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

    hf = dict(cfg.hf_config)
    hf.pop("model_type", None)
    config = AutoConfig.for_model(cfg.model_type, **hf)
    auto = AutoModelForSequenceClassification if cfg.head == SEQUENCE_CLASSIFICATION \
        else AutoModel
    return auto.from_config(config, trust_remote_code=False)


def has_classification_head(raw_config: Dict[str, Any]) -> bool:
    """config.json names a ``*ForSequenceClassification`` architecture."""
    return any(str(a).endswith("ForSequenceClassification")
               for a in raw_config.get("architectures") or [])


def classifier_from_pretrained(folder, num_labels: int = 2, head_seed: int = 0,
                               max_seq_len: Optional[int] = None,
                               labels: Optional[Sequence[str]] = None) -> HFEncoderClassifier:
    """A ``save_pretrained`` folder (offline) as a classifier: a ``*ForSequenceClassification``
    keeps its head (its num_labels must be ``num_labels``), a bare encoder gets a fresh
    mean-pooling head. labels: names stored as the config's id2label. ToolkitError (one line
    naming the folder) when the weights do not load or leave tensors uninitialised."""
    from transformers import AutoModel, AutoModelForSequenceClassification

    folder = Path(folder)
    raw = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    head = SEQUENCE_CLASSIFICATION if has_classification_head(raw) else MEAN_LINEAR_HEAD
    auto = AutoModelForSequenceClassification if head == SEQUENCE_CLASSIFICATION else AutoModel
    try:
        model, info = auto.from_pretrained(str(folder), local_files_only=True,
                                           trust_remote_code=False, dtype=torch.float32,
                                           output_loading_info=True)
    except Exception as exc:  # safetensors, torch.load and transformers raise many kinds
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ToolkitError(f"{folder}: transformers cannot load it offline "
                           f"({type(exc).__name__}: {first})") from None
    missing = [k for k in info.get("missing_keys", [])
               if head == SEQUENCE_CLASSIFICATION or "pooler" not in k]
    if missing:
        raise ToolkitError(f"{folder}: the weights lack {len(missing)} tensors the model needs "
                           f"(first: {sorted(missing)[0]})")
    config = model.config
    if head == SEQUENCE_CLASSIFICATION:
        if config.num_labels != num_labels:
            raise ToolkitError(
                f"{folder}: its classification head has {config.num_labels} labels but the "
                f"data has {num_labels}; fine-tune it on data with its labels, or start from "
                "the bare encoder")
        config.problem_type = "single_label_classification"  # what the trainer's loss is
    if labels is not None:
        config.id2label = {i: str(name) for i, name in enumerate(labels)}
        config.label2id = {str(name): i for i, name in enumerate(labels)}
    hf_config = config.to_dict()
    positions = usable_positions(config.model_type, hf_config)
    cfg = HFClassifierConfig(
        model_type=config.model_type, hf_config=hf_config, num_labels=num_labels,
        max_seq_len=min(max_seq_len or positions, positions), vocab_size=config.vocab_size,
        pad_id=int(config.pad_token_id or 0), head=head, head_seed=head_seed)
    return HFEncoderClassifier(cfg, model).eval()


# -- weight files: found, and each one openable, before transformers reads them --------------
def weight_files(folder: Path, option: str = "") -> List[Path]:
    """The weight files of a ``save_pretrained`` folder (an index's shards), each checked with
    ``check_weight_file``. option: the CLI option named in errors (``--init-from``)."""
    folder = Path(folder)
    named = f"{option} {folder}" if option else str(folder)
    for name in WEIGHT_FILES:
        path = folder / name
        if not path.is_file():
            continue
        shards = [path]
        if name.endswith(".index.json"):
            try:
                index = json.loads(path.read_text(encoding="utf-8"))
            except (ValueError, UnicodeDecodeError) as exc:
                raise ToolkitError(f"{path} is not valid JSON ({exc})") from None
            weight_map = index.get("weight_map") if isinstance(index, dict) else None
            shards = sorted({folder / s for s in (weight_map or {}).values()})
            missing = [s.name for s in shards if not s.is_file()]
            if missing or not shards:
                raise ToolkitError(f"{path}: weight shards missing: {missing or 'none listed'}")
        for shard in shards:
            check_weight_file(shard)
        return shards
    raise ToolkitError(f"{named}: no weights (expected one of {', '.join(WEIGHT_FILES)})")


def check_weight_file(path: Path) -> None:
    """One line naming ``path`` when it cannot be a weight file: empty, or truncated / not of
    its format. safetensors: opening reads the header and checks it covers the file exactly (no
    tensor is read). pytorch_model.bin: torch.save's zip archive (its central directory, at the
    end, must be there) or the legacy pickle (first byte 0x80)."""
    if path.stat().st_size == 0:
        raise ToolkitError(f"weight file {path} is empty: re-download or re-save the model")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt"):
                pass
        except Exception as exc:  # SafetensorError derives from Exception only
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ToolkitError(f"weight file {path} is not a readable safetensors file "
                               f"({first}): re-download or re-save the model") from None
        return
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                archive.namelist()
            return
        except (zipfile.BadZipFile, OSError) as exc:
            raise ToolkitError(f"weight file {path} is a damaged zip archive ({exc}): "
                               "re-download or re-save the model") from None
    with open(path, "rb") as f:
        if f.read(1) != b"\x80":
            raise ToolkitError(f"weight file {path} is truncated or not a PyTorch checkpoint "
                               "(neither torch.save's zip archive nor a pickle): re-download or "
                               "re-save the model")


# -- dispatch between our own configs and HF ones (used by train.checkpoint) ------------------
def config_to_dict(cfg) -> Dict[str, Any]:
    if isinstance(cfg, HFClassifierConfig):
        return {"kind": cfg.kind, "source": SOURCE, **asdict(cfg)}
    return own_models.config_to_dict(cfg)


def config_from_dict(d: Dict[str, Any]):
    if d.get("source") != SOURCE:
        return own_models.config_from_dict(d)
    d = {k: v for k, v in d.items() if k not in ("kind", "source")}
    unknown = sorted(set(d) - {f.name for f in fields(HFClassifierConfig)})
    if unknown:
        raise ToolkitError(f"transformers classifier config has unknown keys {unknown}")
    return HFClassifierConfig(**d)


def build_model(cfg) -> nn.Module:
    if isinstance(cfg, HFClassifierConfig):
        return HFEncoderClassifier(cfg)
    return own_models.build_model(cfg)
