"""The PyTorch reference sampler for the decoder: what the ONNX Runtime and TensorRT backends
are compared against.

Prefill runs the prompt once; every later step feeds one token and the keys/values of the past
from a position-major cache ``(max_seq_len, 1, kv_dim)`` per layer, the layout the device
runtime uses. Stopping rules (shared with the runtime): the end-of-text token (neither returned
nor streamed), ``max_new_tokens``, or the context limit (prompt + new tokens never exceed
``max_seq_len``). Greedy is ``temperature == 0``; sampling is seeded through a
``torch.Generator``.

    python -m train.generate --checkpoint checkpoints/tinystories/best.pt --prompt "Once upon"
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Callable, List

import click
import torch

from common.errors import ToolkitError, exit_on_toolkit_error
from train.model import DecoderLM

STOP_EOS, STOP_MAX_NEW, STOP_CONTEXT = "eos", "max_new_tokens", "context"


@dataclass
class Generation:
    tokens: List[int]  # new token ids only, without the end-of-text token
    stop_reason: str  # STOP_EOS | STOP_MAX_NEW | STOP_CONTEXT


def check_sampling_args(max_new_tokens: int, temperature: float, top_k: int, top_p: float) -> None:
    if max_new_tokens < 0:
        raise ToolkitError(f"max_new_tokens={max_new_tokens}: expected 0 or more")
    if temperature < 0:
        raise ToolkitError(f"temperature={temperature}: expected 0 (greedy) or more")
    if top_k < 0:
        raise ToolkitError(f"top_k={top_k}: expected 0 (off) or more")
    if not 0.0 < top_p <= 1.0:
        raise ToolkitError(f"top_p={top_p}: expected a value in (0, 1]")


def _check_prompt(model: torch.nn.Module, prompt_ids: List[int]) -> None:
    if not isinstance(model, DecoderLM):
        raise ToolkitError(f"generation needs a decoder model; got {type(model).__name__}")
    cfg = model.cfg
    if not prompt_ids:
        raise ToolkitError("prompt is empty: expected at least one token id")
    if len(prompt_ids) > cfg.max_seq_len:
        raise ToolkitError(
            f"prompt has {len(prompt_ids)} tokens; the model's context is {cfg.max_seq_len}"
        )
    bad = [t for t in prompt_ids if not 0 <= t < cfg.vocab_size]
    if bad:
        raise ToolkitError(
            f"prompt token ids {bad[:5]} outside the vocabulary [0, {cfg.vocab_size})"
        )


def select_next(
    logits: torch.Tensor, temperature: float, top_k: int, top_p: float,
    generator: torch.Generator | None,
) -> int:
    """Pick the next id from ``logits  # (vocab,) fp32``: argmax when temperature is 0, else a
    seeded draw from the temperature-scaled softmax restricted by top-k, then top-p."""
    if temperature == 0.0:
        return int(torch.argmax(logits))
    scaled = logits.float() / temperature  # (vocab,)
    if 0 < top_k < scaled.numel():
        kth_value = torch.topk(scaled, top_k).values[-1]
        scaled = scaled.masked_fill(scaled < kth_value, float("-inf"))
    probs = torch.softmax(scaled, dim=-1)  # (vocab,)
    if top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        # keep a token while the mass before it is below top_p: the top token always stays
        keep_sorted = (torch.cumsum(sorted_probs, dim=0) - sorted_probs) < top_p
        keep = torch.zeros_like(keep_sorted).scatter(0, order, keep_sorted)
        probs = torch.where(keep, probs, torch.zeros_like(probs))
        probs = probs / probs.sum()
    return int(torch.multinomial(probs, 1, generator=generator))


@torch.no_grad()
def generate_with_reason(
    model: DecoderLM,
    prompt_ids: List[int],
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 0,
    eos_id: int | None = None,
    on_token: Callable[[int], None] | None = None,
) -> Generation:
    """``generate`` that also says why it stopped. The model should be in eval mode."""
    _check_prompt(model, prompt_ids)
    check_sampling_args(max_new_tokens, temperature, top_k, top_p)
    cfg = model.cfg
    generator = torch.Generator().manual_seed(seed) if temperature > 0 else None
    param = next(model.parameters())
    cache_shape = (cfg.max_seq_len, 1, cfg.kv_dim)
    k_cache = [param.new_zeros(cache_shape) for _ in range(cfg.n_layers)]  # (max_seq, 1, kv_dim)
    v_cache = [param.new_zeros(cache_shape) for _ in range(cfg.n_layers)]  # position-major
    feed = torch.tensor([prompt_ids], dtype=torch.long, device=param.device)  # (1, new)
    position = 0  # tokens already in the cache
    tokens: List[int] = []
    while True:
        if len(tokens) >= max_new_tokens:
            return Generation(tokens, STOP_MAX_NEW)
        if len(prompt_ids) + len(tokens) >= cfg.max_seq_len:  # the next token has no slot
            return Generation(tokens, STOP_CONTEXT)
        new = feed.shape[1]
        logits, new_keys, new_values = model(
            feed,
            past_keys=[k[:position] for k in k_cache],  # (past, 1, kv_dim) views, no copy
            past_values=[v[:position] for v in v_cache],
        )
        for layer in range(cfg.n_layers):
            k_cache[layer][position:position + new] = new_keys[layer]  # (new, 1, kv_dim)
            v_cache[layer][position:position + new] = new_values[layer]
        position += new
        token = select_next(logits[0, -1], temperature, top_k, top_p, generator)
        if eos_id is not None and token == eos_id:
            return Generation(tokens, STOP_EOS)
        tokens.append(token)
        if on_token is not None:
            on_token(token)
        feed = feed.new_tensor([[token]])  # (1, 1)


def generate(
    model: DecoderLM,
    prompt_ids: List[int],
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 0,
    eos_id: int | None = None,
    on_token: Callable[[int], None] | None = None,
) -> List[int]:
    """New token ids after ``prompt_ids`` (the end-of-text token is not included), using the
    KV cache; ``on_token(id)`` is called as each one is chosen."""
    return generate_with_reason(
        model, prompt_ids, max_new_tokens, temperature, top_k, top_p, seed, eos_id, on_token
    ).tokens


@torch.no_grad()
def generate_no_cache(
    model: DecoderLM, prompt_ids: List[int], max_new_tokens: int, eos_id: int | None = None
) -> List[int]:
    """Greedy decoding that recomputes the whole sequence every step: the cache's reference."""
    _check_prompt(model, prompt_ids)
    check_sampling_args(max_new_tokens, 0.0, 0, 1.0)
    sequence = list(prompt_ids)
    tokens: List[int] = []
    while len(tokens) < max_new_tokens and len(sequence) < model.cfg.max_seq_len:
        ids = torch.tensor([sequence], dtype=torch.long)  # (1, seq)
        logits, _, _ = model(ids)  # (1, seq, vocab)
        token = int(torch.argmax(logits[0, -1]))
        if eos_id is not None and token == eos_id:
            break
        tokens.append(token)
        sequence.append(token)
    return tokens


