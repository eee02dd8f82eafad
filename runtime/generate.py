"""Text generation with the decoder on either backend, with a KV cache allocated once.

    python runtime/generate.py --model models/stories.onnx --prompt "Once upon a time"
    python runtime/generate.py --model engines/stories.fp16.plan --prompt "..." --top-k 40 \
        --temperature 0.8 --max-new-tokens 200

``Generator`` preallocates, in one session arena, the step buffers at the largest shapes the
profiles allow and the position-major KV cache (``runtime.kv_cache``). A request runs one
prefill (``past = 0``, all prompt tokens) and then decode steps (``new = 1``) whose
``new_key_l``/``new_value_l`` outputs are bound at the next cache slot, so the graph appends in
place. Only the top-K (or, when the sampler needs the whole vocabulary, the last row of logits)
is copied back per step. Tokens stream through ``on_token(batch_index, token_id, text_piece)``
as they are chosen.

Batches: prompts are left-padded to the longest; ``attention_mask`` hides the padding and each
row's ``position_ids`` start at 0 on its first real token, so a row generates what it would
alone (greedy). The context limit counts physical cache positions (longest prompt + generated).
Stopping follows ``train/generate.py``: end-of-text (not returned; any of the sidecar's
``eos_ids``, e.g. Llama 3's list and generation_config.json's ids), ``max_new_tokens``, or the
context limit (prompt + new tokens never exceed it). Prompts are encoded as the sidecar's
``prompt`` rules say: our TinyStories models put ``<|endoftext|>`` first, as the training
streams do; a Hugging Face decoder gets exactly ``tokenizer(prompt)`` (its post-processor adds
BOS when the model's tokenizer does, nothing otherwise).

The decode loop allocates nothing that outlives a step (tests/test_generate.py checks it with
tracemalloc): buffers, bindings, token and timing arrays are all made before the first step.
"""
from __future__ import annotations

if __package__ in (None, ""):  # run by path: the repository root replaces runtime/ on sys.path
    import os  # (so no module in runtime/ can shadow a standard-library module)
    import sys

    _HERE = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
    sys.path.insert(0, os.path.dirname(_HERE))

import time
from typing import Any, Dict, List, Sequence

import click
import numpy as np

from common.errors import ToolkitError, exit_on_toolkit_error
from runtime.buffers import BufferPlan, align
from runtime.decoder_info import DecoderInfo, GenerationResult, encode_prompt  # noqa: F401  (API)
from runtime.kv_cache import KVCache, kv_cache_nbytes
from runtime.sampling import STOP_EOS, STOP_MAX_NEW_TOKENS, OnToken, Sampler, StopConditions

# A byte-level token can end inside a UTF-8 character: hold its text until it is complete,
# but never longer than a character's 4 bytes.
MAX_HELD_TOKENS = 4


def profile_limits(session) -> Dict[str, int]:
    """Largest batch, prompt (new) and total lengths over all the session's profiles."""
    limits = {"batch": 0, "new": 0, "total": 0}
    for profile in session.profiles:
        ids_max, mask_max = profile["input_ids"][2], profile["attention_mask"][2]
        limits["batch"] = max(limits["batch"], ids_max[0])
        limits["new"] = max(limits["new"], ids_max[1])
        limits["total"] = max(limits["total"], mask_max[1])
    return limits


