"""Tokenized datasets as deterministic batches.

Every epoch's batches are a pure function of (seed, epoch), never of the global RNG, so a resumed
run sees exactly the batches the uninterrupted run would have seen.
"""

from __future__ import annotations

from typing import Iterable, List, Sequence, Tuple

import numpy as np
import torch
from tokenizers import Tokenizer

from common.text import encode_classifier_texts, story_token_ids

SORT_CHUNK_BATCHES = 50  # length bucketing window: sort within 50 batches' worth of examples


def encode_texts(
    tok: Tokenizer, texts: Iterable[str], max_len: int, prepend_cls: bool = False
) -> List[List[int]]:
    cls_id = tok.token_to_id("<cls>") if prepend_cls else None
    return encode_classifier_texts(tok, texts, max_len, cls_id)


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """-> ids (batch, longest) int64, mask (batch, longest) int64 with 1 on real tokens."""
    longest = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), longest), dtype=torch.long)
    for row, seq in enumerate(seqs):
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = 1
    return ids, mask


def bucketed_batches(
    lengths: Sequence[int], batch_size: int, seed: int, epoch: int
) -> List[List[int]]:
    """Shuffle, sort by length within windows of SORT_CHUNK_BATCHES batches, shuffle the batches.
    Padding drops to a few percent while the batch order stays random; the number of batches is
    the same every epoch."""
    gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(len(lengths), generator=gen).tolist()
    window = batch_size * SORT_CHUNK_BATCHES
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    batch_order = torch.randperm(len(batches), generator=gen).tolist()
    return [batches[i] for i in batch_order]


def sorted_batches(lengths: Sequence[int], batch_size: int) -> List[List[int]]:
    """Evaluation batches: sorted by length, no randomness."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def lm_token_stream(tok: Tokenizer, stories: Iterable[str], eos_id: int) -> np.ndarray:
    """All stories as one id stream, each followed by end-of-text.  # (n_tokens,) int64"""
    return np.asarray(story_token_ids(tok, stories, eos_id), dtype=np.int64)


def lm_windows_per_epoch(n_tokens: int, seq_len: int) -> int:
    # One window of slack so every epoch can start at a random offset with the same count.
    return max(0, (n_tokens - 1) // seq_len - 1)


def lm_train_batches(
    n_tokens: int, seq_len: int, batch_size: int, seed: int, epoch: int
) -> List[np.ndarray]:
    """Window start offsets per batch: a random phase per epoch, shuffled windows."""
    gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
    n_windows = lm_windows_per_epoch(n_tokens, seq_len)
    phase = int(torch.randint(0, seq_len, (1,), generator=gen))
    starts = phase + seq_len * torch.randperm(n_windows, generator=gen).numpy()
    return [starts[i : i + batch_size] for i in range(0, n_windows - batch_size + 1, batch_size)]


def lm_batch(
    stream: np.ndarray, starts: np.ndarray, seq_len: int
) -> Tuple[torch.Tensor, torch.Tensor]:
    """-> inputs (batch, seq_len) int64, targets (batch, seq_len) int64 (inputs shifted by one)."""
    rows = np.stack([stream[s : s + seq_len + 1] for s in starts])
    rows_t = torch.from_numpy(rows)
    return rows_t[:, :-1], rows_t[:, 1:]
