"""imdb_tokenizer (python backend): review text -> ``input_ids``, ``attention_mask`` for the
classifier, with exactly the runtime's cleaning and truncation (``common.text`` through
``runtime.tokenization``, as ``runtime.classify.Classifier.encode``), by the model's sidecar
``text`` rules: IMDB cleaning for our models, the tokenizer's own behaviour for a Hugging Face
classifier.

Rows are padded on the right to a length bucket, not to their own length: Triton's dynamic
batcher only puts requests of equal shape into one classifier batch, so with free lengths
two reviews would almost never batch. Buckets are powers of two from 16 up to the model's
length (16, 32, 64, 128, 256, 512 for a 512-token model): padding costs at most 2x the
positions of the longest row (a quarter on average), while a handful of shapes lets
concurrent requests of similar length meet in one batch. Below 16 tokens the classifier's
run time hardly changes, so shorter buckets would only split batches. A static-length engine
(a DLA build) has one bucket, its length. The classifier's output does not depend on the
padding: the mask hides it (checked in tests/serving/test_repo_models.py).

Config parameters (written by triton_repo.build): ``tokenizer`` (file in the version folder),
``max_len``, ``pad_id``, ``cls_id`` ("" unless the model pools on <cls>), ``length_buckets``,
and optionally ``text``: the JSON of ``common.artifacts.text_rules(sidecar)`` (absent: our IMDB
models' rules).
"""
from __future__ import annotations

import json
import os
import sys
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import numpy as np

_TOOLKIT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_toolkit")
if os.path.isdir(_TOOLKIT) and _TOOLKIT not in sys.path:  # inside a built repository
    sys.path.insert(0, _TOOLKIT)

from common.errors import ToolkitError  # noqa: E402
from runtime.tokenization import clean_text, encode_for_model  # noqa: E402
from triton_repo.models.requests import (  # noqa: E402
    check_input_names,
    check_parameters,
    model_parameters,
    request_inputs,
    required_parameter,
    triton_error,
    utf8_strings,
)

INPUT = "TEXT"
OUTPUTS = ("input_ids", "attention_mask")
SMALLEST_BUCKET = 16


def length_buckets(min_seq: int, max_len: int) -> List[int]:
    """Padded lengths: powers of two from 16 (at least ``min_seq``) up to ``max_len``, which is
    always the last bucket. ``length_buckets(1, 512) -> [16, 32, 64, 128, 256, 512]``."""
    if not 1 <= max_len:
        raise ToolkitError(f"max_len={max_len}: expected >= 1")
    if min_seq > max_len:
        raise ToolkitError(f"the classifier's shortest length {min_seq} exceeds its longest "
                           f"{max_len}")
    buckets, size = [], SMALLEST_BUCKET
    while size < max_len:
        if size >= min_seq:
            buckets.append(size)
        size *= 2
    return buckets + [max_len]