def prompt_token_ids(tok, prompt: str, eos_id: int | None) -> List[int]:
    """Training streams put ``<|endoftext|>`` before each story, so a prompt starts with it too."""
    ids = tok.encode(prompt).ids if prompt else []
    return ([eos_id] if eos_id is not None else []) + ids


class _TextStreamer:
    """Prints the text of new tokens as they come; decodes the whole sequence each time so a
    character split across byte-level tokens is printed once it is complete."""

    def __init__(self, tok, prompt_ids: List[int]):
        self.tok = tok
        self.ids = list(prompt_ids)
        self.printed = tok.decode(self.ids)

    def __call__(self, token: int) -> None:
        self.ids.append(token)
        text = self.tok.decode(self.ids)
        if text.startswith(self.printed) and not text.endswith("\ufffd"):
            click.echo(text[len(self.printed):], nl=False)
            sys.stdout.flush()
            self.printed = text


@click.command()
@click.option("--checkpoint", required=True, type=click.Path(dir_okay=False),
              help="Decoder checkpoint (.pt) with tokenizer.json beside it.")
@click.option("--prompt", required=True, help="Text to continue.")
@click.option("--max-new-tokens", default=200, show_default=True, type=int)
@click.option("--temperature", default=0.0, show_default=True, type=float,
              help="0 = greedy.")
@click.option("--top-k", default=0, show_default=True, type=int, help="0 = off.")
@click.option("--top-p", default=1.0, show_default=True, type=float, help="1.0 = off.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--stream/--no-stream", default=True, show_default=True,
              help="Print tokens as they are generated.")
@exit_on_toolkit_error
def main(checkpoint: str, prompt: str, max_new_tokens: int, temperature: float, top_k: int,
         top_p: float, seed: int, stream: bool) -> None:
    """Continue a prompt with a trained decoder (the PyTorch reference)."""
    from train.checkpoint import load_checkpoint
    from train.tokenizer import load_tokenizer, special_ids

    check_sampling_args(max_new_tokens, temperature, top_k, top_p)
    ckpt = load_checkpoint(checkpoint, kind="decoder")
    tok = load_tokenizer(ckpt.tokenizer_path)
    eos_id = special_ids(tok)["eos_id"]
    prompt_ids = prompt_token_ids(tok, prompt, eos_id)
    streamer = _TextStreamer(tok, prompt_ids) if stream else None
    if stream:
        click.echo(streamer.printed, nl=False)
    start = time.perf_counter()
    result = generate_with_reason(ckpt.model, prompt_ids, max_new_tokens, temperature, top_k,
                                  top_p, seed, eos_id, streamer)
    elapsed = time.perf_counter() - start
    if stream:
        click.echo(tok.decode(prompt_ids + result.tokens)[len(streamer.printed):])
    else:
        click.echo(tok.decode(prompt_ids + result.tokens))
    rate = len(result.tokens) / elapsed if elapsed > 0 else 0.0
    click.echo(f"[{len(result.tokens)} tokens in {elapsed:.2f} s, {rate:.1f} tokens/s, "
               f"stopped at {result.stop_reason}]", err=True)


if __name__ == "__main__":
    main()
