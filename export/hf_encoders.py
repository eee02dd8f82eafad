"""Export wrappers of Hugging Face encoders (BERT, DistilBERT, RoBERTa, ELECTRA): the
classifier interface of CONTRIBUTING.md, ``input_ids``/``attention_mask`` (batch, seq) int32
-> ``logits``, plus ``token_type_ids`` (batch, seq) int32 for a sequence-classification model
whose config has ``type_vocab_size > 1`` (cross-encoders, NLI: a pair's second text has type 1).

The wrapper holds the HF model's own modules (embeddings, projections, LayerNorms, head), and
runs them through our post-LN block, so the graph has the same plain attention as our models.
Positions are 0, 1, ... (RoBERTa: from padding_idx + 1), which is what transformers computes
for the real tokens of the right-padded rows the runtime feeds; padded positions are neither
keys nor pooled, so their values never reach the logits.
"""
from __future__ import annotations

from typing import Dict, List, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from common.errors import ToolkitError
from export.hf_attention import activation, attend, split_heads


class PostLNLayer(nn.Module):
    """x = LN(x + attn(x)); x = LN(x + ffn(x)), as BERT-family encoders compute."""

    def __init__(self, q, k, v, o, ln_attn, ffn_in, ffn_out, ln_ffn, act, heads: int):
        super().__init__()
        self.q, self.k, self.v, self.o = q, k, v, o
        self.ln_attn, self.ln_ffn = ln_attn, ln_ffn
        self.ffn_in, self.ffn_out = ffn_in, ffn_out
        self.act = act
        self.heads = heads
        self.scale = (q.weight.shape[0] // heads) ** -0.5

    def forward(self, x, allowed):  # x (batch, seq, hidden), allowed (batch, 1, 1, seq) bool
        q, k, v = (split_heads(p(x), self.heads) for p in (self.q, self.k, self.v))
        x = self.ln_attn(x + self.o(attend(q, k, v, allowed, self.scale)))
        return self.ln_ffn(x + self.ffn_out(self.act(self.ffn_in(x))))


class FirstToken(nn.Module):
    """Head on the first token ([CLS] / <s>): e.g. Linear -> Tanh -> Linear."""

    def __init__(self, *modules):
        super().__init__()
        self.head = nn.Sequential(*modules)

    def forward(self, x, mask):  # x (batch, seq, hidden) -> (batch, labels)
        return self.head(x[:, 0])


class MeanPooled(nn.Module):
    """Masked mean over real tokens, then the head (train.hf_model.HFEncoderClassifier's)."""

    def __init__(self, head: nn.Module):
        super().__init__()
        self.head = head

    def forward(self, x, mask):
        weights = mask.unsqueeze(-1)  # (batch, seq, 1) fp32
        return self.head((x * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0))


class EncoderForExport(nn.Module):
    """input_ids, attention_mask: (batch, seq) int32 -> logits (batch, num_labels) fp32."""

    input_names = ["input_ids", "attention_mask"]
    output_names = ["logits"]

    token_types = False

    def __init__(self, word, pos, pos_offset: int, type_row, ln_emb, layers: List[nn.Module],
                 pooled_head: nn.Module, vocab_size: int, project: nn.Module | None = None):
        super().__init__()
        self.word, self.pos, self.ln_emb = word, pos, ln_emb
        # ELECTRA: embedding_size -> hidden_size after the embeddings' LayerNorm
        self.project = project if project is not None else nn.Identity()
        self.pos_offset = pos_offset
        # token type 0 for every token: one constant row, (hidden,)
        self.register_buffer("type_row", type_row.detach().clone() if type_row is not None
                             else torch.zeros(word.weight.shape[1]), persistent=False)
        self.layers = nn.ModuleList(layers)
        self.pooled_head = pooled_head
        self.vocab_size = vocab_size

    def forward(self, input_ids, attention_mask):
        return self.encode(input_ids, attention_mask, self.type_row)

    def encode(self, input_ids, attention_mask, types):
        """types: (hidden,) one row for every token, or (batch, seq, hidden)."""
        seq = input_ids.shape[1]
        mask = attention_mask.to(torch.float32)  # (batch, seq)
        positions = self.pos.weight[self.pos_offset:self.pos_offset + seq]  # (seq, hidden)
        x = self.ln_emb(F.embedding(input_ids.to(torch.int64), self.word.weight)
                        + positions.unsqueeze(0)
                        + types)
        x = self.project(x)
        allowed = (attention_mask != 0)[:, None, None, :]  # (batch, 1, 1, seq) over keys
        for layer in self.layers:
            x = layer(x, allowed)
        return self.pooled_head(x, mask)

    def dynamic_axes(self) -> Dict[str, Dict[int, str]]:
        return {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"},
                "logits": {0: "batch"}}

    def dummy_inputs(self, batch: int = 2, seq: int = 7) -> Tuple[torch.Tensor, ...]:
        gen = torch.Generator().manual_seed(0)
        input_ids = torch.randint(0, self.vocab_size, (batch, seq), generator=gen,
                                  dtype=torch.int32)  # (batch, seq)
        attention_mask = torch.ones((batch, seq), dtype=torch.int32)  # (batch, seq)
        attention_mask[1, seq - 2:] = 0
        return input_ids, attention_mask


class PairEncoderForExport(EncoderForExport):
    """+ token_type_ids (batch, seq) int32, looked up in the model's token type table."""

    input_names = ["input_ids", "attention_mask", "token_type_ids"]
    token_types = True

    def __init__(self, type_table: nn.Embedding, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.type_table = type_table

    def forward(self, input_ids, attention_mask, token_type_ids):
        types = F.embedding(token_type_ids.to(torch.int64), self.type_table.weight)
        return self.encode(input_ids, attention_mask, types)  # types (batch, seq, hidden)

    def dynamic_axes(self) -> Dict[str, Dict[int, str]]:
        return {**super().dynamic_axes(), "token_type_ids": {0: "batch", 1: "seq"}}

    def dummy_inputs(self, batch: int = 2, seq: int = 7) -> Tuple[torch.Tensor, ...]:
        input_ids, attention_mask = super().dummy_inputs(batch, seq)
        token_type_ids = torch.zeros((batch, seq), dtype=torch.int32)  # (batch, seq)
        token_type_ids[:, seq // 2:] = 1
        return input_ids, attention_mask, token_type_ids


def encoder_wrapper(loaded, sentence_pairs: bool = False) -> EncoderForExport:
    """The export wrapper of an ``export.hf_load.HFModel`` classifier, in eval mode.

    sentence_pairs: add the ``token_type_ids`` input (cross-encoders, NLI). Opt-in, because a
    single-text classifier with a two-row type table (BERT, MiniLM) keeps the two-input graph
    that calibration, the benchmarks and the Triton ensemble feed."""
    model = loaded.model
    from export.hf_load import SEQUENCE_CLASSIFICATION

    if loaded.head == SEQUENCE_CLASSIFICATION:
        base = getattr(model, model.base_model_prefix)
        pooled_head = _classification_head(loaded.model_type, model, base)
    else:  # train.hf_model.HFEncoderClassifier
        base = model.encoder
        pooled_head = MeanPooled(model.head)
    build = {"bert": _bert_like, "roberta": _bert_like, "electra": _bert_like,
             "distilbert": _distilbert}
    wrapper = build[loaded.model_type](base, loaded.model_type, pooled_head, sentence_pairs)
    return wrapper.eval()


def _classification_head(model_type: str, model, base) -> nn.Module:
    if model_type == "bert":
        return FirstToken(base.pooler.dense, nn.Tanh(), model.classifier)
    if model_type == "roberta":
        return FirstToken(model.classifier.dense, nn.Tanh(), model.classifier.out_proj)
    if model_type == "electra":  # ElectraClassificationHead: dense -> gelu -> out_proj
        return FirstToken(model.classifier.dense, nn.GELU(), model.classifier.out_proj)
    return FirstToken(model.pre_classifier, nn.ReLU(), model.classifier)  # distilbert


def _bert_like(base, model_type: str, pooled_head, sentence_pairs: bool) -> EncoderForExport:
    cfg = base.config
    if getattr(cfg, "position_embedding_type", "absolute") != "absolute":
        raise ToolkitError(f"{model_type}: position_embedding_type "
                           f"{cfg.position_embedding_type!r} is not supported (only 'absolute')")
    if getattr(cfg, "is_decoder", False):
        raise ToolkitError(f"{model_type}: is_decoder=True encoders are not supported")
    act = activation(cfg.hidden_act, f"{model_type} hidden_act")
    layers = [PostLNLayer(lyr.attention.self.query, lyr.attention.self.key,
                          lyr.attention.self.value, lyr.attention.output.dense,
                          lyr.attention.output.LayerNorm, lyr.intermediate.dense,
                          lyr.output.dense, lyr.output.LayerNorm, act, cfg.num_attention_heads)
              for lyr in base.encoder.layer]
    emb = base.embeddings
    offset = int(cfg.pad_token_id) + 1 if model_type == "roberta" else 0
    args = (emb.word_embeddings, emb.position_embeddings, offset,
            emb.token_type_embeddings.weight[0], emb.LayerNorm, layers, pooled_head,
            cfg.vocab_size, getattr(base, "embeddings_project", None))
    if not sentence_pairs:
        return EncoderForExport(*args)
    # A bare encoder, mean-pooled, is fine-tuned on single reviews with the one constant type row.
    if getattr(cfg, "type_vocab_size", 1) < 2 or isinstance(pooled_head, MeanPooled):
        raise ToolkitError(
            f"--sentence-pairs: this {model_type} model has no token type table for a second "
            f"text (type_vocab_size {getattr(cfg, 'type_vocab_size', 1)}"
            f"{', mean-pooled head' if isinstance(pooled_head, MeanPooled) else ''}); "
            f"export it without --sentence-pairs")
    return PairEncoderForExport(emb.token_type_embeddings, *args)


def _distilbert(base, model_type: str, pooled_head, sentence_pairs: bool) -> EncoderForExport:
    cfg = base.config
    act = activation(cfg.activation, "distilbert activation")
    layers = [PostLNLayer(lyr.attention.q_lin, lyr.attention.k_lin, lyr.attention.v_lin,
                          lyr.attention.out_lin, lyr.sa_layer_norm, lyr.ffn.lin1, lyr.ffn.lin2,
                          lyr.output_layer_norm, act, cfg.n_heads)
              for lyr in base.transformer.layer]
    if sentence_pairs:  # DistilBERT has no token type embeddings
        raise ToolkitError("--sentence-pairs: distilbert has no token type table for a second "
                           "text; export it without --sentence-pairs")
    emb = base.embeddings
    return EncoderForExport(emb.word_embeddings, emb.position_embeddings, 0, None, emb.LayerNorm,
                            layers, pooled_head, cfg.vocab_size)