class Generator:
    """Prefill + decode on a decoder session; buffers and the KV cache are allocated here, once.

    info: a ``DecoderInfo`` or the sidecar dict (``runtime.tokenization.model_info``).
    max_batch: rows per request this generator is sized for (default: the profiles' largest
    batch). Buffers scale with it (logits are ``(max_batch, max_prompt, vocab)``), so pass the
    batch you will use on a small device.
    """

    def __init__(self, session, tokenizer, info: DecoderInfo | Dict[str, Any],
                 max_batch: int | None = None):
        self.session = session
        self.tokenizer = tokenizer
        self.info = info if isinstance(info, DecoderInfo) else DecoderInfo.from_sidecar(info)
        info = self.info
        limits = profile_limits(session)
        self.max_batch = limits["batch"] if max_batch is None else int(max_batch)
        if not 1 <= self.max_batch <= limits["batch"]:
            raise ToolkitError(f"batch {max_batch}: the profiles of {session.path.name} allow "
                               f"1..{limits['batch']}")
        self.max_prompt = min(limits["new"], info.max_seq_len)
        self.context_limit = min(limits["total"], info.max_seq_len)
        self._allocate(session.outputs["topk_values"].shape[1])
        # Host-side state, sized once: rows x positions.
        rows, positions = self.max_batch, self.context_limit
        self._mask_rows = np.zeros((rows, positions), np.int32)  # (rows, positions) master mask
        self._next_position = np.zeros(rows, np.int32)  # (rows,) position id of the next token
        self._next_token = np.zeros(rows, np.int32)  # (rows,) token to feed at the next step
        self._out = np.zeros((rows, positions), np.int32)  # (rows, positions) generated ids
        self._n_out = np.zeros(rows, np.int64)  # (rows,) generated count per row
        self._emitted = np.zeros(rows, np.int64)  # (rows,) tokens whose text was streamed
        self._decode_ms = np.zeros(positions, np.float64)  # (positions,) per decode step
        self._decode_past = np.zeros(positions, np.int32)  # (positions,)
        self._reasons: List[str | None] = [None] * rows
        self._topk: tuple = ()  # (values, indices) views of this request's batch, by _prefill

    def _allocate(self, graph_k: int) -> None:
        b, p, t, v = self.max_batch, self.max_prompt, self.context_limit, self.info.vocab_size
        self.graph_k = graph_k
        # dtypes from the session: int32 ids, fp32 logits/cache unless an engine chose fp16 I/O
        specs = {**self.session.inputs, **self.session.outputs}
        self.dtypes = {name: spec.dtype for name, spec in specs.items()}
        plan = BufferPlan()
        plan.add("input_ids", (b, p), specs["input_ids"].dtype)  # (batch, new) int32
        plan.add("position_ids", (b, p), specs["position_ids"].dtype)  # (batch, new) int32
        plan.add("attention_mask", (b, t), specs["attention_mask"].dtype)  # (batch, total) int32
        plan.add("logits", (b, p, v), specs["logits"].dtype)  # (batch, new, vocab) fp32
        plan.add("topk_values", (b, graph_k), specs["topk_values"].dtype)  # (batch, K) fp32
        plan.add("topk_indices", (b, graph_k), specs["topk_indices"].dtype)  # (batch, K) int32
        cache_dtype = specs["past_key_0"].dtype
        kv_offset = align(plan.nbytes)
        windows = self._binds_windows()
        kv_bytes = kv_cache_nbytes(self.info.layers, t, b, self.info.kv_dim, cache_dtype, windows)
        self.plan = plan
        self.arena = self.session.allocate(kv_offset + kv_bytes)
        # k_cache_l / v_cache_l  # (context_limit [+ 1 scratch], batch, kv_dim) fp32, pos-major
        self.kv = KVCache(self.arena, kv_offset, self.info.layers, t, b, self.info.kv_dim,
                          cache_dtype, aligned_slots=self.session.address_alignment >= 256,
                          windows=windows)
        self.bindings = {name: plan.binding(self.arena, name) for name in plan.names}
        self.bindings.update(self.kv.make_bindings())

    def _binds_windows(self) -> bool:
        """Whether the graph's present_* outputs are there to be bound over the cache."""
        windows = [n for n in self.session.outputs if n.startswith("present_")]
        if windows and not self.session.overlapping_outputs:
            raise ToolkitError(
                f"{self.session.path.name} has outputs {windows[:2]}...: {self.session.backend} "
                "cannot bind them over the KV cache; build the engine with engines.build "
                "(make engine), which leaves them out")
        return bool(windows)

    # -- public ----------------------------------------------------------------------------
    def generate(self, prompts: Sequence[str], max_new_tokens: int, sampler: Sampler,
                 on_token: OnToken | None = None) -> GenerationResult:
        """Continue each prompt (one row each) and return the new tokens per row."""
        return self.generate_ids(self.encode(prompts), max_new_tokens, sampler, on_token)

    def encode(self, prompts: Sequence[str]) -> List[List[int]]:
        """Token ids of each prompt, by the model's prompt rules (``DecoderInfo.encode_prompt``)."""
        return [self.info.encode_prompt(self.tokenizer, text) for text in prompts]

    def check_request(self, prompt_ids: Sequence[Sequence[int]], max_new_tokens: int,
                      sampler: Sampler) -> None:
        """Raise what ``generate_ids`` would refuse, before anything is printed or run."""
        self._check_request(prompt_ids, max_new_tokens, sampler)

    def generate_ids(self, prompt_ids: Sequence[Sequence[int]], max_new_tokens: int,
                     sampler: Sampler, on_token: OnToken | None = None) -> GenerationResult:
        """``generate`` on token ids: prompt_ids[r] is row r's prompt."""
        batch, longest = self._check_request(prompt_ids, max_new_tokens, sampler)
        stop = StopConditions(self.info.stop_ids, max_new_tokens, self.context_limit)
        self.kv.reset(batch)
        self._n_out[:batch] = 0
        self._emitted[:batch] = 0
        reasons = self._reasons
        for r in range(batch):
            reasons[r] = None
        prefill_ms = 0.0
        steps = 0
        if max_new_tokens == 0:
            reasons[:batch] = [STOP_MAX_NEW_TOKENS] * batch
        elif longest >= self.context_limit:
            reasons[:batch] = [stop.reason(-1, 0, longest)] * batch
        else:
            prefill_ms = self._prefill(prompt_ids, longest, sampler, stop, on_token)
            steps = self._decode(batch, longest, sampler, stop, on_token)
        return GenerationResult(
            tokens=[self._out[r, :self._n_out[r]].tolist() for r in range(batch)],
            stop_reasons=list(reasons[:batch]), prompt_lengths=[len(p) for p in prompt_ids],
            prefill_ms=prefill_ms, decode_ms=self._decode_ms[:steps].copy(),
            decode_past=self._decode_past[:steps].copy())

    # -- steps -----------------------------------------------------------------------------
    def _check_request(self, prompt_ids, max_new_tokens: int, sampler: Sampler):
        batch = len(prompt_ids)
        if not 1 <= batch <= self.max_batch:
            raise ToolkitError(f"{batch} prompts: this generator runs 1..{self.max_batch} at once")
        lengths = [len(p) for p in prompt_ids]
        if min(lengths) < 1:
            raise ToolkitError("a prompt is empty: expected at least one token id")
        limit = min(self.max_prompt, self.context_limit)
        if max(lengths) > limit:
            row = lengths.index(max(lengths))
            raise ToolkitError(
                f"prompt {row + 1} is {max(lengths)} tokens long (with its special tokens): the "
                f"model's profiles take at most {limit} (context {self.context_limit}); "
                "shorten it")
        if max_new_tokens < 0:
            raise ToolkitError(f"max_new_tokens={max_new_tokens}: expected 0 or more")
        vocab = self.info.vocab_size
        if any(not 0 <= t < vocab for p in prompt_ids for t in p):
            raise ToolkitError(f"a prompt token id is outside the vocabulary [0, {vocab})")
        self._full_logits = sampler.needs_full_logits(self.graph_k)
        return batch, max(lengths)

    def _prefill(self, prompt_ids, longest: int, sampler, stop, on_token) -> float:
        batch = len(prompt_ids)
        b = self.bindings
        for name in ("input_ids", "position_ids", "attention_mask"):
            b[name].shape = (batch, longest)
        b["logits"].shape = (batch, longest, self.info.vocab_size)
        b["topk_values"].shape = b["topk_indices"].shape = (batch, self.graph_k)
        self._topk = (b["topk_values"].view(self.dtypes["topk_values"]),  # (batch, K) fp32
                      b["topk_indices"].view(self.dtypes["topk_indices"]))  # (batch, K) int32
        ids = b["input_ids"].view(self.dtypes["input_ids"])  # (batch, longest) int32, left padded
        positions = b["position_ids"].view(self.dtypes["position_ids"])  # (batch, longest) int32
        ids.fill(self.info.pad_id)
        positions.fill(0)
        self._mask_rows[:batch].fill(0)
        for r, row in enumerate(prompt_ids):
            pad = longest - len(row)
            ids[r, pad:] = row
            positions[r, pad:] = np.arange(len(row), dtype=np.int32)
            self._mask_rows[r, pad:longest] = 1
            self._next_position[r] = len(row)
        b["attention_mask"].view(self.dtypes["attention_mask"])[...] = \
            self._mask_rows[:batch, :longest]
        start = time.perf_counter()
        self._run_step(batch, past=0, new=longest, profile=None)
        elapsed_ms = (time.perf_counter() - start) * 1e3
        self._choose(batch, longest, longest, sampler, stop, on_token)
        return elapsed_ms

    def _decode(self, batch: int, longest: int, sampler, stop, on_token) -> int:
        b = self.bindings
        b["input_ids"].shape = b["position_ids"].shape = (batch, 1)
        b["logits"].shape = (batch, 1, self.info.vocab_size)
        # Views made once: these shapes hold for every decode step.
        ids = b["input_ids"].view(self.dtypes["input_ids"])[:, 0]  # (batch,) int32
        positions = b["position_ids"].view(self.dtypes["position_ids"])[:, 0]  # (batch,) int32
        mask_slot = self.plan.view(self.arena, "attention_mask").reshape(-1)  # (b*t,) int32
        mask = b["attention_mask"]
        profile = None
        step = 0
        past = longest
        while any(reason is None for reason in self._reasons[:batch]):
            ids[:] = self._next_token[:batch]
            positions[:] = self._next_position[:batch]
            self._mask_rows[:batch, past] = 1
            mask.shape = (batch, past + 1)  # row-major in its slot: rows move as past grows
            mask_slot[:batch * (past + 1)].reshape(batch, past + 1)[...] = \
                self._mask_rows[:batch, :past + 1]
            first = profile is None  # the first step's bindings are checked in full
            if first:
                profile = self._decode_profile(batch, past, stop)
            start = time.perf_counter()
            self._run_step(batch, past=past, new=1, profile=profile, check=first)
            self._decode_ms[step] = (time.perf_counter() - start) * 1e3
            self._decode_past[step] = past
            step += 1
            past += 1
            self._next_position[:batch] += 1
            self._choose(batch, 1, past, sampler, stop, on_token)
        return step

    def _decode_profile(self, batch: int, past: int, stop: StopConditions) -> int:
        """The profile of the first decode step; it must also hold the last possible step."""
        # Step i feeds generated token i+1 at past + i; it runs only while that token neither
        # reached max_new_tokens nor filled the context.
        last_past = min(past + stop.max_new_tokens - 2, self.context_limit - 2)
        profile = self.session.find_profile(self._input_shapes(batch, past, 1))
        for name, shape in self._input_shapes(batch, max(past, last_past), 1).items():
            self.session.check_shape(name, shape, profile)
        return profile

    def _input_shapes(self, batch: int, past: int, new: int) -> Dict[str, tuple]:
        shapes = {"input_ids": (batch, new), "position_ids": (batch, new),
                  "attention_mask": (batch, past + new)}
        for layer in range(self.info.layers):
            for kind in ("key", "value"):
                shapes[f"past_{kind}_{layer}"] = (past, batch, self.info.kv_dim)
        return shapes

    def _run_step(self, batch: int, past: int, new: int, profile: int | None,
                  check: bool = True) -> None:
        """Upload the step inputs, run, download what the sampler needs, wait.

        check=False (decode steps after the first): ``_decode_profile`` proved every shape of
        the run in the profile, and the buffers were planned at the profile's largest shapes,
        so the per-step ``check_bindings`` (a fifth of a small model's Python time) is skipped.
        """
        b = self.bindings
        self.kv.update_bindings(b, past, new)
        copies = self.arena.copies  # False where host memory is the tensor memory
        if copies:
            for name in ("input_ids", "position_ids", "attention_mask"):
                b[name].upload(self.dtypes[name])
        if profile is None:
            profile = self.session.find_profile({n: b[n].shape for n in self.session.inputs})
        self.session.run(b, profile, check=check)
        if copies:
            self._download_outputs(batch, new)
        self.session.synchronize()

    def _download_outputs(self, batch: int, new: int) -> None:
        """Queue the copies of what the sampler reads: each row's last logits, or the top-K."""
        b = self.bindings
        if self._full_logits:
            row_bytes = self.info.vocab_size * self.dtypes["logits"].itemsize
            for r in range(batch):  # only each row's last position
                self.arena.download(b["logits"].offset + ((r + 1) * new - 1) * row_bytes,
                                    row_bytes)
        else:
            b["topk_values"].download(self.dtypes["topk_values"])
            b["topk_indices"].download(self.dtypes["topk_indices"])

    def _choose(self, batch: int, new: int, n_positions: int, sampler: Sampler, stop,
                on_token: OnToken | None) -> None:
        """Sample each unfinished row's next token from the step's output and record it."""
        if self._full_logits:
            logits = self.bindings["logits"].view(self.dtypes["logits"])  # (batch, new, vocab)
        else:
            values, indices = self._topk  # (batch, K) fp32, (batch, K) int32
        for r in range(batch):
            if self._reasons[r] is not None:
                continue
            if self._full_logits:
                token = sampler.sample_logits(logits[r, new - 1])
            else:
                token = sampler.sample_topk(values[r], indices[r])
            n = int(self._n_out[r])
            reason = stop.reason(token, n + 1, n_positions + 1)
            self._next_token[r] = token
            if reason == STOP_EOS:  # neither returned nor streamed; a held partial piece is dropped
                self._reasons[r] = reason
                continue
            self._out[r, n] = token
            self._n_out[r] = n + 1
            self._reasons[r] = reason
            if on_token is not None:
                on_token(r, token, self._text_piece(r, final=reason is not None))

    def _text_piece(self, r: int, final: bool) -> str:
        """Text of row r's tokens not yet streamed; "" while a character is incomplete."""
        start, end = int(self._emitted[r]), int(self._n_out[r])
        text = self.tokenizer.decode(self._out[r, start:end].tolist())
        if text.endswith("\ufffd") and not final and end - start < MAX_HELD_TOKENS:
            return ""
        self._emitted[r] = end
        return text

    def close(self) -> None:
        self.arena.close()


