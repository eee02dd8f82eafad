"""Numerical parity of an exported ONNX graph with its PyTorch model, through ONNX Runtime CPU.

Run by ``export/onnx_model.py`` on the simplified graph before anything is written, and usable
on its own from a script for the real checkpoints. Classifier: logits at several batch and
sequence sizes (random ids, and real tokenized text when given). Decoder: logits and new
keys/values for prefill, decode and chunked calls with a past, then greedy decoding through the
graph's KV-cache interface, token for token against PyTorch recomputing the whole sequence (so
a cache bug cannot hide behind a shared code path). Each function returns the figures; a
difference beyond the stated tolerance is a ToolkitError, and so is NaN or Inf on either side of
any comparison (``nan > tolerance`` is False and max()/argmax pass NaN through, so a model with
NaN weights would otherwise "match" its graph). ``where`` names the file in the messages: the
exporters check a temporary graph and pass the output path they have not written yet.
"""
from __future__ import annotations

import math
import os
from typing import Any, Dict, List, Sequence

import numpy as np
import torch

from common.errors import ToolkitError

CLASSIFIER_TOLERANCE = 1e-4  # max |logit difference|
# Absolute, on decoder logits of magnitude ~10-20: over 512 positions and 4 layers the fused
# (PyTorch) and the exported attention differ by ~1e-3 in fp32 (measured: 1.16e-3).
DECODER_TOLERANCE = 5e-3
DEFAULT_BATCHES = (1, 3, 8)
DEFAULT_GREEDY_TOKENS = 200


def ort_session(onnx_path: str | os.PathLike):
    import onnxruntime as ort

    return ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])


def default_seqs(max_seq_len: int) -> List[int]:
    return sorted({min(s, max_seq_len) for s in (1, 17, max_seq_len)})


def check_classifier_parity(
    model: torch.nn.Module,
    onnx_path: str | os.PathLike,
    *,
    batches: Sequence[int] = DEFAULT_BATCHES,
    seqs: Sequence[int] | None = None,
    texts: Sequence[str] | None = None,
    tokenizer=None,
    tolerance: float = CLASSIFIER_TOLERANCE,
    seed: int = 0,
    where: str | os.PathLike | None = None,
) -> Dict[str, Any]:
    """Max |logit difference| per (batch, seq) case; raises ToolkitError above ``tolerance``."""
    cfg = model.cfg
    session = ort_session(onnx_path)
    rng = np.random.default_rng(seed)
    cases = []
    for batch in batches:
        for seq in seqs or default_seqs(cfg.max_seq_len):
            ids = rng.integers(0, cfg.vocab_size, (batch, seq), dtype=np.int32)  # (batch, seq)
            mask = _right_padded_mask(batch, seq)  # (batch, seq) int32, row 0 partly padded
            cases.append(_classifier_case(model, session, ids, mask, "random"))
    if texts:
        ids, mask = tokenize_batch(tokenizer, texts, cfg.max_seq_len, pad_id=cfg.pad_id)
        cases.append(_classifier_case(model, session, ids, mask, "text"))
    return _summarise(cases, tolerance, where or onnx_path, "classifier logits", model=model)


def check_feature_parity(
    model: torch.nn.Module,
    onnx_path: str | os.PathLike,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    batches: Sequence[int] = DEFAULT_BATCHES,
    seqs: Sequence[int] | None = None,
    tolerance: float = CLASSIFIER_TOLERANCE,
    seed: int = 0,
    where: str | os.PathLike | None = None,
) -> Dict[str, Any]:
    """A feature classifier: the graph on raw features against PyTorch on the features
    normalized with (mean, std) as training did, random raw features drawn around the
    training statistics per (batch, seq) case. where: the name in errors (the exporter passes
    "<output> (not written)"; ``onnx_path`` is a temporary there)."""
    cfg = model.cfg
    session = ort_session(onnx_path)
    rng = np.random.default_rng(seed)
    mean_a = np.asarray(mean, np.float32)  # (F,)
    std_a = np.asarray(std, np.float32)  # (F,)
    cases = []
    for batch in batches:
        for seq in seqs or default_seqs(cfg.max_seq_len):
            raw = (rng.standard_normal((batch, seq, cfg.feature_dim)) * std_a + mean_a
                   ).astype(np.float32)  # (batch, seq, F)
            cases.append(_feature_case(model, session, raw, _right_padded_mask(batch, seq),
                                       mean_a, std_a, "random"))
    return _summarise(cases, tolerance, where or onnx_path, "feature classifier logits",
                      model=model)


