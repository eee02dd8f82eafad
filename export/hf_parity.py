"""Parity of an exported Hugging Face model with ``transformers`` itself, through ONNX Runtime CPU.

The structure of ``export/parity.py``, with transformers as the reference instead of our
wrapper's PyTorch code, so a mistake in the wrapper cannot hide behind a shared code path:
- classifier: logits at several batch and sequence sizes, right-padded rows (random ids, and
  real tokenized text when given);
- decoder: the graph's own cache, made by a first call on ``ids[:, :past]``, then a call on the
  rest, against one transformers forward over the whole sequence (logits of the real positions,
  top-K of the last), with one left-padded row whose positions start at its first real token;
- greedy: token for token against ``model.generate`` (greedy, transformers' KV cache), with the
  graph decoding one token a step on its cache, end-of-text switched off so both run the full
  length.
A difference beyond the tolerance is a ToolkitError, so is NaN/Inf on either side of any
comparison; the figures go into the sidecar. ``where`` names the file in the messages (the
exporter passes the output it has not written yet; ``onnx_path`` is a temporary there).
"""
from __future__ import annotations

import copy
import os
from typing import Any, Callable, Dict, List, Sequence

import numpy as np
import torch

from common.errors import ToolkitError
from export.parity import (
    CLASSIFIER_TOLERANCE,
    DECODER_TOLERANCE,
    DEFAULT_BATCHES,
    _right_padded_mask,
    _summarise,
    cache_suffixes,
    decoder_feeds,
    max_abs_diff,
    ort_session,
    tokenize_batch,
    top1_verdict,
    weights_note,
    worst_of,
)

REFERENCE = "transformers"
DECODER_PARITY_SEQ = 64  # longest random sequence of the decoder cases (a real HF forward each)


def classifier_reference(model) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """ids, mask (batch, seq) int -> logits (batch, labels) fp32, from the transformers model
    (``*ForSequenceClassification``) or its mean-pooling wrapper (``HFEncoderClassifier``)."""
    def run(ids: np.ndarray, mask: np.ndarray, types: np.ndarray | None = None) -> np.ndarray:
        ids_t, mask_t = torch.from_numpy(ids).long(), torch.from_numpy(mask).long()
        extra = {} if types is None else {"token_type_ids": torch.from_numpy(types).long()}
        with torch.no_grad():
            out = model(input_ids=ids_t, attention_mask=mask_t, **extra)
        return (out.logits if hasattr(out, "logits") else out).float().numpy()
    return run


def random_ids(rng, vocab: int, shape, avoid: int | None) -> np.ndarray:
    """Random ids that never hit ``avoid`` (RoBERTa numbers positions by skipping pad ids)."""
    ids = rng.integers(0, vocab, shape, dtype=np.int32)
    if avoid is not None:
        ids[ids == avoid] = (avoid + 1) % vocab
    return ids


def check_hf_classifier_parity(model, onnx_path: str | os.PathLike, *, vocab_size: int,
                               max_seq_len: int, pad_id: int | None,
                               batches: Sequence[int] = DEFAULT_BATCHES,
                               texts: Sequence[str] | None = None, tokenizer=None,
                               tolerance: float = CLASSIFIER_TOLERANCE, seed: int = 0,
                               where: str | os.PathLike | None = None):
    reference = classifier_reference(model)
    session = ort_session(onnx_path)
    rng = np.random.default_rng(seed)
    cases = []
    for batch in batches:
        for seq in sorted({min(s, max_seq_len) for s in (1, 17, max_seq_len)}):
            ids = random_ids(rng, vocab_size, (batch, seq), pad_id)  # (batch, seq) int32
            cases.append(_classifier_case(reference, session, ids, _right_padded_mask(batch, seq),
                                          "random"))
    if texts:
        ids, mask = tokenize_batch(tokenizer, texts, max_seq_len, pad_id=pad_id or 0)
        cases.append(_classifier_case(reference, session, ids, mask, "text"))
    summary = _summarise(cases, tolerance, where or onnx_path, "classifier logits", REFERENCE,
                         model)
    return {"reference": REFERENCE, **summary}