def open_decoder(model: str, tokenizer: str | None = None):
    """(DecoderInfo, tokenizer) of a decoder ``.onnx`` or engine, read from beside it."""
    from runtime.tokenization import load_model_tokenizer, model_info

    info = model_info(model)
    decoder = DecoderInfo.from_sidecar(info)
    return decoder, load_model_tokenizer(model, info, tokenizer)


def _batch_prompts(prompts: Sequence[str], batch: int | None) -> List[List[str]]:
    """Runs of at most ``batch`` prompts; a single prompt is repeated to fill the batch."""
    batch = batch or len(prompts)
    if batch < 1:
        raise ToolkitError(f"--batch {batch}: expected 1 or more")
    if len(prompts) == 1:
        return [list(prompts) * batch]
    return [list(prompts[i:i + batch]) for i in range(0, len(prompts), batch)]


@click.command()
@click.option("--model", required=True, type=click.Path(dir_okay=False),
              help="Decoder .onnx (ONNX Runtime) or .plan/.engine (TensorRT).")
@click.option("--prompt", "prompts", multiple=True, required=True,
              help="Text to continue; repeat for several rows.")
@click.option("--max-new-tokens", default=200, show_default=True, type=int)
@click.option("--temperature", default=0.0, show_default=True, type=float, help="0 = greedy.")
@click.option("--top-k", default=0, show_default=True, type=int, help="0 = off.")
@click.option("--top-p", default=1.0, show_default=True, type=float, help="1.0 = off.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--batch", type=int, default=None,
              help="Rows per run (default: the number of prompts; one prompt is repeated).")