class TextEncoder:
    """Texts -> right-padded (rows, bucket) int32 ``input_ids`` and ``attention_mask``.

    tokenizer: a ``tokenizers.Tokenizer``; max_len: the classifier's row length (the model's
    max_seq_len, cut to the engine profile's); cls_id: prepended for a <cls>-pooling model;
    rules: the sidecar's text rules (``common.artifacts.text_rules``; None: our IMDB models').
    """

    def __init__(self, tokenizer, max_len: int, pad_id: int, cls_id: int | None,
                 buckets: Sequence[int], max_batch: int | None = None,
                 rules: Mapping[str, str] | None = None):
        from common.artifacts import TEXT_CHOICES, text_rules

        self.rules = text_rules({"text": dict(rules)} if rules else {})
        if set(self.rules) != set(TEXT_CHOICES) or any(
                self.rules[k] not in choices for k, choices in TEXT_CHOICES.items()):
            raise ToolkitError(f"text rules {dict(rules or {})}: expected "
                               + ", ".join(f"{k} in {list(v)}" for k, v in TEXT_CHOICES.items()))
        if not buckets or list(buckets) != sorted(buckets) or buckets[-1] != max_len:
            raise ToolkitError(f"length_buckets {list(buckets)}: expected ascending lengths "
                               f"ending at max_len={max_len}")
        self.tokenizer = tokenizer
        self.max_len = int(max_len)
        self.pad_id = int(pad_id)
        self.cls_id = None if cls_id is None else int(cls_id)
        self.buckets = [int(b) for b in buckets]
        self.max_batch = max_batch  # rows per request (the config's max_batch_size)

    @classmethod
    def from_parameters(cls, params: Mapping[str, str], folder: str,
                        max_batch: int | None = None) -> TextEncoder:
        """Built from the model config's parameters; files are relative to ``folder``."""
        from tokenizers import Tokenizer

        path = os.path.join(folder, required_parameter(params, "tokenizer", "imdb_tokenizer"))
        if not os.path.isfile(path):
            raise ToolkitError(f"tokenizer {path} not found: rebuild the repository")
        cls_text = params.get("cls_id", "")
        buckets = [int(b) for b in required_parameter(params, "length_buckets",
                                                      "imdb_tokenizer").split(",")]
        rules = None
        if params.get("text"):
            try:
                rules = json.loads(params["text"])
            except json.JSONDecodeError:
                raise ToolkitError(f"config parameter text {params['text']!r} is not JSON") \
                    from None
        return cls(Tokenizer.from_file(path),
                   int(required_parameter(params, "max_len", "imdb_tokenizer")),
                   int(required_parameter(params, "pad_id", "imdb_tokenizer")),
                   int(cls_text) if cls_text else None, buckets, max_batch, rules)

    def encode(self, texts: Sequence[str]) -> List[List[int]]:
        """Token id rows, as ``Classifier.encode``; a text empty once cleaned is refused."""
        for index, text in enumerate(texts):
            if not clean_text(text, self.rules["cleaning"]).strip():
                raise ToolkitError(f"TEXT row {index} ({text[:30]!r}) is empty once cleaned: "
                                   "nothing to classify")
        return encode_for_model(self.tokenizer, texts, self.max_len, self.rules, self.cls_id)[0]

    def bucket(self, length: int) -> int:
        for size in self.buckets:
            if length <= size:
                return size
        raise ToolkitError(f"a row of {length} tokens exceeds max_len {self.max_len}")

    def pad(self, rows: Sequence[Sequence[int]]) -> Tuple[np.ndarray, np.ndarray]:
        """Rows -> (input_ids, attention_mask), each (len(rows), bucket) int32."""
        seq = self.bucket(max(len(r) for r in rows))
        input_ids = np.full((len(rows), seq), self.pad_id, np.int32)  # (rows, bucket) int32
        attention_mask = np.zeros((len(rows), seq), np.int32)  # (rows, bucket) 1 = token
        for r, ids in enumerate(rows):
            input_ids[r, :len(ids)] = ids
            attention_mask[r, :len(ids)] = 1
        return input_ids, attention_mask

    def encode_request(self, inputs: Mapping[str, np.ndarray],
                       parameters: Any = None) -> Dict[str, np.ndarray]:
        """One request's inputs -> its outputs; every refusal is a ToolkitError."""
        check_parameters(parameters)
        check_input_names(inputs, [INPUT])
        texts = utf8_strings(INPUT, inputs[INPUT])
        if not texts:
            raise ToolkitError(f"input {INPUT!r} holds no rows")
        if self.max_batch is not None and len(texts) > self.max_batch:
            raise ToolkitError(f"{len(texts)} texts in one request: the classifier's profile "
                               f"takes at most {self.max_batch}")
        input_ids, attention_mask = self.pad(self.encode(texts))
        return {"input_ids": input_ids, "attention_mask": attention_mask}


class TritonPythonModel:
    """Adapter: Triton requests in, TextEncoder, responses (or an error each) out."""

    def initialize(self, args: Dict[str, str]) -> None:
        import triton_python_backend_utils as pb_utils

        self.pb_utils = pb_utils
        config = json.loads(args["model_config"])
        self.encoder = TextEncoder.from_parameters(model_parameters(config),
                                                   os.path.dirname(__file__),
                                                   int(config.get("max_batch_size") or 0) or None)

    def execute(self, requests):
        pb = self.pb_utils
        responses = []
        for request in requests:
            try:
                outputs = self.encoder.encode_request(request_inputs(request),
                                                      request.parameters())
                tensors = [pb.Tensor(name, outputs[name]) for name in OUTPUTS]
                responses.append(pb.InferenceResponse(output_tensors=tensors))
            except Exception as exc:  # every failure becomes this request's error response
                responses.append(pb.InferenceResponse(error=triton_error(pb, exc)))
        return responses

