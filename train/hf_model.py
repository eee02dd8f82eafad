"""Hugging Face encoders as trainable classifiers with this project's checkpoints.

A bare encoder (``BertModel`` such as all-MiniLM-L6-v2, ``RobertaModel``, ``DistilBertModel``)
gets the head our own classifier has: masked mean pooling over the real tokens, then one
``nn.Linear(hidden, num_labels)`` initialised like ours (normal, std 0.02, zero bias) from a
seed. ``HFEncoderClassifier`` has the call signature of ``train.model.EncoderClassifier``
(``model(ids, mask, position_ids=None)``, ``model.cfg``, ``model.ngram``), so the IMDB task,
the trainer, evaluation and checkpoints take it unchanged.

A checkpoint's ``model_config`` holds ``source: "transformers"`` and the whole HF config, so
``load_checkpoint`` rebuilds the encoder from the checkpoint alone (``transformers`` is imported
only then). ``config_to_dict``/``config_from_dict``/``build_model`` dispatch between these and
``train.model``'s own configs.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Dict, Optional

import torch
import torch.nn as nn

from common.errors import ToolkitError
from train import model as own_models

SOURCE = "transformers"
ENCODER_TYPES = ("bert", "distilbert", "roberta")
MEAN_LINEAR_HEAD = "mean-pooling+linear"


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

    def __hash__(self):  # hf_config is a dict: hash what identifies the architecture
        return hash((self.model_type, self.num_labels, self.max_seq_len, self.vocab_size))


def position_offset(model_type: str, hf_config: Dict[str, Any]) -> int:
    """RoBERTa numbers positions from padding_idx + 1; BERT and DistilBERT from 0."""
    return int(hf_config.get("pad_token_id", 1)) + 1 if model_type == "roberta" else 0


def usable_positions(model_type: str, hf_config: Dict[str, Any]) -> int:
    return int(hf_config["max_position_embeddings"]) - position_offset(model_type, hf_config)


class HFEncoderClassifier(nn.Module):
    """transformers encoder -> masked mean pooling -> Linear(hidden, num_labels)."""

    ngram = None  # train.imdb removes word-dropped tokens unless the model reads neighbours

    def __init__(self, cfg: HFClassifierConfig, encoder: Optional[nn.Module] = None):
        super().__init__()
        self.cfg = cfg
        self.encoder = encoder if encoder is not None else _encoder_from_config(cfg)
        hidden = self.encoder.config.hidden_size if hasattr(self.encoder.config, "hidden_size") \
            else self.encoder.config.dim
        self.head = nn.Linear(hidden, cfg.num_labels)
        gen = torch.Generator().manual_seed(cfg.head_seed)
        with torch.no_grad():
            self.head.weight.copy_(torch.randn(self.head.weight.shape, generator=gen) * 0.02)
            self.head.bias.zero_()
        self.offset = position_offset(cfg.model_type, cfg.hf_config)

    def encode(self, input_ids, attention_mask, position_ids=None):
        """-> (batch, seq, hidden) last hidden states."""
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if position_ids is not None:  # word-dropped batches keep each token's real position
            kwargs["position_ids"] = position_ids + self.offset
        elif self.offset:  # right-padded rows: real tokens sit at offset, offset + 1, ...
            seq = input_ids.shape[1]
            kwargs["position_ids"] = (torch.arange(seq, device=input_ids.device) + self.offset
                                      ).unsqueeze(0).expand(input_ids.shape[0], seq)
        if self.cfg.model_type == "distilbert" and position_ids is not None:
            raise ToolkitError("DistilBERT takes no position_ids: train it with --word-dropout 0")
        return self.encoder(**kwargs).last_hidden_state

    def forward(self, input_ids, attention_mask, position_ids=None):
        """input_ids, attention_mask (batch, seq) int64 -> logits (batch, num_labels)."""
        x = self.encode(input_ids, attention_mask, position_ids)  # (batch, seq, hidden)
        weights = attention_mask.to(x.dtype).unsqueeze(-1)  # (batch, seq, 1)
        pooled = (x * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        return self.head(pooled)


def _encoder_from_config(cfg: HFClassifierConfig) -> nn.Module:
    from transformers import AutoConfig, AutoModel

    hf = dict(cfg.hf_config)
    hf.pop("model_type", None)
    config = AutoConfig.for_model(cfg.model_type, **hf)
    return AutoModel.from_config(config, trust_remote_code=False)


def classifier_from_pretrained(folder, num_labels: int = 2, head_seed: int = 0,
                               max_seq_len: Optional[int] = None) -> HFEncoderClassifier:
    """A bare encoder from a ``save_pretrained`` folder (offline) with a fresh head."""
    from transformers import AutoModel

    encoder = AutoModel.from_pretrained(str(folder), local_files_only=True,
                                        trust_remote_code=False, dtype=torch.float32)
    config = encoder.config
    hf_config = config.to_dict()
    positions = usable_positions(config.model_type, hf_config)
    cfg = HFClassifierConfig(
        model_type=config.model_type, hf_config=hf_config, num_labels=num_labels,
        max_seq_len=min(max_seq_len or positions, positions), vocab_size=config.vocab_size,
        pad_id=int(config.pad_token_id or 0), head_seed=head_seed)
    return HFEncoderClassifier(cfg, encoder).eval()


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