@click.option("--tokenizer", type=click.Path(dir_okay=False), default=None,
              help="Tokenizer file, when the model's description names none.")
@exit_on_toolkit_error
def main(model: str, prompts: Sequence[str], max_new_tokens: int, temperature: float,
         top_k: int, top_p: float, seed: int, batch: int | None, tokenizer: str | None):
    """Continue prompts with a decoder model, streaming the text of a single row."""
    from runtime.session import open_session

    info, tok = open_decoder(model, tokenizer)
    runs = _batch_prompts(prompts, batch)
    sampler = Sampler(temperature, top_k, top_p, seed)
    with open_session(model) as session:
        generator = Generator(session, tok, info, max_batch=max(len(run) for run in runs))
        encoded = [generator.encode(run) for run in runs]
        for rows in encoded:  # every run is checked before the first prompt is echoed
            generator.check_request(rows, max_new_tokens, sampler)
        for run, rows in zip(runs, encoded):
            streaming = len(run) == 1
            if streaming:
                click.echo(run[0], nl=False)
            on_token = (lambda r, token, piece: click.echo(piece, nl=False)) if streaming else None
            result = generator.generate_ids(rows, max_new_tokens, sampler, on_token)
            for r, text in enumerate(run):
                new_text = tok.decode(result.tokens[r])
                click.echo("" if streaming else f"[{r}] {text}{new_text}")
            click.echo(
                f"[{session.backend}: {result.new_tokens} tokens, prefill "
                f"{result.prefill_ms:.1f} ms for {max(result.prompt_lengths)} positions, decode "
                f"{result.decode_tokens_per_s():.1f} tokens/s, stopped at "
                f"{', '.join(sorted(set(result.stop_reasons)))}]", err=True)


if __name__ == "__main__":
    main()