def _feature_case(model, session, raw, mask, mean, std, source) -> Dict[str, Any]:
    normed = torch.from_numpy((raw - mean) / std)  # (batch, seq, F) as training normalizes
    expected = _torch_numpy(model, normed, torch.from_numpy(mask))
    (got,) = session.run(["logits"], {"features": raw, "attention_mask": mask})
    return {"source": source, "batch": int(raw.shape[0]), "seq": int(raw.shape[1]),
            "max_abs_diff": max_abs_diff(got, expected)}


def _classifier_case(model, session, ids, mask, source) -> Dict[str, Any]:
    expected = _torch_numpy(model, torch.from_numpy(ids).long(), torch.from_numpy(mask))
    (got,) = session.run(["logits"], {"input_ids": ids, "attention_mask": mask})
    return {"source": source, "batch": int(ids.shape[0]), "seq": int(ids.shape[1]),
            "max_abs_diff": max_abs_diff(got, expected)}


def _right_padded_mask(batch: int, seq: int) -> np.ndarray:
    mask = np.ones((batch, seq), dtype=np.int32)  # (batch, seq)
    if seq > 2:
        mask[0, seq - seq // 3:] = 0  # right padding on one row exercises the mask path
    return mask


def tokenize_batch(tokenizer, texts: Sequence[str], max_len: int, pad_id: int = 0):
    """Right-padded (ids, mask), both (batch, longest) int32, truncated to ``max_len``."""
    if tokenizer is None:
        raise ToolkitError("parity texts were given without a tokenizer to encode them")
    rows = [enc.ids[:max_len] for enc in tokenizer.encode_batch(list(texts))]
    longest = max(1, max(len(r) for r in rows))
    ids = np.full((len(rows), longest), pad_id, dtype=np.int32)  # (batch, longest)
    mask = np.zeros((len(rows), longest), dtype=np.int32)  # (batch, longest)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = row
        mask[i, :len(row)] = 1
    return ids, mask


def check_decoder_parity(
    model: torch.nn.Module,
    onnx_path: str | os.PathLike,
    *,
    batches: Sequence[int] = DEFAULT_BATCHES,
    seqs: Sequence[int] | None = None,
    prompt_ids: Sequence[int] | None = None,
    greedy_tokens: int = DEFAULT_GREEDY_TOKENS,
    tolerance: float = DECODER_TOLERANCE,
    seed: int = 0,
    where: str | os.PathLike | None = None,
) -> Dict[str, Any]:
    """Logit/KV parity per (batch, past, new) case, then cached greedy decoding vs PyTorch."""
    cfg = model.cfg
    session = ort_session(onnx_path)
    rng = np.random.default_rng(seed)
    cases = []
    for batch in batches:
        for seq in seqs or default_seqs(cfg.max_seq_len):
            ids = rng.integers(0, cfg.vocab_size, (batch, seq), dtype=np.int32)  # (batch, seq)
            cases += _decoder_cases(model, session, ids)
    summary = _summarise(cases, tolerance, where or onnx_path, "decoder logits/keys/values",
                         model=model)
    if prompt_ids is None:
        prompt_ids = rng.integers(0, cfg.vocab_size, 8).tolist()
    summary["greedy"] = check_greedy_decoding(model, session, prompt_ids, greedy_tokens,
                                              tolerance, where or onnx_path)
    return summary


def _decoder_cases(model, session, ids: np.ndarray) -> List[Dict[str, Any]]:
    """For several splits, feed ids[:, :past] as cache (from PyTorch) and ids[:, past:] as new
    tokens; compare with one PyTorch pass over the whole of ids."""
    batch, seq = ids.shape
    mask = np.ones((batch, seq), dtype=np.int32)  # (batch, total)
    if seq > 2:
        mask[0, :seq // 3] = 0  # left padding on one row, as batched generation has
    with torch.no_grad():
        logits, keys, values = model(torch.from_numpy(ids).long(), None, torch.from_numpy(mask))
    logits = logits.numpy()  # (batch, seq, vocab)
    cache = [t.numpy() for pair in zip(keys, values) for t in pair]  # each (seq, batch, kv_dim)
    names = [o.name for o in session.get_outputs()]
    cases = []
    for past in sorted({0, seq // 2, seq - 1}):
        feeds = decoder_feeds(ids[:, past:], past, mask, [c[:past] for c in cache])
        got = dict(zip(names, session.run(names, feeds)))
        diffs = [max_abs_diff(got["logits"], logits[:, past:])]
        for name, c in zip(cache_suffixes(len(cache) // 2), cache):  # new = c[past:], window = c
            diffs.append(max_abs_diff(got[f"new_{name}"], c[past:]))
            if f"present_{name}" in got:
                diffs.append(max_abs_diff(got[f"present_{name}"], c))
        k = got["topk_values"].shape[1]
        top_values = -np.sort(-logits[:, -1], axis=-1)[:, :k]  # (batch, K) descending
        diffs.append(max_abs_diff(got["topk_values"], top_values))
        top1_match = np.array_equal(got["topk_indices"][:, 0], logits[:, -1].argmax(-1))
        cases.append({"source": "random", "batch": int(batch), "past": int(past),
                      "new": int(seq - past), "top1_match": bool(top1_match),
                      "max_abs_diff": top1_verdict(worst_of(diffs), top1_match)})
    return cases


def cache_suffixes(layers: int) -> List[str]:
    """["key_0", "value_0", "key_1", ...]: the suffixes of past_*, new_* and present_*."""
    return [f"{kind}_{layer}" for layer in range(layers) for kind in ("key", "value")]


def decoder_feeds(new_ids: np.ndarray, past: int, mask: np.ndarray, past_cache) -> Dict[str, Any]:
    """Inputs of one decoder call: new_ids (batch, new), mask (batch, past+new), past_cache
    [key_0, value_0, key_1, ...] each (past, batch, kv_dim) fp32."""
    batch, new = new_ids.shape
    positions = np.tile(np.arange(past, past + new, dtype=np.int32), (batch, 1))  # (batch, new)
    feeds = {"input_ids": np.ascontiguousarray(new_ids, dtype=np.int32),
             "position_ids": positions, "attention_mask": mask.astype(np.int32)}
    for layer in range(len(past_cache) // 2):
        feeds[f"past_key_{layer}"] = np.ascontiguousarray(past_cache[2 * layer], dtype=np.float32)
        feeds[f"past_value_{layer}"] = np.ascontiguousarray(past_cache[2 * layer + 1],
                                                            dtype=np.float32)
    return feeds


def check_greedy_decoding(model, session, prompt_ids, n_tokens, tolerance, onnx_path):
    """Greedy tokens through the ONNX cache interface equal PyTorch's, token for token."""
    cfg = model.cfg
    prompt = [int(t) for t in prompt_ids][: cfg.max_seq_len - 1]
    if not prompt:
        raise ToolkitError("greedy parity needs a prompt of at least one token")
    n_tokens = max(0, min(n_tokens, cfg.max_seq_len - len(prompt)))
    kv_dim = cfg.kv_dim
    cache = [np.zeros((0, 1, kv_dim), np.float32) for _ in range(2 * cfg.n_layers)]
    ids = list(prompt)
    new_ids = np.array([prompt], dtype=np.int32)  # (1, new): the prompt, then one token a step
    out_names = [o.name for o in session.get_outputs()]
    worst = 0.0
    for step in range(n_tokens):
        past = len(ids) - new_ids.shape[1]
        mask = np.ones((1, len(ids)), dtype=np.int32)  # (1, total)
        feeds = decoder_feeds(new_ids, past, mask, cache)
        got = dict(zip(out_names, session.run(out_names, feeds)))
        cache = [np.concatenate([c, got[f"new_{name}"]])
                 for c, name in zip(cache, cache_suffixes(cfg.n_layers))]
        with torch.no_grad():  # reference: the whole sequence again, no cache
            expected = model(torch.tensor([ids]))[0][0, -1].numpy()  # (vocab,)
        diff = max_abs_diff(got["logits"][0, -1], expected)
        if math.isnan(diff):  # argmax of NaN logits is "equal" on both sides
            raise ToolkitError(f"{onnx_path}: greedy step {step}: logits hold NaN/Inf through "
                               f"ONNX Runtime or PyTorch{weights_note(model)}")
        worst = max(worst, diff)
        token, want = int(got["topk_indices"][0, 0]), int(np.argmax(expected))
        if token != want:
            top2 = np.sort(expected)[-2:]
            raise ToolkitError(
                f"{onnx_path}: greedy token {step} is {token} through ONNX Runtime but {want} in "
                f"PyTorch (PyTorch top-2 margin {top2[1] - top2[0]:.2e})")
        ids.append(token)
        new_ids = np.array([[token]], dtype=np.int32)
    if worst > tolerance:
        raise ToolkitError(f"{onnx_path}: greedy decoding logits differ by {worst:.2e} "
                           f"(tolerance {tolerance:.0e})")
    return {"prompt_tokens": len(prompt), "tokens": n_tokens, "match": True,
            "max_abs_diff": worst, "generated": ids[len(prompt):]}


def max_abs_diff(got, expected) -> float:
    """max |got - expected| over every element; NaN when either side holds NaN or Inf (two
    equal Infs included): the verdict of a comparison with a non-finite value is "failed"."""
    got, expected = np.asarray(got), np.asarray(expected)
    if not (np.isfinite(got).all() and np.isfinite(expected).all()):
        return float("nan")
    return float(np.max(np.abs(got - expected))) if got.size else 0.0


def worst_of(diffs: Sequence[float]) -> float:
    """The largest difference, NaN if any is NaN (Python's max() keeps or drops a NaN
    depending on where it sits)."""
    diffs = [float(d) for d in diffs]
    return float("nan") if any(math.isnan(d) for d in diffs) else max(diffs, default=0.0)


def top1_verdict(diff: float, top1_match: bool) -> float:
    """A different top-1 token fails whatever the logits say (inf); NaN stays NaN."""
    return diff if top1_match or math.isnan(diff) else float("inf")


def weights_note(model) -> str:
    """' (the model's weights hold N NaN/Inf values, first in NAME)', or '' when they are
    finite: the likely cause of non-finite outputs, named in the error."""
    for name, param in (model.named_parameters() if model is not None else ()):
        bad = int((~torch.isfinite(param.detach())).sum())
        if bad:
            return f" (the model's weights hold {bad} NaN/Inf values, first in {name})"
    return ""


def _summarise(cases, tolerance, onnx_path, what, reference: str = "PyTorch",
               model=None) -> Dict[str, Any]:
    """The figures of ``cases``; a ToolkitError naming the worst case beyond ``tolerance``, or
    the first case with NaN/Inf on either side."""
    nonfinite = [c for c in cases if math.isnan(c["max_abs_diff"])]
    worst = nonfinite[0] if nonfinite else max(cases, key=lambda c: c["max_abs_diff"])
    where = ", ".join(f"{k}={v}" for k, v in worst.items() if k != "max_abs_diff")
    if nonfinite:
        raise ToolkitError(f"{onnx_path}: {what} hold NaN/Inf through ONNX Runtime or "
                           f"{reference} at {where} ({len(nonfinite)} of {len(cases)} cases)"
                           f"{weights_note(model)}")
    if worst["max_abs_diff"] > tolerance:
        raise ToolkitError(f"{onnx_path}: {what} differ from {reference} by "
                           f"{worst['max_abs_diff']:.2e} at {where} (tolerance {tolerance:.0e})")
    return {"tolerance": tolerance, "max_abs_diff": worst["max_abs_diff"], "cases": cases}


def _torch_numpy(model, *args) -> np.ndarray:
    with torch.no_grad():
        return model(*args).numpy()
