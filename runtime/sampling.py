"""Choosing the next token: greedy, temperature, top-k, top-p (nucleus), with a seeded generator.

The sampler works either on a row of full logits ``(vocab,)`` or on the graph's top-K output
``(topk_values, topk_indices)`` of the last position. The top-K path is exact, i.e. it draws the
same token as the full-logits path with the same seed, when the sampler is greedy or when
``0 < top_k <= K``; otherwise the caller must fetch the full logits (``needs_full_logits``).

Both paths reduce the logits to the same candidate list, sorted by logit descending and then by
token id ascending (ties resolved like ``np.argmax``: lowest id first), and spend exactly one
uniform draw per sampled token, so a seeded run is reproducible whichever path produced it.

Also here: the stop conditions of a generation and the streaming callback's signature.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, FrozenSet, Sequence, Union

import numpy as np

from common.errors import ToolkitError

# on_token(batch_index, token_id, text_piece): called once per generated token, in order.
OnToken = Callable[[int, int, str], None]

STOP_EOS = "eos"
STOP_MAX_NEW_TOKENS = "max_new_tokens"
STOP_CONTEXT = "context"  # the names of train/generate.py


class Sampler:
    """Picks one token id from a row of logits; greedy when ``temperature == 0``."""

    def __init__(self, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                 seed: int = 0):
        if temperature < 0.0:
            raise ToolkitError(f"temperature={temperature}: expected >= 0 (0 means greedy)")
        if top_k < 0:
            raise ToolkitError(f"top_k={top_k}: expected >= 0 (0 means no top-k filter)")
        if not 0.0 < top_p <= 1.0:
            raise ToolkitError(f"top_p={top_p}: expected a value in (0, 1]")
        self.temperature = float(temperature)
        self.top_k = int(top_k)
        self.top_p = float(top_p)
        self.seed = int(seed)
        self.rng = np.random.default_rng(seed)
        # Scratch grown once to the longest candidate list seen, then reused for every token.
        self._weights = np.empty(0, dtype=np.float64)  # (n_candidates,) softmax numerators
        self._cumulative = np.empty(0, dtype=np.float64)  # (n_candidates,) running sums

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def needs_full_logits(self, graph_k: int) -> bool:
        """True when the graph's top-K output (K = ``graph_k``) cannot give an exact draw."""
        return not self.greedy and not 0 < self.top_k <= graph_k

    def reset(self, seed: int | None = None) -> None:
        """Restart the random stream (from ``seed``, or the constructor's seed)."""
        self.rng = np.random.default_rng(self.seed if seed is None else seed)

    # -- full logits -----------------------------------------------------------------------
    def sample_logits(self, logits: np.ndarray) -> int:
        """logits: (vocab,) float row of the last position -> token id."""
        if self.greedy:
            return int(np.argmax(logits))
        vocab = logits.shape[0]
        if 0 < self.top_k < vocab:
            top = np.argpartition(logits, vocab - self.top_k)[vocab - self.top_k:]
            return self._sample_candidates(logits[top], top)
        if self.top_p < 1.0:
            return self._sample_candidates(logits, np.arange(vocab))
        # Plain temperature sampling: order does not matter, so skip the sort over the vocab.
        return self._draw(logits, np.arange(vocab), nucleus=False)

    # -- graph's top-K output --------------------------------------------------------------
    def sample_topk(self, values: np.ndarray, indices: np.ndarray) -> int:
        """values: (K,) float logits, indices: (K,) int token ids, any order -> token id."""
        if self.greedy:
            j = int(np.argmax(values))
            best = values[j]
            if np.count_nonzero(values == best) > 1:  # a tie: np.argmax on logits picks lowest id
                return int(indices[values == best].min())
            return int(indices[j])
        if self.needs_full_logits(values.shape[0]):
            raise ToolkitError(
                f"sampler top_k={self.top_k} needs the full logits: the graph's top-K output has "
                f"only K={values.shape[0]} candidates (use top_k in 1..{values.shape[0]})"
            )
        if self.top_k < values.shape[0]:
            keep = np.lexsort((indices, -values))[: self.top_k]
            return self._sample_candidates(values[keep], indices[keep])
        return self._sample_candidates(values, indices)

    # -- shared ----------------------------------------------------------------------------
    def _sample_candidates(self, values: np.ndarray, ids: np.ndarray) -> int:
        """Sort candidates (logit desc, id asc), apply top-p, draw one."""
        order = np.lexsort((ids, -values))
        return self._draw(values[order], ids[order], nucleus=self.top_p < 1.0)

    def _draw(self, values: np.ndarray, ids: np.ndarray, nucleus: bool) -> int:
        n = values.shape[0]
        if self._weights.shape[0] < n:
            self._weights = np.empty(n, dtype=np.float64)
            self._cumulative = np.empty(n, dtype=np.float64)
        weights = self._weights[:n]  # (n,) float64: exp((logit - max) / T)
        cumulative = self._cumulative[:n]  # (n,) float64
        np.subtract(values, values.max(), out=weights)
        np.divide(weights, self.temperature, out=weights)
        np.exp(weights, out=weights)
        np.cumsum(weights, out=cumulative)
        n_keep = n
        if nucleus:
            # Smallest prefix (already sorted by probability) whose mass reaches top_p.
            target = self.top_p * cumulative[-1]
            n_keep = min(n, int(np.searchsorted(cumulative, target, side="left")) + 1)
        u = self.rng.random() * cumulative[n_keep - 1]
        j = min(n_keep - 1, int(np.searchsorted(cumulative[:n_keep], u, side="right")))
        return int(ids[j])


@dataclass(frozen=True)
class StopConditions:
    """When a row stops: an end-of-text id, tokens generated, or the context (positions) is full.

    eos_id: one id, every id that ends text (Llama 3 lists several; generation_config.json may
    add more), or None for no end-of-text stop.
    """

    eos_id: Union[int, Sequence[int], None]
    max_new_tokens: int
    context_limit: int

    @property
    def eos_ids(self) -> FrozenSet[int]:
        if self.eos_id is None:
            return frozenset()
        one = isinstance(self.eos_id, (int, np.integer))
        return frozenset(int(i) for i in ([self.eos_id] if one else self.eos_id))

    def __post_init__(self):
        object.__setattr__(self, "_eos", self.eos_ids)  # looked up once per token
        if self.max_new_tokens < 0:
            raise ToolkitError(f"max_new_tokens={self.max_new_tokens}: expected 0 or more")
        if self.context_limit < 2:
            raise ToolkitError(f"context_limit={self.context_limit}: expected >= 2")

    def reason(self, token_id: int, n_generated: int, n_positions: int) -> str | None:
        """Why generation stops after ``token_id`` (None: continue).

        n_generated: tokens generated so far, this one included; n_positions: positions the
        sequence occupies with this token appended (the next step would need one more).
        """
        if token_id in self._eos:  # type: ignore[attr-defined]
            return STOP_EOS
        if n_generated >= self.max_new_tokens:
            return STOP_MAX_NEW_TOKENS
        if n_positions >= self.context_limit:
            return STOP_CONTEXT
        return None
