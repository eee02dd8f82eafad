"""Masked-LM self-pretraining of the encoder on the task's own training text.

A transformer trained from scratch on 24,000 labelled reviews learns its word embeddings from the
label alone. Predicting masked tokens of the same reviews first teaches the embeddings and the
attention what the words mean in context, which the classifier then starts from (Krishna et al.
2022, "Downstream datasets make surprisingly good pretraining corpora"). Only the training split
is read: no extra data, no test text.

The pretraining head is the token embedding itself (tied, no extra weights), so the checkpoint is
an ordinary classifier checkpoint whose head is still untrained. The masked positions get the pad
token's embedding as their input: classification never attends to pad positions, so the pad
vector is free to mean "masked" and the tokenizer needs no extra special token.
"""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F

from train.batching import bucketed_batches, pad_batch, sorted_batches

IGNORE = -100  # cross_entropy's ignore_index: positions that are not predicted


def mask_tokens(
    ids: torch.Tensor,
    attention_mask: torch.Tensor,
    rate: float,
    mask_id: int,
    vocab_size: int,
    generator: torch.Generator | None = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """BERT's recipe on the real tokens: pick ``rate`` of them; 80% become ``mask_id``, 10% a
    random token, 10% stay. -> (inputs (batch, seq) int64, targets (batch, seq) int64 with IGNORE
    where nothing is predicted). Draws from ``generator`` or the global RNG (checkpointed)."""
    draw = torch.rand(ids.shape, generator=generator)
    picked = (draw < rate) & attention_mask.bool()
    targets = torch.where(picked, ids, torch.full_like(ids, IGNORE))
    action = torch.rand(ids.shape, generator=generator)
    inputs = ids.clone()
    inputs[picked & (action < 0.8)] = mask_id
    randomised = picked & (action >= 0.8) & (action < 0.9)
    random_ids = torch.randint(0, vocab_size, ids.shape, generator=generator)
    inputs[randomised] = random_ids[randomised]
    return inputs, targets


def masked_lm_loss(model, inputs, attention_mask, targets) -> torch.Tensor:
    """Cross-entropy of the masked positions only; logits against the tied embedding."""
    hidden = model.encode(inputs, attention_mask)  # (batch, seq, d_model)
    picked = targets != IGNORE  # (batch, seq) bool
    logits = hidden[picked] @ model.embed.weight.t()  # (n_picked, vocab)
    return F.cross_entropy(logits.float(), targets[picked])


class MaskedLmTask:
    """The trainer's Task protocol for masked-LM pretraining of an EncoderClassifier."""

    kind = "classifier"

    def __init__(
        self,
        encoded: List[List[int]],
        val_encoded: List[List[int]],
        pad_id: int,
        vocab_size: int,
        mask_rate: float,
    ):
        self.encoded, self.val_encoded = encoded, val_encoded
        self.pad_id, self.vocab_size, self.mask_rate = pad_id, vocab_size, mask_rate
        self.lengths = [len(s) for s in encoded]

    def steps_per_epoch(self, batch_size: int) -> int:
        return len(bucketed_batches(self.lengths, batch_size, 0, 0))

    def batches(self, batch_size: int, seed: int, epoch: int) -> List[List[int]]:
        return bucketed_batches(self.lengths, batch_size, seed, epoch)

    def _loss(self, model, seqs: Sequence[Sequence[int]], device, generator=None):
        ids, mask = pad_batch(seqs, self.pad_id)
        inputs, targets = mask_tokens(
            ids, mask, self.mask_rate, self.pad_id, self.vocab_size, generator
        )
        return masked_lm_loss(model, inputs.to(device), mask.to(device), targets.to(device))

    def loss(self, model, batch: List[int], device) -> torch.Tensor:
        return self._loss(model, [self.encoded[i] for i in batch], device)

    @torch.no_grad()
    def evaluate(self, model) -> Dict[str, float]:
        """Masked-LM loss on the held-out reviews, with the same masks every epoch."""
        model.eval()
        device = next(model.parameters()).device
        generator = torch.Generator().manual_seed(1234)
        lengths = [len(s) for s in self.val_encoded]
        total, count = 0.0, 0
        for batch in sorted_batches(lengths, 64):
            loss = self._loss(model, [self.val_encoded[i] for i in batch], device, generator)
            total, count = total + loss.item() * len(batch), count + len(batch)
        return {"loss": total / max(count, 1)}

    def score(self, metrics: Dict[str, float]) -> float:
        return -metrics["loss"]