def _classifier_case(reference, session, ids, mask, source) -> Dict[str, Any]:
    feeds = {"input_ids": ids, "attention_mask": mask}
    types = None
    if "token_type_ids" in {i.name for i in session.get_inputs()}:  # a sentence-pair model
        types = np.zeros_like(ids)  # (batch, seq) int32: the second half is the second text
        types[:, ids.shape[1] // 2:] = 1
        feeds["token_type_ids"] = types
    expected = reference(ids, mask, types)
    (got,) = session.run(["logits"], feeds)
    return {"source": source, "batch": int(ids.shape[0]), "seq": int(ids.shape[1]),
            "max_abs_diff": max_abs_diff(got, expected)}


def check_hf_decoder_parity(model, onnx_path: str | os.PathLike, *, vocab_size: int,
                            max_seq_len: int, batches: Sequence[int] = DEFAULT_BATCHES,
                            prompt_ids: Sequence[int] | None = None, greedy_tokens: int = 200,
                            tolerance: float = DECODER_TOLERANCE, seed: int = 0,
                            where: str | os.PathLike | None = None):
    session = ort_session(onnx_path)
    rng = np.random.default_rng(seed)
    longest = min(max_seq_len, DECODER_PARITY_SEQ)
    cases = []
    for batch in batches:
        for seq in sorted({1, min(17, longest), longest}):
            ids = rng.integers(0, vocab_size, (batch, seq), dtype=np.int32)  # (batch, seq)
            cases += _decoder_cases(model, session, ids)
    summary = _summarise(cases, tolerance, where or onnx_path, "decoder logits", REFERENCE,
                         model)
    if prompt_ids is None:
        prompt_ids = rng.integers(0, vocab_size, 8).tolist()
    summary["greedy"] = check_hf_greedy(model, session, prompt_ids, greedy_tokens, max_seq_len,
                                        tolerance, where or onnx_path)
    return {"reference": REFERENCE, **summary}


def left_padded(batch: int, seq: int):
    """mask (batch, seq) with row 0 left-padded by a third; positions (batch, seq) that start
    at 0 on each row's first real token (what the runtime feeds). Both int32."""
    mask = np.ones((batch, seq), dtype=np.int32)
    if seq > 2:
        mask[0, :seq // 3] = 0
    positions = np.clip(np.cumsum(mask, axis=1) - 1, 0, None).astype(np.int32)
    return mask, positions


def _decoder_cases(model, session, ids: np.ndarray) -> List[Dict[str, Any]]:
    batch, seq = ids.shape
    mask, positions = left_padded(batch, seq)
    with torch.no_grad():
        expected = model(input_ids=torch.from_numpy(ids).long(),
                         attention_mask=torch.from_numpy(mask).long(),
                         position_ids=torch.from_numpy(positions).long()).logits.float().numpy()
    names = [o.name for o in session.get_outputs()]
    suffixes = cache_suffixes(sum(i.name.startswith("past_key_") for i in session.get_inputs()))
    kv_dim = session.get_inputs()[3].shape[2]
    cases = []
    for past in sorted({0, seq // 2, seq - 1}):
        cache = [np.zeros((0, batch, kv_dim), np.float32) for _ in suffixes]
        if past:  # the graph's own cache for the first part
            first = decoder_feeds(ids[:, :past], 0, mask[:, :past], cache)
            first["position_ids"] = positions[:, :past]
            got = dict(zip(names, session.run(names, first)))
            cache = [got[f"new_{name}"] for name in suffixes]  # each (past, batch, kv_dim)
        feeds = decoder_feeds(ids[:, past:], past, mask, cache)
        feeds["position_ids"] = np.ascontiguousarray(positions[:, past:])
        got = dict(zip(names, session.run(names, feeds)))
        real = mask[:, past:].astype(bool)  # padding positions have no meaningful logits
        diffs = [max_abs_diff(got["logits"][real], expected[:, past:][real])]
        k = got["topk_values"].shape[1]
        top_values = -np.sort(-expected[:, -1], axis=-1)[:, :k]  # (batch, K) descending
        diffs.append(max_abs_diff(got["topk_values"], top_values))
        for name, past_part in zip(suffixes, cache):  # each window is past + this call's new
            if f"present_{name}" in got:
                window = np.concatenate([past_part, got[f"new_{name}"]])
                diffs.append(max_abs_diff(got[f"present_{name}"], window))
        top1_match = np.array_equal(got["topk_indices"][:, 0], expected[:, -1].argmax(-1))
        cases.append({"source": "random", "batch": int(batch), "past": int(past),
                      "new": int(seq - past), "top1_match": bool(top1_match),
                      "max_abs_diff": top1_verdict(worst_of(diffs), top1_match)})
    return cases


def hf_greedy(model, prompt: Sequence[int], n_tokens: int):
    """transformers' greedy ``generate`` with its KV cache and no end-of-text stop:
    -> (tokens, logits (n_tokens, vocab) fp32)."""
    from transformers import GenerationConfig

    # One config object holds every setting (the folder's generation_config.json may sample,
    # penalise repeats or stop early: none of that is greedy parity).
    config = GenerationConfig(do_sample=False, max_new_tokens=n_tokens, min_new_tokens=0,
                              eos_token_id=None, pad_token_id=0, use_cache=True, num_beams=1,
                              repetition_penalty=1.0, return_dict_in_generate=True,
                              output_logits=True)
    # generate fills settings left None from model.generation_config (eos from config.json):
    # switch the model's end-of-text off for this call.
    saved = model.generation_config
    model.generation_config = copy.deepcopy(saved)
    model.generation_config.eos_token_id = None
    try:
        with torch.no_grad():
            out = model.generate(torch.tensor([list(prompt)]), generation_config=config,
                                 attention_mask=torch.ones((1, len(prompt)), dtype=torch.long))
    finally:
        model.generation_config = saved
    tokens = out.sequences[0, len(prompt):].tolist()
    if len(tokens) != n_tokens:
        raise ToolkitError(f"transformers generate returned {len(tokens)} tokens, asked for "
                           f"{n_tokens}")
    return tokens, torch.stack(out.logits)[:, 0].float().numpy()


def check_hf_greedy(model, session, prompt_ids, n_tokens: int, max_seq_len: int,
                    tolerance: float, onnx_path) -> Dict[str, Any]:
    """Greedy tokens through the graph's cache interface equal transformers' generate."""
    prompt = [int(t) for t in prompt_ids][: max_seq_len - 1]
    if not prompt:
        raise ToolkitError("greedy parity needs a prompt of at least one token")
    n_tokens = max(1, min(n_tokens, max_seq_len - len(prompt)))
    want_tokens, want_logits = hf_greedy(model, prompt, n_tokens)
    names = [o.name for o in session.get_outputs()]
    kv_dim = session.get_inputs()[3].shape[2]
    suffixes = cache_suffixes(sum(i.name.startswith("past_key_") for i in session.get_inputs()))
    cache = [np.zeros((0, 1, kv_dim), np.float32) for _ in suffixes]  # (0, 1, kv_dim)
    ids, new_ids, worst = list(prompt), np.array([prompt], dtype=np.int32), 0.0
    for step in range(n_tokens):
        past = len(ids) - new_ids.shape[1]
        feeds = decoder_feeds(new_ids, past, np.ones((1, len(ids)), np.int32), cache)
        got = dict(zip(names, session.run(names, feeds)))
        cache = [np.concatenate([c, got[f"new_{name}"]]) for c, name in zip(cache, suffixes)]
        diff = max_abs_diff(got["logits"][0, -1], want_logits[step])
        if np.isnan(diff):  # argmax of NaN logits is "equal" on both sides
            raise ToolkitError(f"{onnx_path}: greedy step {step}: logits hold NaN/Inf through "
                               f"ONNX Runtime or transformers' generate{weights_note(model)}")
        worst = max(worst, diff)
        token = int(got["topk_indices"][0, 0])
        if token != want_tokens[step]:
            top2 = np.sort(want_logits[step])[-2:]
            raise ToolkitError(
                f"{onnx_path}: greedy token {step} is {token} through ONNX Runtime but "
                f"{want_tokens[step]} in transformers' generate (top-2 margin "
                f"{top2[1] - top2[0]:.2e})")
        ids.append(token)
        new_ids = np.array([[token]], dtype=np.int32)
    if worst > tolerance:
        raise ToolkitError(f"{onnx_path}: greedy logits differ from transformers' by "
                           f"{worst:.2e} (tolerance {tolerance:.0e})")
    return {"reference": "transformers generate (greedy, KV cache)", "prompt": prompt,
            "prompt_tokens": len(prompt), "tokens": n_tokens, "match": True,
            "max_abs_diff": worst, "generated": want_tokens}
